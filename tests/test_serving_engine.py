"""The local engine is real vLLM: chat and completions, streaming and not, with true `usage`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from serving.engine import EngineError, EngineProcess, cache_dir, ensure_tiny_model
from serving.profiles import load_profile

pytestmark = pytest.mark.engine

PROMPT = "tell me about budgets."


def _tokens(engine_url: str, prompt: str) -> int:
    response = httpx.post(f"{engine_url}/tokenize", json={"model": "tiny", "prompt": prompt})
    response.raise_for_status()
    return int(response.json()["count"])


def _sse_events(engine_url: str, path: str, body: dict[str, object]) -> list[dict[str, object]]:
    events: list[dict[str, object]] = []
    with httpx.stream("POST", f"{engine_url}{path}", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[len("data: ") :]))
    return events


def test_completion_usage_counts_prompt_and_forced_length(engine_url: str) -> None:
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 20, "ignore_eos": True, "temperature": 0}
    response = httpx.post(f"{engine_url}/v1/completions", json=body, timeout=60).json()
    usage = response["usage"]
    # The prompt's tokens plus the BOS that the tokenizer's post-processor adds.
    assert usage["prompt_tokens"] == _tokens(engine_url, PROMPT)
    assert usage["completion_tokens"] == 20
    assert response["choices"][0]["finish_reason"] == "length"
    assert usage["total_tokens"] == usage["prompt_tokens"] + 20


def test_chat_stream_usage_matches_non_stream(engine_url: str) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 40,
        "temperature": 0,
    }
    plain = httpx.post(f"{engine_url}/v1/chat/completions", json=body, timeout=60).json()
    events = _sse_events(
        engine_url,
        "/v1/chat/completions",
        {**body, "stream": True, "stream_options": {"include_usage": True}},
    )
    usage_events = [e for e in events if e.get("usage")]
    assert len(usage_events) == 1 and usage_events[0]["choices"] == []
    assert usage_events[0]["usage"] == {
        k: plain["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")
    }
    streamed = "".join(
        c["delta"].get("content") or "" for e in events for c in e["choices"]  # type: ignore[attr-defined]
    )
    assert streamed == plain["choices"][0]["message"]["content"]
    assert plain["usage"]["completion_tokens"] > 0
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"  # type: ignore[index]


def test_completion_stream_without_usage_has_no_usage_chunk(engine_url: str) -> None:
    events = _sse_events(
        engine_url,
        "/v1/completions",
        {"model": "tiny", "prompt": PROMPT, "max_tokens": 8, "ignore_eos": True, "stream": True},
    )
    assert not any(e.get("usage") for e in events)
    texts = [c.get("text") for e in events for c in e["choices"]]  # type: ignore[attr-defined]
    assert 0 < sum(1 for t in texts if t) <= 8


def test_model_stops_by_itself_sometimes(engine_url: str) -> None:
    """The tiny model was trained to emit <|im_end|>: both finish reasons occur."""
    reasons = set()
    for seed in range(6):
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": 48,
            "seed": seed,
            "temperature": 1.0,
        }
        reasons.add(httpx.post(f"{engine_url}/v1/chat/completions", json=body, timeout=60).json()["choices"][0]["finish_reason"])
    assert "stop" in reasons


def test_tiny_model_is_cached(engine_url: str) -> None:
    model = ensure_tiny_model()
    assert model == cache_dir() / "models" / "tiny"
    meta = json.loads((model / "gpuledger-build.json").read_text())
    assert meta["parameters"] > 1_000_000
    template = json.loads((model / "tokenizer_config.json").read_text()).get("chat_template") or (
        model / "chat_template.jinja"
    ).read_text()
    assert "<|im_start|>" in template


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in the group. Zombies are ignored: in a
    container, orphans are reaped by whatever runs as PID 1, which may be slow or never."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            return True
    return False


def test_failed_start_leaves_no_process(tmp_path: Path) -> None:
    """An engine that cannot start reports why in one line and leaves no orphan behind."""
    profile = load_profile("tiny-cpu").model_copy(update={"model": str(tmp_path / "no-such-model")})
    engine = EngineProcess.launch(profile, port=1)  # port 1: never healthy even if it started
    with pytest.raises(EngineError, match="exited with code"):
        engine.wait_ready(timeout=300)
    engine.stop()
    assert not _group_alive(engine.process.pid)


def test_stop_terminates_the_whole_group() -> None:
    """stop() signals the process group: a child that ignores nothing still goes with its parent."""
    process = subprocess.Popen(
        ["bash", "-c", "sleep 300 & sleep 300; wait"], start_new_session=True
    )
    engine = EngineProcess(load_profile("tiny-cpu"), "127.0.0.1", 0, process, Path(os.devnull))
    engine.stop(grace=5)
    assert process.poll() is not None
    assert not _group_alive(process.pid)
    assert process.returncode in (-signal.SIGTERM, -signal.SIGKILL, 128 + signal.SIGTERM)
