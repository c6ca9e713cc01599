"""App assembly: settings -> policy (file or last good on disk) -> sink; health and readiness.

These run against a dead upstream port (no engine needed): they check what the sidecar decides
by itself. Its behaviour in front of the real engine is in test_sidecar_proxy.py.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gpuledger.cli import build_parser
from gpuledger.contracts import UsageRecord
from sidecar.app import create_app
from sidecar.policy import PolicyStore
from sidecar.settings import Settings
from sidecar.sinks import MemorySink
from tests.conftest import free_port
from tests.sidecar_support import DEV_POLICY, DEV_SECRET, dev_snapshot, run_sidecar

AUTH = {"authorization": f"Bearer {DEV_SECRET}"}


def _settings(tmp_path: Path, **kw: object) -> Settings:
    dead = f"http://127.0.0.1:{free_port()}"
    return Settings(upstream_url=dead, state_dir=tmp_path / "state",
                    engine_watch_enabled=False, **kw)  # type: ignore[arg-type]  # fmt: skip


def test_without_a_policy_nothing_is_served(tmp_path: Path) -> None:
    with run_sidecar(_settings(tmp_path)) as url:
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}
        ready = httpx.get(f"{url}/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["policy"] is False
        resp = httpx.post(f"{url}/v1/chat/completions", json={}, headers=AUTH)
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "policy_unavailable"


def test_policy_file_then_last_good_copy_after_restart(tmp_path: Path) -> None:
    usage = tmp_path / "usage.jsonl"
    body = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 9999}
    with run_sidecar(_settings(tmp_path, policy_file=DEV_POLICY, usage_jsonl=usage)) as url:
        resp = httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH)
        assert resp.json()["error"]["code"] == "max_tokens_exceeded"
        ready = httpx.get(f"{url}/ready").json()
        assert ready["checks"]["policy"] is True
        assert ready["policy_version"] == "dev-1"
    record = UsageRecord.model_validate_json(usage.read_text().splitlines()[0])
    assert (record.key_id, record.status) == ("key_dev", "rejected:max_tokens_exceeded")
    # Restarted without the file (e.g. the control plane is down): the kept copy still serves.
    with run_sidecar(_settings(tmp_path)) as url:
        resp = httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH)
        assert resp.json()["error"]["code"] == "max_tokens_exceeded"


def test_cli_registers_the_sidecar_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["sidecar", "--help"])
    assert exit_.value.code == 0
    assert "--policy-file" in capsys.readouterr().out


def test_chunked_body_over_the_limit_is_413_while_reading(tmp_path: Path) -> None:
    def body() -> object:
        yield b'{"model":"tiny","pad":"'
        for _ in range(40):
            yield b"x" * 1024
        yield b'"}'

    settings = _settings(tmp_path, policy_file=DEV_POLICY, max_body_bytes=16 * 1024)
    with run_sidecar(settings) as url:
        resp = httpx.post(f"{url}/v1/chat/completions", content=body(), headers=AUTH)  # type: ignore[arg-type]
        assert resp.status_code == 413
        assert resp.json()["error"]["code"] == "request_too_large"


class StalledEngine:
    """A listener that reads requests and never answers: a hung engine, which the real vLLM can't
    be made into on demand (a stand-in for that one failure only). Keeps what it received."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.received = b""
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn = self.server.accept()[0]
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.received += data

    def close(self) -> None:
        self.server.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def stalled_engine() -> Iterator[StalledEngine]:
    engine = StalledEngine()
    yield engine
    engine.close()


def test_silent_engine_times_out_with_504(tmp_path: Path, stalled_engine: StalledEngine) -> None:
    store = PolicyStore(None)
    store.replace(dev_snapshot(stalled_engine.url))
    sink = MemorySink()
    settings = _settings(tmp_path, read_timeout_s=0.5)
    with run_sidecar(app=create_app(settings, policy_store=store, sink=sink)) as url:
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        parent = f"00-{trace_id}-00f067aa0ba902b7-01"
        resp = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "x"},
                          headers={**AUTH, "traceparent": parent}, timeout=10)  # fmt: skip
        assert resp.status_code == 504
        assert resp.json()["error"]["code"] == "upstream_timeout"
        assert sink.wait_for(1)[0].status == "upstream_error"
    # The engine saw the caller's trace, with the sidecar's span as parent, and not the key.
    sent = stalled_engine.received.decode("latin-1").lower()
    assert f"traceparent: 00-{trace_id}-" in sent and parent not in sent
    assert DEV_SECRET.lower() not in sent and "authorization" not in sent
