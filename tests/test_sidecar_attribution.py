"""Property tests of the GPU-second attribution clock on generated event streams.

Time is a test double here (a settable fake clock): the properties are about how busy time is
split, and a fake clock makes each generated stream exactly reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from sidecar.attribution import AttributionMetrics, EngineClock


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Admit:
    rid: int
    prompt: int
    cached: int
    n: int


@dataclass(frozen=True)
class Progress:
    rid: int
    tokens: int


@dataclass(frozen=True)
class Finish:
    rid: int


@dataclass(frozen=True)
class Tick:
    dt: float


Op = Admit | Progress | Finish | Tick

rids = st.integers(0, 11)
ops = st.one_of(
    st.builds(Admit, rids, st.integers(0, 4000), st.integers(0, 4000), st.integers(1, 4)),
    st.builds(Progress, rids, st.integers(0, 300)),
    st.builds(Finish, rids),
    st.builds(Tick, st.floats(0.0, 5.0, allow_nan=False)),
)
streams = st.lists(ops, max_size=120)
factors = st.floats(0.0, 3.0, allow_nan=False)
gpu_counts = st.integers(1, 8)
caps = st.none() | st.integers(1, 6)  # max_num_seqs: None (no queue model) or a small cap


def run(clock: EngineClock, time: FakeTime, stream: list[Op], tag: str = "") -> dict[str, float]:
    """Apply a stream; returns every finished request's charge (the window is left open)."""
    charges: dict[str, float] = {}
    for op in stream:
        if isinstance(op, Tick):
            time.now += op.dt
        elif isinstance(op, Admit):
            clock.admit(f"{tag}{op.rid}", op.prompt, op.cached, n=op.n)
        elif isinstance(op, Progress):
            clock.progress(f"{tag}{op.rid}", op.tokens)
        else:
            charge = clock.finish(f"{tag}{op.rid}")
            assert charge >= 0.0 and math.isfinite(charge)
            charges[f"{tag}{op.rid}"] = charges.get(f"{tag}{op.rid}", 0.0) + charge
    return charges


def close(clock: EngineClock, time: FakeTime, charges: dict[str, float]) -> None:
    for rid in [*clock._flights, *clock._queue]:
        charges[rid] = charges.get(rid, 0.0) + clock.finish(rid)
    time.now += 7.0  # some idle time after the window closes


def approx(a: float, b: float, rel: float) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b)) + 1e-9


@given(streams, factors, gpu_counts, caps)
def test_conservation_over_a_closed_window(
    stream: list[Op], factor: float, gpus: int, cap: int | None
) -> None:
    time = FakeTime()
    clock = EngineClock("e", gpus=gpus, prefill_cost_factor=factor, clock=time, max_num_seqs=cap)
    charges = run(clock, time, stream)
    # Mid-stream the books balance too: finished + in-flight accrued == busy.
    assert abs(clock.drift_ratio) < 1e-9
    close(clock, time, charges)
    assert approx(sum(charges.values()), clock.busy_gpu_seconds, 1e-3)
    assert approx(clock.attributed_gpu_seconds, clock.busy_gpu_seconds, 1e-3)
    wall = (time.now - 1000.0) * gpus
    assert approx(clock.busy_gpu_seconds + clock.idle_gpu_seconds, wall, 1e-9)


@given(streams, streams, st.integers(0, 5000), st.lists(st.floats(0.001, 3.0), min_size=1))
def test_isolation_lone_request_pays_its_service_time(
    before: list[Op], after: list[Op], prompt: int, gaps: list[float]
) -> None:
    time = FakeTime()
    clock = EngineClock("e", gpus=4, prefill_cost_factor=0.5, clock=time)
    close(clock, time, run(clock, time, before, "b"))
    start = time.now
    clock.admit("lone", prompt)
    for i, gap in enumerate(gaps):
        time.now += gap
        clock.progress("lone", i + 1)
    charge = clock.finish("lone")
    assert approx(charge, (time.now - start) * 4, 1e-9)
    run(clock, time, after, "a")


@given(streams, st.integers(2, 6), st.integers(0, 2000), st.integers(1, 40), factors)
@settings(max_examples=150)
def test_symmetry_identical_concurrent_requests(
    background: list[Op], k: int, prompt: int, tokens: int, factor: float
) -> None:
    time = FakeTime()
    clock = EngineClock("e", gpus=2, prefill_cost_factor=factor, clock=time)
    half = len(background) // 2
    run(clock, time, background[:half], "bg")
    for i in range(k):
        clock.admit(f"twin{i}", prompt)
    time.now += 0.05
    for step in range(1, tokens + 1):
        for i in range(k):
            clock.progress(f"twin{i}", step)
        time.now += 0.01
    run(clock, time, background[half:], "bg")  # other requests come and go meanwhile
    time.now += 0.3
    charges = [clock.finish(f"twin{i}") for i in range(k)]
    assert all(approx(c, charges[0], 0.01) for c in charges)


@given(streams, st.integers(0, 3000), st.integers(1, 50), st.integers(1, 50), factors)
@settings(max_examples=150)
def test_monotonic_in_output_tokens(
    background: list[Op], prompt: int, tokens: int, extra: int, factor: float
) -> None:
    """Same background, same start: a request that streams more tokens never costs less."""

    def charge_for(n_tokens: int) -> float:
        time = FakeTime()
        clock = EngineClock("e", gpus=1, prefill_cost_factor=factor, clock=time)
        clock.admit("x", prompt)
        # The background runs alongside; one token per background op, as in a real stream.
        emitted = 0
        for op in background:
            run(clock, time, [op], "bg")
            if emitted < n_tokens:
                time.now += 0.02
                emitted += 1
                clock.progress("x", emitted)
        while emitted < n_tokens:
            time.now += 0.02
            emitted += 1
            clock.progress("x", emitted)
        return clock.finish("x")

    assert charge_for(tokens + extra) >= charge_for(tokens) * (1 - 1e-12)


@given(streams, factors, caps)
def test_never_negative_nor_nan(stream: list[Op], factor: float, cap: int | None) -> None:
    time = FakeTime()
    clock = EngineClock("e", gpus=3, prefill_cost_factor=factor, clock=time, max_num_seqs=cap)
    run(clock, time, stream)
    for value in (
        clock.busy_gpu_seconds,
        clock.idle_gpu_seconds,
        clock.attributed_gpu_seconds,
        clock.in_flight_accrued_gpu_seconds,
        clock.drift_ratio + 1.0,
    ):
        assert value >= 0.0 and math.isfinite(value)
    for rid in list(clock._flights):
        assert clock.accrued_gpu_seconds(rid) >= 0.0


def test_memory_is_bounded_on_a_long_never_idle_stream() -> None:
    """200k requests, 8 in service at all times, over ~10^8 s of busy time (V re-bases)."""
    time = FakeTime()
    clock = EngineClock("e", gpus=2, prefill_cost_factor=0.05, clock=time)
    total = 0.0
    for i in range(8):
        clock.admit(f"r{i}", 100)
    for i in range(8, 200_008):
        time.now += 500.0
        if i % 2:  # half are streamed (first token seen), half not (prefill deadline)
            clock.progress(f"r{i - 8}", 1)
        total += clock.finish(f"r{i - 8}")
        clock.admit(f"r{i}", 100 + i % 300)
        assert clock.in_flight == 8
        assert clock._v < 2**21  # virtual time is re-based, not left to grow
        assert len(clock._deadlines) <= 2 * 8 + 64 + 1  # stale prefill deadlines are dropped
    for i in range(200_000, 200_008):
        total += clock.finish(f"r{i}")
    assert clock.in_flight == 0
    assert approx(total, clock.busy_gpu_seconds, 1e-6)


def test_prefill_weight_shifts_share_to_the_prefilling_request() -> None:
    """Two requests, one decoding (weight 1), one prefilling 400 uncached tokens at f=0.01
    (weight 4): the prefiller gets 4/5 of the time until its first token."""
    time = FakeTime()
    clock = EngineClock("e", prefill_cost_factor=0.01, clock=time)
    clock.admit("dec", 10)
    time.now += 0.1  # dec's first token after 0.1 s: the clock learns 10 ms per prompt token
    clock.progress("dec", 1)
    clock.admit("pre", 500, cached_tokens=100)  # so its prefill deadline is 1.5 x 4 s away
    time.now += 1.0
    assert clock.accrued_gpu_seconds("pre") == pytest.approx(0.8)
    assert clock.accrued_gpu_seconds("dec") == pytest.approx(0.3)
    clock.progress("pre", 1)
    time.now += 1.0
    assert clock.finish("pre") == pytest.approx(1.3)
    assert clock.finish("dec") == pytest.approx(0.8)


def test_unstreamed_request_stops_weighing_as_prefill_at_its_deadline() -> None:
    """A non-streamed response never reports a first token: its prefill weight ends at
    PREFILL_SLACK x uncached tokens x the prefill time per token, learnt from streamed ones."""
    time = FakeTime()
    clock = EngineClock("e", prefill_cost_factor=0.1, clock=time)
    assert clock.prefill_seconds_per_token is None  # nothing learnt: no deadline yet
    clock.admit("s", 200)
    time.now += 0.4  # streamed: first token after 0.4 s for 200 tokens -> 2 ms per token
    clock.progress("s", 1)
    assert clock.prefill_seconds_per_token == pytest.approx(0.002)
    clock.admit("plain", 100)  # weight 10 until its deadline 1.5 x 100 x 2 ms = 0.3 s later
    time.now += 1.3
    # 0.3 s at 10:1, then 1 s at 1:1.
    assert clock.finish("plain") == pytest.approx(0.3 * 10 / 11 + 0.5)
    time.now += 1.0
    assert clock.finish("s") == pytest.approx(0.4 + 0.3 / 11 + 0.5 + 1.0)
    fixed = EngineClock("f", prefill_cost_factor=0.1, clock=time, prefill_seconds_per_token=0.01)
    assert fixed.prefill_seconds_per_token == 0.01


def test_worked_example_312_in_18_out() -> None:
    """docs/metering.md's worked example, on an H100 engine with f = 0.02."""
    time = FakeTime()
    clock = EngineClock("h100", gpus=1, prefill_cost_factor=0.02, clock=time)
    for i in range(3):  # three requests already decoding
        clock.admit(f"d{i}", 50)
        clock.progress(f"d{i}", 1)
    clock.admit("ex", 312)  # weight 312 x 0.02 = 6.24 while prefilling
    time.now += 0.030  # prefill until its first token: 30 ms
    clock.progress("ex", 1)
    for k in range(2, 19):  # 17 more tokens at 10 ms each, still among 3 other decoders
        time.now += 0.010
        clock.progress("ex", k)
    charge = clock.finish("ex")
    expected = 0.030 * 6.24 / 9.24 + 0.170 * 1 / 4
    assert charge == pytest.approx(expected)
    assert charge == pytest.approx(0.06276, abs=1e-5)


def test_queue_time_is_not_charged_with_max_num_seqs() -> None:
    """With the engine's max_num_seqs known, requests beyond it wait (FIFO, as vLLM's scheduler)
    and pay nothing while they wait; a token from a queued one puts it in service at once."""
    time = FakeTime()
    clock = EngineClock("e", prefill_cost_factor=0.0, clock=time, max_num_seqs=2)
    for rid in ("a", "b", "c", "d"):
        clock.admit(rid, 10)
    assert (clock.in_service, clock.in_flight) == (2, 4)
    time.now += 1.0
    assert clock.accrued_gpu_seconds("c") == 0.0
    assert clock.finish("a") == pytest.approx(0.5)  # c starts now
    time.now += 1.0
    clock.progress("d", 1)  # d was served after all (another client finished?): in service
    time.now += 0.6
    assert clock.finish("b") == pytest.approx(0.5 + 0.5 + 0.2)
    assert clock.finish("c") == pytest.approx(0.5 + 0.2)
    assert clock.finish("d") == pytest.approx(0.2)
    clock.admit("e", 10)
    clock.admit("f", 10)
    clock.admit("g", 10)
    assert clock.finish("g") == 0.0  # cancelled while queued: never served, never charged
    assert clock.in_flight == 2


def test_robust_to_unknown_ids_double_finish_and_duplicates() -> None:
    time = FakeTime()
    clock = EngineClock("e", clock=time)
    clock.progress("ghost", 3)
    assert clock.finish("ghost") == 0.0
    clock.admit("a", 10)
    clock.admit("a", 99999)  # duplicate admission is ignored
    time.now += 2.0
    assert clock.finish("a") == pytest.approx(2.0)
    assert clock.finish("a") == 0.0
    time.now -= 5.0  # a clock going backwards charges nothing
    clock.admit("b", 1)
    time.now += 1.0
    assert clock.finish("b") == 0.0
    with pytest.raises(ValueError):
        EngineClock("e", gpus=0)
    with pytest.raises(ValueError):
        EngineClock("e", prefill_cost_factor=math.nan)


def test_metrics_read_clocks_at_scrape_time() -> None:
    time = FakeTime()
    registry = CollectorRegistry()
    metrics = AttributionMetrics(registry)
    clock = EngineClock("gpu0", gpus=2, clock=time)
    metrics.track(clock, hourly_rate_usd=2.99)
    clock.admit("a", 10)
    time.now += 3.0
    text = generate_latest(registry).decode()
    assert 'gpuledger_engine_busy_gpu_seconds_total{engine="gpu0"} 6.0' in text
    assert 'gpuledger_attributed_gpu_seconds_total{engine="gpu0"} 0.0' in text
    assert 'gpuledger_attribution_drift_ratio{engine="gpu0"} 0.0' in text
    assert 'gpuledger_engine_hourly_rate_usd{engine="gpu0"} 2.99' in text
    clock.finish("a")
    time.now += 1.0
    text = generate_latest(registry).decode()
    assert 'gpuledger_attributed_gpu_seconds_total{engine="gpu0"} 6.0' in text
    assert 'gpuledger_engine_idle_gpu_seconds_total{engine="gpu0"} 2.0' in text
    assert registry.get_sample_value("gpuledger_engine_gpus", {"engine": "gpu0"}) == 2.0
    metrics.untrack("gpu0")
    assert registry.get_sample_value("gpuledger_engine_gpus", {"engine": "gpu0"}) is None
