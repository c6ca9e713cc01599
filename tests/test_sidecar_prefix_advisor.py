"""Prefix advisor: a feature whose prompt starts with a timestamp is flagged and its wasted
prefill estimated; a fixed system prompt is not; memory stays bounded."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from sidecar.prefix_advisor import PrefixAdvisor

SYSTEM = b"You are a helpful assistant for ACME. Answer briefly. " * 10


def test_unstable_opening_is_reported_with_waste() -> None:
    adv = PrefixAdvisor(window=50, min_observations=10, prefill_gpu_seconds_per_token=0.001)
    stamped, stable = [], []
    for i in range(100):
        stamped.append(
            adv.observe(
                "stamped", f"Now is 2026-11-27T10:{i:04d}. ".encode() + SYSTEM, prompt_tokens=300
            )
        )
        stable.append(adv.observe("stable", SYSTEM + f"user question {i}".encode(), 300))
    rows = {r.feature: r for r in adv.report()}
    # What each request's record carries adds up to the advisor's own totals.
    assert all(o.new for o in stamped) and [o.new for o in stable] == [True] + [False] * 99
    assert len({o.hash for o in stable}) == 1 and len({o.hash for o in stamped}) == 100
    assert sum(o.wasted_prefill_gpu_seconds for o in stamped) == pytest.approx(
        rows["stamped"].wasted_prefill_gpu_seconds
    )
    assert sum(o.wasted_prefill_gpu_seconds for o in stable) == 0.0
    assert rows["stamped"].unstable and rows["stamped"].unstable_ratio == 1.0
    # 91 requests after the first 9 (below min_observations); 300 tokens -> 288 in 16-token blocks.
    assert rows["stamped"].wasted_prefill_gpu_seconds == pytest.approx(91 * 288 * 0.001)
    assert "static content" in rows["stamped"].advice
    assert not rows["stable"].unstable
    assert rows["stable"].distinct_openings == 1 and rows["stable"].observations == 50
    assert rows["stable"].wasted_prefill_gpu_seconds == 0.0
    assert adv.report()[0].feature == "stamped"


def test_short_prompts_waste_nothing_and_head_only_is_hashed() -> None:
    adv = PrefixAdvisor(head_bytes=16, min_observations=2, block_tokens=128)
    for i in range(30):
        adv.observe("short", f"{i:03d} hello".encode(), prompt_tokens=50)  # < one 128-token block
        adv.observe("tail-varies", b"0123456789abcdef" + str(i).encode())  # differs after the head
    rows = {r.feature: r for r in adv.report()}
    assert rows["short"].unstable and rows["short"].wasted_prefill_gpu_seconds == 0.0
    assert rows["tail-varies"].distinct_openings == 1


def test_bounded_features_and_metrics() -> None:
    adv = PrefixAdvisor(max_features=3, window=5)
    for i in range(10):
        adv.observe(f"f{i}", b"x" * 1000)
    assert {r.feature for r in adv.report()} == {"f0", "f1", "f2", "other"}
    assert max(r.observations for r in adv.report()) == 5
    registry = CollectorRegistry()
    adv.register(registry)
    text = generate_latest(registry).decode()
    assert 'gpuledger_prefix_unstable_ratio{feature="f0"} 1.0' in text
    assert 'gpuledger_prefix_wasted_prefill_gpu_seconds_total{feature="other"}' in text


def test_prompt_head_of_chat_and_completion_bodies() -> None:
    from sidecar.prefix_advisor import prompt_head

    long_system = "You are terse. " * 100
    chat = {
        "messages": [{"role": "system", "content": long_system}, {"role": "user", "content": "hi"}]
    }
    head = prompt_head(chat, limit=64)
    assert head == b"system\x00" + long_system.encode()[:57] and len(head) == 64
    parts = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "a"},
                    {"type": "image_url"},
                    {"type": "text", "text": "b"},
                ],
            }
        ]
    }
    assert prompt_head(parts) == b"user\x00ab"
    assert prompt_head({"prompt": ["first", "second"]}) == b"first"
    assert prompt_head({"prompt": [1, 2, 3]}) == b"1,2,3"
    assert prompt_head({"prompt": "é" * 300}, limit=10) == ("é" * 5).encode()
    assert prompt_head({}) == b""


@pytest.mark.engine
def test_sidecar_feeds_the_advisor(engine_url: str, tmp_path: Path) -> None:
    """Through the real sidecar: a feature whose prompt opens with a timestamp vs a fixed one."""
    import httpx
    import openai

    from sidecar.app import create_app
    from sidecar.policy import PolicyStore
    from sidecar.settings import Settings
    from sidecar.sinks import MemorySink
    from tests.sidecar_support import DEV_SECRET, dev_snapshot, run_sidecar

    store = PolicyStore(tmp_path)
    store.replace(dev_snapshot(engine_url))
    app = create_app(
        Settings(upstream_url=engine_url, state_dir=tmp_path), policy_store=store, sink=MemorySink()
    )
    with run_sidecar(app=app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=DEV_SECRET, max_retries=0)
        for i in range(5):
            client.completions.create(model="tiny", prompt=f"[{i}:00] You are terse.", max_tokens=1)
            client.chat.completions.create(
                model="tiny",
                messages=[
                    {"role": "system", "content": "You are terse."},
                    {"role": "user", "content": str(i)},
                ],
                max_tokens=1,
                extra_headers={"x-feature": "chat"},
            )
        metrics = httpx.get(f"{url}/metrics").text
    assert 'gpuledger_prefix_unstable_ratio{feature="default"} 1.0' in metrics
    assert 'gpuledger_prefix_unstable_ratio{feature="chat"} 0.2' in metrics
