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
import time
from collections.abc import Iterator

import httpx
import pytest

from gpuledger.contracts import UsageRecord
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
    deadline = time.monotonic() + 120
    while engine_counters(engine_url)["vllm:num_requests_running"] > 0:
        assert time.monotonic() < deadline, "the engine kept running the abandoned request"
        time.sleep(0.05)


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
    deadline = time.monotonic() + 10
    while len(tap.hung_up) == hung_up:  # the sidecar closed its engine connection
        assert time.monotonic() < deadline, "the sidecar kept its engine connection open"
        time.sleep(0.01)
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
        deadline = time.monotonic() + 60
        while len(tap.held) == held:  # the sidecar waits for the engine's headers
            assert time.monotonic() < deadline, "the request never reached the engine"
            time.sleep(0.01)
    record: UsageRecord = sidecar.sink.wait_for(seen + 1)[seen]
    # No usage comes back for an aborted plain request: the tokens it generated are unknown.
    assert record.status == "cancelled" and record.output_tokens == 0
    assert record.input_tokens > 0 and "estimated_tokens" in record.guardrail_actions
    deadline = time.monotonic() + 10
    while len(tap.hung_up) == hung_up:
        assert time.monotonic() < deadline, "the sidecar kept its engine connection open"
        time.sleep(0.01)
    wait_until_idle(engine_url)
