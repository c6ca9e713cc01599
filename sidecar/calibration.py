"""Estimate an engine's prefill cost factor from its own Prometheus histograms.

The attribution clock (sidecar/attribution.py) weighs a prefilling request at
``uncached_prompt_tokens * f`` decode-step equivalents. ``f`` is the time of one prompt token
relative to one decode step of one sequence, and vLLM measures both sides per request:

    f = (prefill seconds / uncached prompt tokens) / (decode seconds / decode tokens)

* prefill seconds: ``vllm:request_prefill_time_seconds_sum`` (scheduled -> first token);
* uncached prompt tokens: ``vllm:prompt_tokens_total - vllm:prefix_cache_hits_total``;
* decode seconds: ``vllm:request_decode_time_seconds_sum`` (first token -> last token);
* decode tokens: ``vllm:generation_tokens_total`` minus one first token per request (the first
  token is produced by the prefill step).

Both sides are wall time per request under whatever batching the engine ran, so the ratio is
fair when both phases saw similar load. Two scrapes (before/after a window) give the factor of
that window only. ``vllm:iteration_tokens_total`` (tokens per engine step) is reported alongside.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "Calibration",
    "CalibrationError",
    "EngineCounters",
    "estimate",
    "parse_metrics",
    "write_profile_factor",
]


class CalibrationError(ValueError):
    """Not enough traffic (or no vLLM metrics) to estimate from; the message is one line."""


@dataclass(frozen=True, slots=True)
class EngineCounters:
    """Cumulative vLLM counters, summed over every label set (engines, models)."""

    requests: float = 0.0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    queue_seconds: float = 0.0
    prompt_tokens: float = 0.0
    cached_prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    iteration_tokens_sum: float = 0.0
    iterations: float = 0.0

    def __sub__(self, other: EngineCounters) -> EngineCounters:
        return EngineCounters(
            **{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)}
        )


# sample name -> EngineCounters field. The prometheus parser strips `_total` from counter family
# names but not from sample names, so sample names are matched as exposed.
_SAMPLES = {
    "vllm:request_prefill_time_seconds_count": "requests",
    "vllm:request_prefill_time_seconds_sum": "prefill_seconds",
    "vllm:request_decode_time_seconds_sum": "decode_seconds",
    "vllm:request_queue_time_seconds_sum": "queue_seconds",
    "vllm:prompt_tokens_total": "prompt_tokens",
    "vllm:prefix_cache_hits_total": "cached_prompt_tokens",
    "vllm:generation_tokens_total": "generation_tokens",
    "vllm:iteration_tokens_total_sum": "iteration_tokens_sum",
    "vllm:iteration_tokens_total_count": "iterations",
}


def parse_metrics(text: str) -> EngineCounters:
    """Read the counters from an engine's /metrics text (Prometheus exposition format)."""
    totals = dict.fromkeys(_SAMPLES.values(), 0.0)
    seen = False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            target = _SAMPLES.get(sample.name)
            if target is not None and math.isfinite(sample.value):
                totals[target] += sample.value
                seen = True
    if not seen:
        raise CalibrationError("no vLLM request metrics in the scrape (is this a vLLM /metrics?)")
    return EngineCounters(**totals)


@dataclass(frozen=True, slots=True)
class Calibration:
    prefill_cost_factor: float
    requests: int
    prefill_seconds_per_token: float
    decode_seconds_per_token: float
    mean_queue_seconds: float
    mean_tokens_per_iteration: float | None

    def summary(self) -> str:
        per_iter = (
            "n/a" if self.mean_tokens_per_iteration is None else f"{self.mean_tokens_per_iteration:.1f}"
        )
        return (
            f"prefill_cost_factor: {self.prefill_cost_factor:.4g}\n"
            f"  from {self.requests} requests: "
            f"{self.prefill_seconds_per_token * 1e3:.4g} ms per uncached prompt token, "
            f"{self.decode_seconds_per_token * 1e3:.4g} ms per decode token\n"
            f"  mean queue time {self.mean_queue_seconds * 1e3:.4g} ms per request; "
            f"mean tokens per engine step {per_iter}"
        )


def estimate(counters: EngineCounters, min_requests: int = 1) -> Calibration:
    """The factor from cumulative counters (or the difference of two scrapes)."""
    c = counters
    if c.requests < max(1, min_requests):
        raise CalibrationError(
            f"only {c.requests:.0f} finished requests in the window (need {max(1, min_requests)}):"
            " send some traffic and retry"
        )
    uncached = c.prompt_tokens - c.cached_prompt_tokens
    decode_tokens = c.generation_tokens - c.requests
    if uncached < 1 or c.prefill_seconds <= 0.0:
        raise CalibrationError("no prefill work in the window (all prompts served from cache?)")
    if decode_tokens < 1 or c.decode_seconds <= 0.0:
        raise CalibrationError("no decode work in the window (requests of 1 output token only?)")
    per_prompt = c.prefill_seconds / uncached
    per_decode = c.decode_seconds / decode_tokens
    factor = per_prompt / per_decode
    if not (factor > 0.0 and math.isfinite(factor)):
        raise CalibrationError(f"the metrics give an unusable factor ({factor!r})")
    return Calibration(
        prefill_cost_factor=factor,
        requests=round(c.requests),
        prefill_seconds_per_token=per_prompt,
        decode_seconds_per_token=per_decode,
        mean_queue_seconds=c.queue_seconds / c.requests,
        mean_tokens_per_iteration=(
            c.iteration_tokens_sum / c.iterations if c.iterations > 0 else None
        ),
    )


_FACTOR_LINE = re.compile(r"^prefill_cost_factor\s*:.*$", re.MULTILINE)


def write_profile_factor(path: Path, factor: float, note: str) -> None:
    """Set `prefill_cost_factor` in a profile YAML, keeping its comments and layout: the line
    is replaced in place when present, else appended with `note` as a comment above it."""
    text = path.read_text(encoding="utf-8")
    line = f"prefill_cost_factor: {factor:.4g}"
    if _FACTOR_LINE.search(text):
        text = _FACTOR_LINE.sub(line, text, count=1)
    else:
        if text and not text.endswith("\n"):
            text += "\n"
        text += f"# {note}\n{line}\n"
    path.write_text(text, encoding="utf-8")
