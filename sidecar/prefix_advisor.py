"""Prefix-cache advisor: find features whose prompt opening changes from request to request.

vLLM reuses KV blocks only for an identical *leading* run of tokens, in whole blocks (16 tokens
on a GPU by default, 128 on the CPU backend). A system prompt that starts with a timestamp or the
user's name defeats that for the entire static text behind it. Per feature we hash only the first
`head_bytes` of the prompt (blake2b, 8 bytes) and keep the last `window` hashes; the share of
openings in that window that are distinct is the *unstable ratio* (1.0: every request starts
differently; ~0: one fixed opening). Each request's `Opening` goes on its usage record, so the
control plane's prefix-cache report sums the same view across sidecars.

Wasted prefill is an upper-bound estimate: for a request in an unstable feature whose opening was
not seen in the window, the whole-block part of its prompt could have been a cache hit had the
static content come first; it is priced at `prefill_gpu_seconds_per_token`.

Cheap and bounded: one hash of at most `head_bytes` per request, `window` hashes per feature,
at most `max_features` features (the rest fold into `other`).
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry


@dataclass(frozen=True, slots=True)
class PrefixReportRow:
    feature: str
    observations: int  # in the current window
    distinct_openings: int
    unstable_ratio: float
    unstable: bool
    wasted_prefill_gpu_seconds: float  # since start
    advice: str


@dataclass(frozen=True, slots=True)
class Opening:
    """One request's opening, as its usage record carries it to the control plane."""

    hash: str  # blake2b-64 of the prompt's first bytes, hex: never the text
    new: bool  # not among the feature's last `window` openings on this sidecar
    wasted_prefill_gpu_seconds: float  # this request's share of the advisor's estimate


class _FeatureWindow:
    __slots__ = ("counts", "hashes", "wasted_s")

    def __init__(self, window: int) -> None:
        self.hashes: deque[int] = deque(maxlen=window)
        self.counts: Counter[int] = Counter()
        self.wasted_s = 0.0

    def push(self, h: int) -> bool:
        """Add a hash; True when it was not in the window (a new opening)."""
        new = self.counts[h] == 0
        if len(self.hashes) == self.hashes.maxlen:
            old = self.hashes[0]
            self.counts[old] -= 1
            if self.counts[old] == 0:
                del self.counts[old]
        self.hashes.append(h)
        self.counts[h] += 1
        return new

    def ratio(self) -> float:
        return len(self.counts) / len(self.hashes) if self.hashes else 0.0


class PrefixAdvisor:
    def __init__(
        self,
        *,
        head_bytes: int = 256,
        window: int = 200,
        min_observations: int = 20,
        unstable_threshold: float = 0.5,
        block_tokens: int = 16,
        prefill_gpu_seconds_per_token: float = 1e-4,
        max_features: int = 256,
    ) -> None:
        self.head_bytes = head_bytes
        self.window = window
        self.min_observations = min_observations
        self.unstable_threshold = unstable_threshold
        self.block_tokens = block_tokens
        self.prefill_gpu_seconds_per_token = prefill_gpu_seconds_per_token
        self.max_features = max_features
        self._features: dict[str, _FeatureWindow] = {}

    def _window_for(self, feature: str) -> _FeatureWindow:
        w = self._features.get(feature)
        if w is None:
            if len(self._features) >= self.max_features:
                feature = "other"
                w = self._features.get(feature)
            if w is None:
                w = self._features[feature] = _FeatureWindow(self.window)
        return w

    def observe(
        self, feature: str, prompt_head: bytes, prompt_tokens: int | None = None
    ) -> Opening:
        """Record one request's prompt opening. `prompt_tokens` (estimate) sizes the waste; when
        omitted, ~4 bytes per token of the head is assumed."""
        digest = hashlib.blake2b(prompt_head[: self.head_bytes], digest_size=8).digest()
        opening = int.from_bytes(digest, "little")
        w = self._window_for(feature)
        new = w.push(opening)
        wasted = 0.0
        if new and self._is_unstable(w):
            tokens = prompt_tokens if prompt_tokens is not None else len(prompt_head) // 4
            cacheable = (tokens // self.block_tokens) * self.block_tokens
            wasted = cacheable * self.prefill_gpu_seconds_per_token
            w.wasted_s += wasted
        return Opening(f"{opening:016x}", new, wasted)

    def _is_unstable(self, w: _FeatureWindow) -> bool:
        return len(w.hashes) >= self.min_observations and w.ratio() >= self.unstable_threshold

    def report(self) -> list[PrefixReportRow]:
        """One row per feature, most wasteful first (for the control plane's reports)."""
        rows = []
        for name, w in self._features.items():
            unstable = self._is_unstable(w)
            rows.append(
                PrefixReportRow(
                    feature=name,
                    observations=len(w.hashes),
                    distinct_openings=len(w.counts),
                    unstable_ratio=round(w.ratio(), 4),
                    unstable=unstable,
                    wasted_prefill_gpu_seconds=w.wasted_s,
                    advice=(
                        "Prompt openings keep changing: move static content (system prompt, "
                        "instructions) first and per-request values (dates, names) last."
                        if unstable
                        else ""
                    ),
                )
            )
        rows.sort(key=lambda r: (-r.wasted_prefill_gpu_seconds, -r.unstable_ratio, r.feature))
        return rows

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(_AdvisorCollector(self))


class _AdvisorCollector(Collector):
    def __init__(self, advisor: PrefixAdvisor) -> None:
        self._advisor = advisor

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        ratio = GaugeMetricFamily(
            "gpuledger_prefix_unstable_ratio",
            "Share of distinct prompt openings among a feature's recent requests (1: all differ)",
            labels=["feature"],
        )
        wasted = CounterMetricFamily(
            "gpuledger_prefix_wasted_prefill_gpu_seconds",
            "Estimated prefill GPU-seconds lost because the prompt opening kept changing",
            labels=["feature"],
        )
        for name, w in self._advisor._features.items():
            ratio.add_metric([name], w.ratio())
            wasted.add_metric([name], w.wasted_s)
        yield ratio
        yield wasted


def prompt_head(body: Mapping[str, Any], limit: int = 256) -> bytes:
    """The first `limit` bytes of what the engine will see first: the first chat message's text,
    or the completion prompt (the first one of a batch). Token-id prompts are hashed as ids."""
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        first = messages[0]
        content = first.get("content") if isinstance(first, dict) else None
        if isinstance(content, list):  # content parts: the text ones, in order
            content = "".join(
                p.get("text", "")
                for p in content
                if isinstance(p, dict) and p.get("type") == "text"
            )
        role = first.get("role", "") if isinstance(first, dict) else ""
        # Slice characters before encoding: a long prompt is never copied whole.
        return f"{role}\x00{(content or '')[:limit]}".encode()[:limit]
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        prompt = prompt[0]  # a batch: its first prompt
    if isinstance(prompt, str):
        return prompt[:limit].encode()[:limit]
    if isinstance(prompt, list):  # token ids
        return b",".join(str(t).encode() for t in prompt[: limit // 2])[:limit]
    return b""
