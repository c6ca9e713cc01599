"""Lossless usage shipping, end to end: real control plane, real sidecar, real vLLM engine.

* Outage: the control plane is down while 500 requests are served through the sidecar; when it
  is back, exactly 500 records land in its database.
* SIGKILL: a sidecar process killed after serving requests ships all of them after a restart,
  even when it is killed the instant a client has read its whole response (the record is durable
  before the response's final bytes are sent).
* Secrets: the key's secret appears in neither the spool files nor the control-plane database.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import openai
import pytest

from sidecar.settings import Settings as SidecarSettings
from tests.conftest import free_port, wait_until
from tests.control_plane_support import (
    SIDECAR_TOKEN,
    admin_client,
    cp_settings,
    run_control_plane,
)
from tests.sidecar_support import REPO, run_sidecar

pytestmark = pytest.mark.engine


def seed(base_url: str, engine_url: str) -> tuple[str, str]:
    """One feature (no budget), one key, the real engine. Returns (key id, secret)."""
    with admin_client(base_url) as admin:
        admin.post("/api/v1/features", json={"name": "ship", "owner": "t"}).raise_for_status()
        admin.put(
            "/api/v1/engines/local",
            json={"url": engine_url, "model": "tiny", "gpu_type": "cpu", "gpus": 1},
        ).raise_for_status()
        resp = admin.post("/api/v1/keys", json={"name": "ship-key", "features": ["ship"]})
        resp.raise_for_status()
        return resp.json()["id"], resp.json()["secret"]


def landed(db_path: Path, sidecar_id: str) -> tuple[int, int]:
    """(records, distinct ids) the control plane stored for one sidecar."""
    with sqlite3.connect(db_path) as conn:
        row = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT id) FROM usage_records WHERE sidecar_id = ?",
            (sidecar_id,),
        ).fetchone()
    return int(row[0]), int(row[1])


def metric(base_url: str, name: str) -> float:
    for line in httpx.get(f"{base_url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def serve_requests(base_url: str, secret: str, n: int) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=secret, max_retries=0, timeout=120)

    def one(i: int) -> None:
        resp = client.completions.create(model="tiny", prompt=f"req {i}", max_tokens=1)
        assert resp.usage is not None and resp.usage.completion_tokens >= 1

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(n)))


def files_contain(paths: list[Path], needle: bytes) -> list[Path]:
    return [p for p in paths if p.is_file() and needle in p.read_bytes()]


def test_outage_then_recovery_lands_exactly_500(tmp_path: Path, engine_url: str) -> None:
    db_path = tmp_path / "cp.db"
    db_url = f"sqlite+aiosqlite:///{db_path}"
    cp_port = free_port()
    state_dir = tmp_path / "sidecar"
    cp = ExitStack()
    cp_url = cp.enter_context(run_control_plane(cp_settings(db_url), port=cp_port))
    key_id, secret = seed(cp_url, engine_url)
    settings = SidecarSettings(
        sidecar_id="sidecar-outage",
        control_plane_url=cp_url,
        control_plane_token=SIDECAR_TOKEN,
        state_dir=state_dir,
        upstream_url=engine_url,
        tracing_enabled=False,
        engine_watch_enabled=False,
        ship_backoff_cap_s=1.0,
    )
    with run_sidecar(settings) as sidecar_url:
        wait_until(lambda: (state_dir / "policy.json").exists(), 30, "policy sync")
        cp.close()  # control plane down; the sidecar serves on its last good policy
        serve_requests(sidecar_url, secret, 500)
        wait_until(
            lambda: metric(sidecar_url, "gpuledger_spool_backlog_records") == 500, 30, "spool"
        )
        assert metric(sidecar_url, "gpuledger_usage_shipped_total") == 0
        assert metric(sidecar_url, "gpuledger_usage_ship_failures_total") >= 1
        spool_files = sorted(state_dir.iterdir())
        assert files_contain(spool_files, key_id.encode()), "the spool holds the records"
        assert not files_contain(spool_files, secret.encode()), "secret in the sidecar state"

        with run_control_plane(cp_settings(db_url), port=cp_port):
            wait_until(
                lambda: metric(sidecar_url, "gpuledger_spool_backlog_records") == 0, 60, "drain"
            )
            assert landed(db_path, "sidecar-outage") == (500, 500)
            assert metric(sidecar_url, "gpuledger_usage_shipped_total") == 500
    cp_files = [p for p in tmp_path.iterdir() if p.name.startswith("cp.db")]
    assert cp_files
    assert not files_contain(cp_files, secret.encode()), "secret in the control-plane database"
    assert landed(db_path, "sidecar-outage") == (500, 500)


def start_sidecar_process(
    port: int, cp_port: int, state_dir: Path, engine_url: str
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        GPULEDGER_SIDECAR_ID="sidecar-killed",
        GPULEDGER_CONTROL_PLANE_URL=f"http://127.0.0.1:{cp_port}",
        GPULEDGER_CONTROL_PLANE_TOKEN=SIDECAR_TOKEN,
        GPULEDGER_STATE_DIR=str(state_dir),
        GPULEDGER_UPSTREAM_URL=engine_url,
        GPULEDGER_TRACING_ENABLED="false",
        GPULEDGER_ENGINE_WATCH_ENABLED="false",
        GPULEDGER_SHIP_BACKOFF_CAP_S="1",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpuledger.cli", "sidecar", "--port", str(port)],
        cwd=REPO,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, "the sidecar process exited"
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, 60, "sidecar process")
    return proc


def test_sigkill_after_responses_ships_everything_on_restart(
    tmp_path: Path, engine_url: str
) -> None:
    db_path = tmp_path / "cp.db"
    db_url = f"sqlite+aiosqlite:///{db_path}"
    cp_port, port = free_port(), free_port()
    state_dir = tmp_path / "sidecar"
    with run_control_plane(cp_settings(db_url), port=cp_port):
        _, secret = seed(f"http://127.0.0.1:{cp_port}", engine_url)
        proc = start_sidecar_process(port, cp_port, state_dir, engine_url)
        wait_until(lambda: (state_dir / "policy.json").exists(), 30, "policy sync")
    url = f"http://127.0.0.1:{port}"
    try:
        serve_requests(url, secret, 40)  # control plane down: records stay spooled
        # Each record is durable before its response's final bytes: no need to wait for it.
        assert metric(url, "gpuledger_spool_backlog_records") == 40
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    with sqlite3.connect(state_dir / "usage-spool.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM spool").fetchone()[0] == 40

    with run_control_plane(cp_settings(db_url), port=cp_port):
        proc = start_sidecar_process(port, cp_port, state_dir, engine_url)
        try:
            wait_until(lambda: landed(db_path, "sidecar-killed")[0] >= 40, 60, "shipping")
            wait_until(lambda: metric(url, "gpuledger_spool_backlog_records") == 0, 10, "ack")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert landed(db_path, "sidecar-killed") == (40, 40)


def spooled_ids(state_dir: Path) -> list[str]:
    """Record ids in a (killed) sidecar's spool file."""
    with sqlite3.connect(state_dir / "usage-spool.db") as conn:
        return [json.loads(row[0])["id"] for row in conn.execute("SELECT payload FROM spool")]


def landed_ids(db_path: Path, sidecar_id: str) -> list[str]:
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT id FROM usage_records WHERE sidecar_id = ?", (sidecar_id,))
        return [str(r[0]) for r in rows]


def complete_response(url: str, secret: str, stream: bool, i: int) -> str:
    """One chat request read to its very last byte; returns the sidecar's request id."""
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": f"kill test {i}"}],
        "max_tokens": 4,
        "stream": stream,
    }
    headers = {"Authorization": f"Bearer {secret}"}
    with (
        httpx.Client(timeout=120) as client,
        client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as resp,
    ):
        data = resp.read()  # to the end of the body (chunked terminator or content-length)
        assert resp.status_code == 200, data
        if stream:
            assert data.endswith(b"data: [DONE]\n\n")
        else:
            assert json.loads(data)["usage"]["completion_tokens"] >= 1
        return resp.headers["x-gpuledger-request-id"]


def test_sigkill_the_instant_each_response_completes_loses_nothing(
    tmp_path: Path, engine_url: str
) -> None:
    """Stricter than the test above: no waiting on metrics. The sidecar is killed with SIGKILL
    right after the client read each response's last byte (streamed and not, in turn), restarted,
    and killed again; every response a client got completely must ship, exactly once."""
    db_path = tmp_path / "cp.db"
    db_url = f"sqlite+aiosqlite:///{db_path}"
    cp_port, port = free_port(), free_port()
    state_dir = tmp_path / "sidecar"
    url = f"http://127.0.0.1:{port}"
    completed: list[str] = []
    with run_control_plane(cp_settings(db_url), port=cp_port):
        _, secret = seed(f"http://127.0.0.1:{cp_port}", engine_url)
        proc = start_sidecar_process(port, cp_port, state_dir, engine_url)
        wait_until(lambda: (state_dir / "policy.json").exists(), 30, "policy sync")
    # Control plane down: the records can only survive in the spool.
    for i in range(6):
        if i:
            proc = start_sidecar_process(port, cp_port, state_dir, engine_url)
        try:
            completed.append(complete_response(url, secret, stream=i % 2 == 0, i=i))
        finally:
            proc.send_signal(signal.SIGKILL)  # the instant the client has its whole answer
            proc.wait(timeout=30)
        assert completed[-1] in spooled_ids(state_dir), f"request {i}'s record was lost"

    with run_control_plane(cp_settings(db_url), port=cp_port):
        proc = start_sidecar_process(port, cp_port, state_dir, engine_url)
        try:
            wait_until(lambda: len(landed_ids(db_path, "sidecar-killed")) >= 6, 60, "shipping")
            wait_until(lambda: metric(url, "gpuledger_spool_backlog_records") == 0, 10, "ack")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert sorted(landed_ids(db_path, "sidecar-killed")) == sorted(completed)


def test_full_spool_refuses_new_requests_with_503(tmp_path: Path, engine_url: str) -> None:
    """Control plane unreachable and the spool at its bound: new requests get 503
    `usage_spool_full` in the OpenAI envelope; nothing already served is dropped."""
    from tests.sidecar_support import DEV_SECRET, dev_snapshot

    policy = tmp_path / "policy.json"
    policy.write_text(dev_snapshot(engine_url).model_dump_json())
    settings = SidecarSettings(
        sidecar_id="sidecar-full",
        policy_file=policy,
        control_plane_url=f"http://127.0.0.1:{free_port()}",  # nothing listens
        control_plane_token=SIDECAR_TOKEN,
        state_dir=tmp_path / "sidecar",
        upstream_url=engine_url,
        tracing_enabled=False,
        engine_watch_enabled=False,
        spool_max_records=5,
    )
    with run_sidecar(settings) as url:
        serve_requests(url, DEV_SECRET, 5)
        wait_until(lambda: metric(url, "gpuledger_spool_backlog_records") == 5, 10, "spool")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=DEV_SECRET, max_retries=0)
        with pytest.raises(openai.APIStatusError) as err:
            client.completions.create(model="tiny", prompt="one more", max_tokens=1)
        assert err.value.status_code == 503
        assert err.value.code == "usage_spool_full"
        assert err.value.response.headers["retry-after"]
        assert metric(url, "gpuledger_spool_full_refusals_total") == 1
        # The served requests are kept; the refusal (no spend) is counted, not spooled, so the
        # bound holds however many requests are refused.
        assert metric(url, "gpuledger_usage_rejections_unspooled_total") == 1
        assert metric(url, "gpuledger_spool_backlog_records") == 5
