"""GPU-second attribution for a continuous-batching engine (see docs/metering.md).

One `EngineClock` per upstream engine. The engine is *busy* while at least one request is in
service; busy GPU-seconds = busy wall time x gpus. Between consecutive events the busy time is
split among the requests in service in proportion to their current work weight, measured in
decode-step equivalents:

* prefilling (admitted, no output token seen yet): ``max(1, uncached_prompt_tokens * f)`` where
  ``f`` (the engine's ``prefill_cost_factor``) is the time of one prompt token relative to one
  decode step of one sequence;
* decoding: ``n`` (one token per step for each of its ``n`` sequences).

The split uses a virtual-time integral, as GPS/WFQ fair-queueing schedulers do: the clock keeps
``V(t) = integral dt / W(t)`` where ``W`` is the total weight in service, and a request of weight
``w`` accrues ``w * dV`` GPU-seconds (times ``gpus``). A request only needs V at its last weight
change, so every event is O(1) and the charges add up to the busy time exactly (up to float
rounding): sum_i w_i * dt / W = dt.

A request whose first token is never seen (a non-streamed response) would otherwise weigh as
prefilling until it ends. So the prefill also ends at a deadline: admission time plus
``PREFILL_SLACK x uncached tokens x`` the engine's prefill seconds per token, learnt from the
first tokens of streamed requests (a ratio of moving averages of time-to-first-token and uncached
prompt tokens) or given. Deadlines sit in a heap: O(log n) per request.

Queue time: vLLM serves at most ``max_num_seqs`` sequences and queues the rest, which the sidecar
cannot see. Given ``max_num_seqs``, the clock models vLLM's first-come-first-served queue: beyond
that many in service, admitted requests wait (weight 0, not charged) in a FIFO and enter service
as others finish, or at once when a token shows they are being served. Without it, a request is
in service from admission (queue time is then charged, though the total still adds up).

Pure module: no I/O, no asyncio; the caller supplies the events and (for tests) the clock.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["DEFAULT_PREFILL_COST_FACTOR", "AttributionMetrics", "EngineClock"]

# Re-base virtual time once it passes this; keeps dV well above V's rounding step (V grows at
# most one unit per wall second because every weight is >= 1).
_REBASE_AT = float(2**20)
# A prefill deadline is this many times the learnt estimate: late enough that streamed requests
# nearly always end their prefill by their real first token, not by the estimate.
PREFILL_SLACK = 1.5
_EWMA = 0.05  # weight of a new time-to-first-token sample
# Used until an engine is calibrated (`gpuledger calibrate`). Measured: 0.035-0.13 on the CPU
# engine here (load-dependent), about 0.02 for an 8B model on one H100 (28 ms TTFT for a
# 210-token prompt vs 6.1 ms per decode token, shared/notes/vllm-gpu.md). 1.0 would let a long
# prompt take nearly all of the engine's time until its first token.
DEFAULT_PREFILL_COST_FACTOR = 0.05


class _Flight:
    """State of one in-service request: O(1) memory, independent of its length."""

    __slots__ = (
        "accrued", "admitted", "awaiting_first", "decode_weight", "mark", "prefilling",
        "uncached", "weight",
    )

    def __init__(
        self, weight: float, decode_weight: float, mark: float, admitted: float, uncached: int
    ) -> None:
        self.weight = weight
        self.decode_weight = decode_weight
        self.mark = mark  # V when `weight` last changed
        self.accrued = 0.0  # charge (in busy wall-seconds, before x gpus) up to `mark`
        self.prefilling = True  # weighs as prefill (until first token or deadline)
        self.awaiting_first = True  # first token not seen yet (feeds the prefill estimate)
        self.admitted = admitted
        self.uncached = uncached


def _finite_nonneg(value: float) -> float:
    return value if value > 0.0 and math.isfinite(value) else 0.0


class EngineClock:
    """Busy/idle clock of one engine and the per-request split of its busy time."""

    def __init__(
        self,
        engine: str,
        gpus: int = 1,
        prefill_cost_factor: float = DEFAULT_PREFILL_COST_FACTOR,
        clock: Callable[[], float] = time.monotonic,
        prefill_seconds_per_token: float | None = None,
        max_num_seqs: int | None = None,
    ) -> None:
        if gpus < 1:
            raise ValueError("gpus must be >= 1")
        if not (prefill_cost_factor >= 0.0 and math.isfinite(prefill_cost_factor)):
            raise ValueError("prefill_cost_factor must be a finite number >= 0")
        self.engine = engine
        self.gpus = gpus
        self.prefill_cost_factor = prefill_cost_factor
        self._clock = clock
        self._created = clock()
        self._last = self._created  # time of the last event
        self._v = 0.0  # virtual time V
        self._w = 0.0  # total weight in service
        self._busy = 0.0  # busy wall-seconds up to _last
        self._attributed = 0.0  # charges of finished requests (wall-seconds, before x gpus)
        self._flights: dict[str, _Flight] = {}  # in service
        self._max_seqs = max_num_seqs if max_num_seqs is None else max(1, max_num_seqs)
        self._queue: OrderedDict[str, _Flight] = OrderedDict()  # sent, waiting for a slot
        # Prefill deadlines: (due time, tie-breaker, flight); stale entries are skipped.
        self._deadlines: list[tuple[float, int, _Flight]] = []
        self._seq = itertools.count()
        self._fixed_spt = prefill_seconds_per_token
        self._ttft_avg = 0.0  # moving averages of streamed requests' time to first token ...
        self._uncached_avg = 0.0  # ... and of their uncached prompt tokens

    # --- events ----------------------------------------------------------------------------

    def _advance(self) -> float:
        now = self._clock()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            due, _, flight = heapq.heappop(deadlines)
            if flight.prefilling:  # else finished, or its first token came first
                self._advance_to(due)
                self._set_weight(flight, flight.decode_weight)
                flight.prefilling = False
        self._advance_to(now)
        return now

    def _advance_to(self, now: float) -> None:
        dt = now - self._last
        if not dt > 0.0:  # clock did not move (or went backwards, or NaN): nothing to split
            return
        self._last = now
        if self._flights:
            self._busy += dt
            self._v += dt / self._w

    @property
    def prefill_seconds_per_token(self) -> float | None:
        """The prefill-time estimate the deadlines use (given, or learnt; None until learnt)."""
        if self._fixed_spt is not None:
            return self._fixed_spt
        if self._uncached_avg <= 0.0:
            return None
        return self._ttft_avg / self._uncached_avg

    def prefill_weight(self, prompt_tokens: int, cached_tokens: int = 0) -> float:
        uncached = max(0, prompt_tokens - max(0, cached_tokens))
        return max(1.0, uncached * self.prefill_cost_factor)

    def admit(self, request_id: str, prompt_tokens: int, cached_tokens: int = 0, n: int = 1) -> None:
        """The request was sent upstream (the sidecar calls this right after sending it). It
        enters service now, or, with `max_num_seqs` set and that many in service, waits in a
        FIFO queue, as vLLM's first-come-first-served scheduler makes it wait."""
        if request_id in self._flights or request_id in self._queue:
            return
        now = self._advance()
        uncached = prompt_tokens - cached_tokens if cached_tokens > 0 else prompt_tokens
        if uncached < 0:
            uncached = 0
        weight = uncached * self.prefill_cost_factor
        flight = _Flight(weight if weight > 1.0 else 1.0, n if n > 1 else 1.0, 0.0, now, uncached)
        if self._max_seqs is not None and len(self._flights) >= self._max_seqs:
            self._queue[request_id] = flight
        else:
            self._start(request_id, flight, now)

    def _start(self, request_id: str, flight: _Flight, now: float) -> None:
        if not self._flights:
            # Idle: nobody holds a mark, so re-basing V is free.
            self._v = 0.0
            self._w = 0.0
        flight.mark = self._v
        flight.admitted = now
        self._flights[request_id] = flight
        self._w += flight.weight
        spt = self._fixed_spt
        if spt is None and self._uncached_avg > 0.0:
            spt = self._ttft_avg / self._uncached_avg
        if spt is not None and flight.weight > flight.decode_weight:  # else no deadline needed
            due = now + PREFILL_SLACK * (flight.uncached or 1) * spt
            if math.isfinite(due):
                heapq.heappush(self._deadlines, (due, next(self._seq), flight))
                if len(self._deadlines) > 2 * len(self._flights) + 64:
                    self._deadlines = [d for d in self._deadlines if d[2].prefilling]
                    heapq.heapify(self._deadlines)

    def progress(self, request_id: str, output_tokens_total: int) -> None:
        """A chunk arrived; `output_tokens_total` is cumulative. Only the first token matters:
        it ends the prefill, so the request's weight drops to its decode weight."""
        flight = self._flights.get(request_id)
        if flight is None:
            if output_tokens_total < 1 or request_id not in self._queue:
                return
            # A token from a request the model still queues: it is in service after all.
            now = self._advance()
            flight = self._queue.pop(request_id)
            self._start(request_id, flight, now)
        elif not flight.awaiting_first or output_tokens_total < 1:
            return
        now = self._advance()
        flight.awaiting_first = False
        ttft = now - flight.admitted
        if ttft > 0.0 and flight.uncached > 0:
            if self._uncached_avg <= 0.0:
                self._ttft_avg, self._uncached_avg = ttft, float(flight.uncached)
            else:
                self._ttft_avg += _EWMA * (ttft - self._ttft_avg)
                self._uncached_avg += _EWMA * (flight.uncached - self._uncached_avg)
        if flight.prefilling:
            self._set_weight(flight, flight.decode_weight)
            flight.prefilling = False

    def finish(
        self,
        request_id: str,
        *,
        prompt_tokens: int | None = None,
        cached_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> float:
        """The request left service; returns the GPU-seconds charged to it (0 if unknown).

        The final token counts are accepted for symmetry with the usage record but do not
        change the charge: the busy time already elapsed was split with the weights known at the
        time, and moving it between requests afterwards would need a scan (see docs/metering.md).
        """
        del prompt_tokens, cached_tokens, output_tokens
        flight = self._flights.get(request_id)
        if flight is None:
            # Unknown, or still queued in the model (cancelled before it was served): no charge.
            self._queue.pop(request_id, None)
            return 0.0
        now = self._advance()  # before removing it: the time up to now was shared with it
        del self._flights[request_id]
        flight.prefilling = flight.awaiting_first = False  # its deadline entry is now stale
        charge = flight.accrued + flight.weight * (self._v - flight.mark)
        self._w -= flight.weight
        if not self._flights:
            self._w = 0.0  # drop accumulated rounding
        charge = _finite_nonneg(charge)
        self._attributed += charge
        if self._queue and (self._max_seqs is None or len(self._flights) < self._max_seqs):
            rid, waiting = self._queue.popitem(last=False)
            self._start(rid, waiting, now)
        if self._v > _REBASE_AT:
            self._rebase()
        return charge * self.gpus

    def _set_weight(self, flight: _Flight, weight: float) -> None:
        flight.accrued += flight.weight * (self._v - flight.mark)
        flight.mark = self._v
        self._w += weight - flight.weight
        flight.weight = weight

    def _rebase(self) -> None:
        # O(n), but only once V has grown by 2**20 (about 12 days of busy wall time at W=1).
        for flight in self._flights.values():
            flight.accrued += flight.weight * (self._v - flight.mark)
            flight.mark = 0.0
        self._v = 0.0

    # --- readings (include time up to now) --------------------------------------------------

    def _now_busy(self) -> float:
        now = self._clock()
        extra = now - self._last if self._flights and now > self._last else 0.0
        return self._busy + extra

    @property
    def in_flight(self) -> int:
        """Requests sent and not finished: in service plus queued."""
        return len(self._flights) + len(self._queue)

    @property
    def in_service(self) -> int:
        return len(self._flights)

    @property
    def busy_gpu_seconds(self) -> float:
        return self._now_busy() * self.gpus

    @property
    def idle_gpu_seconds(self) -> float:
        wall = self._clock() - self._created
        return max(0.0, wall - self._now_busy()) * self.gpus

    @property
    def attributed_gpu_seconds(self) -> float:
        """GPU-seconds charged to requests that have finished."""
        return self._attributed * self.gpus

    def accrued_gpu_seconds(self, request_id: str) -> float:
        """What an in-flight request has been charged so far (0 if unknown)."""
        flight = self._flights.get(request_id)
        if flight is None:
            return 0.0
        return _finite_nonneg(self._accrued_now(flight)) * self.gpus

    def _accrued_now(self, flight: _Flight) -> float:
        now = self._clock()
        v = self._v
        if now > self._last and self._w > 0.0:
            v += (now - self._last) / self._w
        return flight.accrued + flight.weight * (v - flight.mark)

    @property
    def in_flight_accrued_gpu_seconds(self) -> float:
        """Sum of the in-flight requests' charges so far. O(n): for scrapes, not the hot path."""
        # list(): one C-level copy, safe even if a scrape runs on another thread than the events.
        flights = list(self._flights.values())
        return sum(_finite_nonneg(self._accrued_now(f)) for f in flights) * self.gpus

    @property
    def drift_ratio(self) -> float:
        """(busy - attributed - in-flight accrued) / busy; 0 when the books balance."""
        busy = self.busy_gpu_seconds
        if busy <= 0.0:
            return 0.0
        return (busy - self.attributed_gpu_seconds - self.in_flight_accrued_gpu_seconds) / busy


class _Collector(Collector):
    def __init__(self) -> None:
        self.clocks: dict[str, tuple[EngineClock, float | None]] = {}

    def describe(self) -> Iterable[Metric]:
        return []  # no descriptions: registration must not read clocks

    def collect(self) -> Iterator[Metric]:
        busy = CounterMetricFamily(
            "gpuledger_engine_busy_gpu_seconds",
            "GPU-seconds the engine was busy (>=1 request in service)",
            labels=["engine"],
        )
        attributed = CounterMetricFamily(
            "gpuledger_attributed_gpu_seconds",
            "GPU-seconds charged to finished requests",
            labels=["engine"],
        )
        idle = CounterMetricFamily(
            "gpuledger_engine_idle_gpu_seconds",
            "GPU-seconds the engine was idle (attributed to no request)",
            labels=["engine"],
        )
        drift = GaugeMetricFamily(
            "gpuledger_attribution_drift_ratio",
            "(busy - attributed - in-flight accrued) / busy; should stay near 0",
            labels=["engine"],
        )
        gpus = GaugeMetricFamily("gpuledger_engine_gpus", "GPUs of the engine", labels=["engine"])
        rate = GaugeMetricFamily(
            "gpuledger_engine_hourly_rate_usd", "USD per engine GPU-hour", labels=["engine"]
        )
        inflight = GaugeMetricFamily(
            "gpuledger_engine_in_service_requests",
            "Requests the attribution clock sees in service",
            labels=["engine"],
        )
        for name, (clock, hourly) in list(self.clocks.items()):
            busy.add_metric([name], clock.busy_gpu_seconds)
            attributed.add_metric([name], clock.attributed_gpu_seconds)
            idle.add_metric([name], clock.idle_gpu_seconds)
            drift.add_metric([name], clock.drift_ratio)
            gpus.add_metric([name], float(clock.gpus))
            inflight.add_metric([name], float(clock.in_service))
            if hourly is not None:
                rate.add_metric([name], hourly)
        yield from (busy, attributed, idle, drift, gpus, rate, inflight)


class AttributionMetrics:
    """Exports every tracked clock at scrape time: nothing runs on the request path."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._collector = _Collector()
        registry.register(self._collector)

    def track(self, clock: EngineClock, hourly_rate_usd: float | None = None) -> None:
        """Export `clock` (replacing any clock of the same engine name)."""
        self._collector.clocks[clock.engine] = (clock, hourly_rate_usd)

    def untrack(self, engine: str) -> None:
        self._collector.clocks.pop(engine, None)
