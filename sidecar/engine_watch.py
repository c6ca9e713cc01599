"""Engine watch: scrape each upstream vLLM's `/metrics`, re-export what matters, remember a window.

One background task per engine fetches the Prometheus text every `interval_s`, reduces it to an
`EngineSample` (gauges, counters and the latency histograms summed over the engine's own label
sets) and appends it to a short rolling history. The history serves two readers:

* the custom collector on the app registry, which re-exports the newest sample as
  `gpuledger_engine_*{engine}` (so one Prometheus scrape of the sidecar sees the engine too, under
  the sidecar's engine *name* rather than vLLM's `engine="0"`);
* load shedding (`sidecar.shedding`), which asks "has KV-cache usage been above X for N seconds?"
  and "what is the P95 TTFT over the last window?" without any I/O on the request path.

Both metric generations are accepted: `vllm:kv_cache_usage_perc` / `vllm:gpu_cache_usage_perc`
and `vllm:inter_token_latency_seconds` / `vllm:time_per_output_token_seconds`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from sidecar.background import cancel_and_wait

log = logging.getLogger(__name__)

# vLLM sample name -> field of EngineSample. Newer names first; an older engine emits the others.
_GAUGES = {
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:gpu_cache_usage_perc": "kv_cache_usage",
    "vllm:num_requests_running": "requests_running",
    "vllm:num_requests_waiting": "requests_waiting",
}
_COUNTERS = {
    "vllm:prefix_cache_queries_total": "prefix_cache_queries",
    "vllm:prefix_cache_hits_total": "prefix_cache_hits",
    "vllm:num_preemptions_total": "preemptions",
}
# vLLM histogram base name -> our short name (re-exported as gpuledger_engine_<short>_seconds).
_HISTOGRAMS = {
    "vllm:time_to_first_token_seconds": "ttft",
    "vllm:inter_token_latency_seconds": "inter_token_latency",
    "vllm:time_per_output_token_seconds": "inter_token_latency",
    "vllm:e2e_request_latency_seconds": "e2e",
}


@dataclass(slots=True)
class Histogram:
    """A cumulative histogram: sorted (upper bound, cumulative count) pairs, +Inf last."""

    buckets: list[tuple[float, float]] = field(default_factory=list)
    total: float = 0.0

    @property
    def count(self) -> float:
        return self.buckets[-1][1] if self.buckets else 0.0


@dataclass(slots=True)
class EngineSample:
    at: float  # clock() when taken
    up: bool
    kv_cache_usage: float = 0.0
    requests_running: float = 0.0
    requests_waiting: float = 0.0
    prefix_cache_queries: float = 0.0
    prefix_cache_hits: float = 0.0
    preemptions: float = 0.0
    histograms: dict[str, Histogram] = field(default_factory=dict)
    # Derived when appended to the history: P95 over the watch window (None: no requests in it).
    p95_ttft_s: float | None = None
    p95_e2e_s: float | None = None


_WANTED = tuple(sorted({*_GAUGES, *_COUNTERS, *_HISTOGRAMS}))


def _relevant_lines(text: str) -> str:
    """Only the sample lines we read: vLLM's page also carries process/python metrics and many
    histograms we ignore, and the parser is pure Python on the sidecar's event loop."""
    return "\n".join(line for line in text.splitlines() if line.startswith(_WANTED)) + "\n"


def parse_vllm_metrics(text: str, at: float) -> EngineSample:
    """Reduce vLLM's exposition text to one sample, summing over vLLM's own labels (model, engine)."""
    sample = EngineSample(at=at, up=True)
    text = _relevant_lines(text)
    buckets: dict[str, dict[float, float]] = {}
    sums: dict[str, float] = {}
    seen_gauges: set[str] = set()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name = s.name
            if name in _GAUGES:
                attr = _GAUGES[name]
                # Old and new names never coexist in one engine; sum across label sets only.
                current = getattr(sample, attr) if attr in seen_gauges else 0.0
                setattr(sample, attr, current + s.value)
                seen_gauges.add(attr)
            elif name in _COUNTERS:
                attr = _COUNTERS[name]
                setattr(sample, attr, getattr(sample, attr) + s.value)
            elif name.endswith("_bucket") and name[: -len("_bucket")] in _HISTOGRAMS:
                short = _HISTOGRAMS[name[: -len("_bucket")]]
                le = float(s.labels.get("le", "+Inf"))
                per = buckets.setdefault(short, {})
                per[le] = per.get(le, 0.0) + s.value
            elif name.endswith("_sum") and name[: -len("_sum")] in _HISTOGRAMS:
                short = _HISTOGRAMS[name[: -len("_sum")]]
                sums[short] = sums.get(short, 0.0) + s.value
    for short, per in buckets.items():
        sample.histograms[short] = Histogram(sorted(per.items()), sums.get(short, 0.0))
    return sample


def quantile(q: float, newer: Histogram, older: Histogram | None) -> float | None:
    """`histogram_quantile` over the increase between two cumulative histograms (Prometheus' way:
    linear interpolation inside the bucket; the +Inf bucket answers the highest finite bound)."""
    old = dict(older.buckets) if older else {}
    deltas = [(le, max(0.0, c - old.get(le, 0.0))) for le, c in newer.buckets]
    if not deltas or deltas[-1][1] <= 0:
        return None
    rank = q * deltas[-1][1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in deltas:
        if c >= rank:
            if math.isinf(le):
                return prev_le
            if c == prev_c:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return prev_le


class EngineWatch:
    """Rolling per-engine view of vLLM's metrics. `ingest` (text) and `record` (a parsed sample)
    are the seams the scraper and tests share."""

    def __init__(
        self,
        engines: Mapping[str, str] | Callable[[], Mapping[str, str]],
        *,
        interval_s: float = 2.0,
        window_s: float = 60.0,
        history_s: float = 600.0,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # A callable follows the policy: engines added or removed there are watched next round.
        self._engines = engines
        self.interval_s = interval_s
        self.window_s = window_s
        self.timeout_s = timeout_s
        self._clock = clock
        # Bounded: at most history_s / interval_s samples per engine (300 at the defaults).
        self._maxlen = max(8, int(history_s / max(interval_s, 0.1)) + 1)
        self._history: dict[str, deque[EngineSample]] = {}
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def engines(self) -> dict[str, str]:
        current = self._engines() if callable(self._engines) else self._engines
        return {name: url.rstrip("/") for name, url in current.items()}

    # --- feeding -------------------------------------------------------------------------------

    def ingest(self, engine: str, text: str | None) -> EngineSample:
        """Record one scrape (`None`: the engine did not answer) and derive the window P95s."""
        now = self._clock()
        sample = EngineSample(at=now, up=False) if text is None else parse_vllm_metrics(text, now)
        return self.record(engine, sample)

    def record(self, engine: str, sample: EngineSample) -> EngineSample:
        hist = self._history.get(engine)
        if hist is None:
            hist = self._history[engine] = deque(maxlen=self._maxlen)
        if sample.up:
            base = self._at_or_before(hist, sample.at - self.window_s)
            for short, attr in (("ttft", "p95_ttft_s"), ("e2e", "p95_e2e_s")):
                newer = sample.histograms.get(short)
                older = base.histograms.get(short) if base else None
                if newer is not None:
                    setattr(sample, attr, quantile(0.95, newer, older))
        hist.append(sample)
        return sample

    @staticmethod
    def _at_or_before(hist: Iterable[EngineSample], t: float) -> EngineSample | None:
        """Newest live sample taken at or before `t`, else the oldest live one (short history)."""
        found: EngineSample | None = None
        for s in hist:
            if not s.up:
                continue
            if found is None or s.at <= t:
                found = s
            else:
                break
        return found

    async def scrape_once(self, engine: str, url: str | None = None) -> EngineSample:
        assert self._session is not None, "start() first"
        url = f"{url or self.engines[engine]}/metrics"
        text: str | None
        try:
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            async with self._session.get(url, timeout=timeout) as resp:
                text = await resp.text() if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            text = None
        except Exception:  # a malformed exposition must not kill the watch
            log.exception("engine watch: scrape of %s failed", engine)
            text = None
        now = self._clock()
        if text is None:
            return self.record(engine, EngineSample(at=now, up=False))
        try:
            # Parsing is pure Python (~8 ms for vLLM's page here): in a thread, so the event loop
            # keeps serving requests between the interpreter's switch intervals.
            sample = await asyncio.to_thread(parse_vllm_metrics, text, now)
        except ValueError:  # unparsable text: the engine is not answering properly
            log.warning("engine watch: unparsable /metrics from %s", engine)
            sample = EngineSample(at=now, up=False)
        return self.record(engine, sample)

    async def scrape_all(self) -> None:
        engines = self.engines
        await asyncio.gather(*(self.scrape_once(name, url) for name, url in engines.items()))
        for gone in set(self._history) - set(engines):
            del self._history[gone]  # an engine removed from the policy stops being exported

    async def run(self) -> None:
        """The background task: scrape every engine each interval until cancelled."""
        own_session = self._session is None
        if own_session:
            self._session = aiohttp.ClientSession()
        try:
            while True:
                await self.scrape_all()
                await asyncio.sleep(self.interval_s)
        finally:
            if own_session and self._session is not None:
                await self._session.close()
                self._session = None

    async def start(self) -> None:
        """Open the session (for `scrape_once` in tests) and start `run` in the background."""
        self._session = aiohttp.ClientSession()
        self._task = asyncio.create_task(self.run(), name="engine-watch")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- reading (no I/O: safe on the request path) ----------------------------------------

    def latest(self, engine: str) -> EngineSample | None:
        hist = self._history.get(engine)
        return hist[-1] if hist else None

    def last_live(self, engine: str) -> EngineSample | None:
        return next((s for s in reversed(self._history.get(engine, ())) if s.up), None)

    def fresh(self, engine: str) -> EngineSample | None:
        """The newest sample if it is live and recent (3 intervals); stale data decides nothing."""
        s = self.latest(engine)
        if s is None or not s.up or self._clock() - s.at > 3 * self.interval_s + self.timeout_s:
            return None
        return s

    def sustained(
        self, engine: str, predicate: Callable[[EngineSample], bool], for_s: float
    ) -> bool:
        """True when every live sample of the last `for_s` seconds satisfies `predicate` and the
        run of satisfying samples spans at least `for_s` (so one spike is not "sustained")."""
        if self.fresh(engine) is None:
            return False
        hist = self._history[engine]
        newest = hist[-1].at
        for s in reversed(hist):
            if not s.up or not predicate(s):
                return False
            if newest - s.at >= for_s:
                return True
        return for_s <= 0

    def kv_above_for(self, engine: str, threshold: float, for_s: float) -> bool:
        return self.sustained(engine, lambda s: s.kv_cache_usage > threshold, for_s)

    def p95_ttft(self, engine: str) -> float | None:
        s = self.fresh(engine)
        return s.p95_ttft_s if s else None

    # --- export --------------------------------------------------------------------------------

    def collector(self) -> Collector:
        return _EngineCollector(self)

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(self.collector())

    def samples(self) -> Iterator[tuple[str, EngineSample]]:
        for name, hist in self._history.items():
            if hist:
                yield name, hist[-1]


class _EngineCollector(Collector):
    def __init__(self, watch: EngineWatch) -> None:
        self._watch = watch

    def describe(self) -> Iterable[Metric]:
        return []  # values are dynamic; describing nothing keeps registration cheap

    def collect(self) -> Iterable[Metric]:
        lab = ["engine"]
        up = GaugeMetricFamily(
            "gpuledger_engine_up",
            "1 if the last scrape of the engine's /metrics succeeded",
            labels=lab,
        )
        kv = GaugeMetricFamily(
            "gpuledger_engine_kv_cache_usage_ratio",
            "KV-cache usage, 0-1 (vllm:kv_cache_usage_perc)",
            labels=lab,
        )
        run = GaugeMetricFamily(
            "gpuledger_engine_requests_running",
            "Requests in the engine's running batch",
            labels=lab,
        )
        wait = GaugeMetricFamily(
            "gpuledger_engine_requests_waiting", "Requests queued in the engine", labels=lab
        )
        pq = CounterMetricFamily(
            "gpuledger_engine_prefix_cache_queries", "Prefix-cache token queries (vLLM)", labels=lab
        )
        ph = CounterMetricFamily(
            "gpuledger_engine_prefix_cache_hits", "Prefix-cache token hits (vLLM)", labels=lab
        )
        pre = CounterMetricFamily(
            "gpuledger_engine_preemptions", "Requests preempted by the engine", labels=lab
        )
        hists: dict[str, HistogramMetricFamily] = {
            short: HistogramMetricFamily(
                f"gpuledger_engine_{short}_seconds",
                f"Engine-side {short} latency (re-exported from vLLM)",
                labels=lab,
            )
            for short in ("ttft", "inter_token_latency", "e2e")
        }
        for name, s in self._watch.samples():
            up.add_metric([name], 1.0 if s.up else 0.0)
            if not s.up:
                # Keep counters continuous across an outage by re-exporting the last live values.
                last_live = self._watch.last_live(name)
                if last_live is None:
                    continue
                s = last_live
            else:
                kv.add_metric([name], s.kv_cache_usage)
                run.add_metric([name], s.requests_running)
                wait.add_metric([name], s.requests_waiting)
            pq.add_metric([name], s.prefix_cache_queries)
            ph.add_metric([name], s.prefix_cache_hits)
            pre.add_metric([name], s.preemptions)
            for short, h in s.histograms.items():
                if short in hists and h.buckets:
                    pairs = [(_fmt_le(le), c) for le, c in h.buckets]
                    hists[short].add_metric([name], pairs, h.total)
        yield from (up, kv, run, wait, pq, ph, pre, *hists.values())


def _fmt_le(le: float) -> str:
    return "+Inf" if math.isinf(le) else repr(le)
