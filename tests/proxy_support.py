"""The sidecar in front of the real engine for the proxy tests (tests/test_sidecar_proxy*.py):
a module-scoped sidecar with the dev policy plus test keys, its usage sink and span exporter.

    from tests.proxy_support import direct_fixture, sidecar_fixture   # the fixtures, by name
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
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
from tests.sidecar_support import DEV_SECRET, dev_snapshot, run_sidecar

CHAT: Any = [{"role": "user", "content": "tell me about the cache"}]
ONLY_OTHER_SECRET = "glk_test_only_other_model_0123456789"
EXPIRED_SECRET = "glk_test_expired_0123456789abcdef"
DISABLED_SECRET = "glk_test_disabled_0123456789abcdef"


class Sidecar:
    def __init__(self, url: str, sink: MemorySink, spans: InMemorySpanExporter) -> None:
        self.url = url
        self.sink = sink
        self.spans = spans

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


@pytest.fixture(scope="module", name="sidecar")
def sidecar_fixture(engine_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    store = PolicyStore(tmp_path_factory.mktemp("state"))
    store.replace(proxy_snapshot(engine_url))
    sink, spans = MemorySink(), InMemorySpanExporter()
    settings = Settings(upstream_url=engine_url, state_dir=store.state_path.parent)  # type: ignore[union-attr]
    app = create_app(settings, policy_store=store, sink=sink, span_exporter=spans)
    with run_sidecar(app=app) as url:
        yield Sidecar(url, sink, spans)


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
