"""The relay (sidecar/relay.py) when a client hangs up: the sidecar meters what it served (status
`cancelled`) and closes its connection to the engine, which is what makes vLLM abort the request.
The relay's everyday path (byte-identical streams, records before the last byte) is exercised
end to end in test_sidecar_proxy.py.

The sidecar talks to vLLM through a RecordingTap that holds the answer part-way until the
sidecar hangs up. Without it these tests race the engine: the idle tiny model serves 450 tokens
in half a second, a loaded CI machine can take longer than that to deliver a hang-up, and a
request that is finished cannot be cancelled.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from gpuledger.contracts import UsageRecord
from tests.conftest import wait_until
from tests.proxy_support import CHAT, Sidecar, engine_counters, tapped_sidecar_fixture
from tests.sidecar_support import DEV_SECRET, RecordingTap

__all__ = ["tapped_sidecar_fixture"]

pytestmark = pytest.mark.engine

AUTH = {"authorization": f"Bearer {DEV_SECRET}", "x-feature": "long"}


@pytest.fixture(name="tap")
def tap_fixture(sidecar: Sidecar) -> Iterator[RecordingTap]:
    assert sidecar.tap is not None
    yield sidecar.tap
    sidecar.tap.hold_after_events = None


def wait_until_idle(engine_url: str) -> None:
    def idle() -> bool:
        return engine_counters(engine_url)["vllm:num_requests_running"] == 0

    wait_until(idle, 120, "the engine to stop the abandoned request", interval_s=0.05)


def wait_for_hang_up(tap: RecordingTap, before: int) -> None:
    """Until the sidecar has closed its connection to the engine (the tap saw its caller go)."""
    wait_until(lambda: len(tap.hung_up) > before, 10, "the sidecar to close its engine connection",
               interval_s=0.01)  # fmt: skip


def test_abandoned_stream_is_cancelled_metered_and_closed_upstream(
    sidecar: Sidecar, tap: RecordingTap, engine_url: str
) -> None:
    tap.hold_after_events = 5
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 450, "stream": True,
            "ignore_eos": True, "temperature": 0}  # fmt: skip
    hung_up = len(tap.hung_up)
    with (
        httpx.Client(timeout=120) as client,
        client.stream("POST", f"{sidecar.url}/v1/chat/completions", json=body, headers=AUTH) as resp,
    ):  # fmt: skip
        request_id = resp.headers["x-gpuledger-request-id"]
        events = 0
        for line in resp.iter_lines():
            events += line.startswith("data:")
            if events >= 5:
                break
    record = sidecar.record(request_id)
    assert record.status == "cancelled"
    # The role event, then one token an event; vLLM may merge a few tokens into one event.
    assert 4 <= record.output_tokens < 450
    assert record.input_tokens > 0 and record.finish_reason is None
    assert "estimated_tokens" in record.guardrail_actions
    wait_for_hang_up(tap, hung_up)
    assert tap.hung_up[-1] == "/v1/chat/completions"
    wait_until_idle(engine_url)


def test_abandoned_plain_request_is_cancelled(
    sidecar: Sidecar, tap: RecordingTap, engine_url: str
) -> None:
    tap.hold_after_events = 0
    payload = json.dumps({"model": "tiny", "messages": CHAT, "max_tokens": 450, "ignore_eos": True})
    url = httpx.URL(sidecar.url)
    headers = "".join(f"{k}: {v}\r\n" for k, v in AUTH.items())
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {url.host}\r\n{headers}"
        f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n{payload}"
    ).encode()
    seen, held, hung_up = len(sidecar.sink.records), len(tap.held), len(tap.hung_up)
    with socket.create_connection((url.host, url.port or 80), timeout=30) as conn:
        conn.sendall(request)
        # The sidecar is then waiting for the engine's headers.
        wait_until(lambda: len(tap.held) > held, 60, "the request to reach the engine",
                   interval_s=0.01)  # fmt: skip
    record: UsageRecord = sidecar.sink.wait_for(seen + 1)[seen]
    # No usage comes back for an aborted plain request: the tokens it generated are unknown.
    assert record.status == "cancelled" and record.output_tokens == 0
    assert record.input_tokens > 0 and "estimated_tokens" in record.guardrail_actions
    wait_for_hang_up(tap, hung_up)
    wait_until_idle(engine_url)
