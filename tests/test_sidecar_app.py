"""App assembly: settings -> policy (file or last good on disk) -> sink; health and readiness.

These run against a dead upstream port (no engine needed): they check what the sidecar decides
by itself. Its behaviour in front of the real engine is in test_sidecar_proxy.py.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from gpuledger.cli import build_parser
from gpuledger.contracts import UsageRecord
from sidecar.settings import Settings
from tests.conftest import free_port
from tests.sidecar_support import DEV_POLICY, DEV_SECRET, run_sidecar

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
