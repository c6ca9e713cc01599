"""The sidecar in front of the real engine for the proxy tests (tests/test_sidecar_proxy*.py):
a module-scoped sidecar with the dev policy plus test keys, its usage sink and span exporter.

    from tests.proxy_support import direct_fixture, sidecar_fixture   # the fixtures, by name
    # or tapped_sidecar_fixture (also named `sidecar`): the same through a RecordingTap
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gpuledger.contracts import PolicySnapshot, UsageRecord, hash_key
from sidecar.app import create_app
from sidecar.policy import PolicyStore
from sidecar.settings import Settings
from sidecar.sinks import MemorySink
from tests.sidecar_support import (
    DEV_SECRET,
    RecordingTap,
    dev_snapshot,
    run_recording_tap,
    run_sidecar,
)

CHAT: Any = [{"role": "user", "content": "tell me about the cache"}]
ONLY_OTHER_SECRET = "glk_test_only_other_model_0123456789"
EXPIRED_SECRET = "glk_test_expired_0123456789abcdef"
DISABLED_SECRET = "glk_test_disabled_0123456789abcdef"


class Sidecar:
    def __init__(
        self,
        url: str,
        sink: MemorySink,
        spans: InMemorySpanExporter,
        tap: RecordingTap | None = None,
    ) -> None:
        self.url = url
        self.sink = sink
        self.spans = spans
        self.tap = tap  # between the sidecar and vLLM, when the fixture put one there

    def upstream_api_calls(self) -> int:
        """Requests the sidecar sent to the engine's OpenAI API (not /metrics, /tokenize)."""
        assert self.tap is not None, "this sidecar has no tap"
        return sum(1 for path, _, _ in self.tap.exchanges if path.startswith("/v1/"))

    def client(self, secret: str = DEV_SECRET) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=secret, max_retries=0, timeout=120)

    def aclient(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key=DEV_SECRET, max_retries=0, timeout=120
        )

    def record(self, request_id: str, timeout_s: float = 10.0) -> UsageRecord:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for record in list(self.sink.records):
                if record.id == request_id:
                    return record
            time.sleep(0.01)
        raise AssertionError(f"no usage record for {request_id}")

    def last_record(self) -> UsageRecord:
        self.sink.wait_for(1)
        return self.sink.records[-1]


def proxy_snapshot(engine_url: str) -> PolicySnapshot:
    base = dev_snapshot(
        engine_url,
        default={"default_max_tokens": 8, "max_tokens_cap": 32, "over_cap": "reject"},
        chat={"default_max_tokens": 8, "max_tokens_cap": 24, "over_cap": "clamp",
              "max_prompt_tokens": 40},
    )  # fmt: skip
    # `long`: room for streams that are still running when the client hangs up.
    long = base.features[0].model_copy(update={"name": "long", "max_tokens_cap": 480})
    dev = base.keys[0].model_copy(update={"features": [*base.keys[0].features, "long"]})
    extra = [
        dev.model_copy(update={"id": "key_other", "key_hash": hash_key(ONLY_OTHER_SECRET),
                               "models": ["not-tiny"]}),
        dev.model_copy(update={"id": "key_expired", "key_hash": hash_key(EXPIRED_SECRET),
                               "expires_at": datetime.now(UTC) - timedelta(days=1)}),
        dev.model_copy(update={"id": "key_disabled", "key_hash": hash_key(DISABLED_SECRET),
                               "enabled": False}),
    ]  # fmt: skip
    return base.model_copy(update={"keys": [dev, *extra], "features": [*base.features, long]})


@contextlib.contextmanager
def serve_sidecar(
    upstream_url: str, state_dir: Path, tap: RecordingTap | None = None
) -> Iterator[Sidecar]:
    """A sidecar with the proxy tests' policy in front of `upstream_url`."""
    store = PolicyStore(state_dir)
    store.replace(proxy_snapshot(upstream_url))
    sink, spans = MemorySink(), InMemorySpanExporter()
    settings = Settings(upstream_url=upstream_url, state_dir=state_dir)
    app = create_app(settings, policy_store=store, sink=sink, span_exporter=spans)
    with run_sidecar(app=app) as url:
        yield Sidecar(url, sink, spans, tap)


@pytest.fixture(scope="module", name="sidecar")
def sidecar_fixture(engine_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    """Straight to the engine."""
    with serve_sidecar(engine_url, tmp_path_factory.mktemp("state")) as sidecar:
        yield sidecar


@pytest.fixture(scope="module", name="sidecar")
def tapped_sidecar_fixture(
    engine_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sidecar]:
    """Through a RecordingTap, so a test can tell exactly what reached the engine, whatever
    else uses a shared development engine."""
    with (
        run_recording_tap(engine_url) as (tap_url, tap),
        serve_sidecar(tap_url, tmp_path_factory.mktemp("state"), tap) as sidecar,
    ):
        yield sidecar


@pytest.fixture(scope="module", name="direct")
def direct_fixture(engine_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{engine_url}/v1", api_key="unused", max_retries=0, timeout=120)


def engine_counters(engine_url: str) -> dict[str, float]:
    text = httpx.get(f"{engine_url}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for name in (
        "vllm:request_success_total",
        "vllm:prompt_tokens_total",
        "vllm:num_requests_running",
    ):
        out[name] = sum(
            float(m.group(1))
            for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
        )
    return out


def post_raw(url: str, secret: str | None, content: bytes, **headers: str) -> httpx.Response:
    if secret is not None:
        headers["authorization"] = f"Bearer {secret}"
    headers.setdefault("content-type", "application/json")
    return httpx.post(f"{url}/v1/chat/completions", content=content, headers=headers, timeout=120)
