"""The engine model behind `serving.simulator`: a continuous-batching scheduler like vLLM V1's.

One asyncio task runs the engine loop. Each iteration ("step") it schedules the running requests
(one decode token each, or the next prefill chunk) and then admits waiting requests FIFO while
there are free sequence slots (`max_num_seqs`), token budget (`max_num_batched_tokens`) and KV
blocks. The step then takes

    step_s = (a + b * seqs + c * seqs**2 + prefill_tokens / prefill_rate) / speedup

of wall time, after which every request whose tokens are all computed samples one token. When a
running request needs a KV block and none is free, the most recently admitted request is
preempted (recompute mode: its blocks are freed and it goes back to the front of the queue), as
vLLM does. A request waits in the queue while slots or KV blocks are short.

HTTP handlers never run the model: they `submit()` a `SimRequest` and wait on its `waiter`
future, which the loop resolves once per step in which the request gained tokens. A handler that
falls behind picks up several tokens at once (vLLM merges outputs the same way), so the simulator
costs one wake-up per stream per step, however slow its client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class SimConfig:
    model: str = "llama-3.1-8b"
    max_model_len: int = 8192
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    kv_cache_tokens: int = 434_976
    block_size: int = 16
    step_base_s: float = 0.0060  # a
    step_per_seq_s: float = 0.0  # b
    step_per_seq2_s: float = 0.000_000_29  # c
    prefill_tokens_per_s: float = 45_000.0
    api_overhead_s: float = 0.015
    natural_output_tokens: int = 256
    speedup: float = 1.0
    enable_prefix_caching: bool = True
    prefix_cache_blocks: int = 27_186  # kv_cache_tokens / block_size


# Calibration, all for one H100 80GB serving Llama-3.1-8B in BF16 with vLLM (see the module
# docstring of serving.simulator for the sources and the fit).
PRESETS: dict[str, SimConfig] = {
    "h100-llama8b": SimConfig(),
    # A small engine for tests: few slots and little KV, so queueing and preemption are easy to hit.
    "tiny": SimConfig(
        model="tiny",
        max_model_len=512,
        max_num_seqs=4,
        max_num_batched_tokens=2048,
        kv_cache_tokens=4096,
        api_overhead_s=0.0,
        prefix_cache_blocks=256,
    ),
}


def preset(name: str, **overrides: object) -> SimConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return replace(PRESETS[name], **overrides)  # type: ignore[arg-type]


_ids = itertools.count()


class SimRequest:
    __slots__ = (
        "admitted_at",
        "arrival",
        "blocks",
        "cached_tokens",
        "cancelled",
        "computed",
        "finish_reason",
        "finished",
        "finished_at",
        "first_token_at",
        "id",
        "last_token_at",
        "produced",
        "prompt_tokens",
        "target_tokens",
        "waiter",
    )

    def __init__(self, prompt_tokens: int, max_tokens: int, natural_tokens: int | None) -> None:
        self.id = next(_ids)
        self.prompt_tokens = prompt_tokens
        # `natural_tokens` is where the model would emit EOS (None: ignore_eos).
        stop_early = natural_tokens is not None and natural_tokens < max_tokens
        self.target_tokens = natural_tokens if stop_early and natural_tokens else max_tokens
        self.finish_reason = "stop" if stop_early else "length"
        self.produced = 0
        self.computed = 0
        self.cached_tokens = 0
        self.blocks = 0
        self.arrival = time.monotonic()
        self.admitted_at = 0.0
        self.first_token_at = 0.0
        self.last_token_at = 0.0
        self.finished_at = 0.0
        self.finished = False
        self.cancelled = False
        self.waiter: asyncio.Future[None] | None = None

    @property
    def num_tokens(self) -> int:
        return self.prompt_tokens + self.produced

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class EngineStats:
    """Counters read by the /metrics collector at scrape time (nothing on the hot path)."""

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.success: dict[str, int] = {"stop": 0, "length": 0, "abort": 0}
        self.preemptions = 0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.steps = 0


def _blocks(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


class Scheduler:
    def __init__(
        self,
        config: SimConfig,
        on_token: Callable[[SimRequest, float, float], None] | None = None,
        on_step: Callable[[int], None] | None = None,
        on_finish: Callable[[SimRequest], None] | None = None,
    ) -> None:
        self.config = config
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.total_blocks = config.kv_cache_tokens // config.block_size
        self.used_blocks = 0
        self.stats = EngineStats()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._prefix: OrderedDict[int, None] = OrderedDict()
        self._on_token = on_token
        self._on_step = on_step
        self._on_finish = on_finish

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="sim-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # --- requests ----------------------------------------------------------------------------

    def submit(self, req: SimRequest, prefix_key: bytes = b"") -> None:
        if self.config.enable_prefix_caching and prefix_key:
            req.cached_tokens = self._prefix_lookup(prefix_key, req.prompt_tokens)
        self.stats.prefix_queries += req.prompt_tokens
        self.stats.prefix_hits += req.cached_tokens
        # A full hit still recomputes the last token (vLLM does the same) to get its logits.
        req.computed = min(req.cached_tokens, req.prompt_tokens - 1)
        self.waiting.append(req)
        self._wakeup.set()

    def cancel(self, req: SimRequest) -> None:
        """The client went away: drop the request and free its KV blocks (vLLM's abort)."""
        if req.finished:
            return
        req.cancelled = True
        req.finished = True
        req.finish_reason = "abort"
        if req in self.running:
            self.running.remove(req)
        else:
            with contextlib.suppress(ValueError):
                self.waiting.remove(req)
        self._free(req)
        self.stats.success["abort"] += 1

    def _prefix_lookup(self, key: bytes, prompt_tokens: int) -> int:
        """Hits for the prompt's leading full blocks; `key` stands for the prompt's text.

        Real prefix caching hashes token blocks. Prompts here share a prefix when their text
        does, so block i is identified by a hash of the first i blocks' worth of characters
        (4 chars per token, like the token estimate).
        """
        bs = self.config.block_size
        hits = 0
        cache = self._prefix
        full_blocks = prompt_tokens // bs
        chars = bs * 4
        for i in range(full_blocks):
            h = hash(key[: (i + 1) * chars])
            if h in cache:
                cache.move_to_end(h)
                if hits == i * bs:
                    hits += bs
            else:
                cache[h] = None
                if len(cache) > self.config.prefix_cache_blocks:
                    cache.popitem(last=False)
        return hits

    def kv_usage(self) -> float:
        return self.used_blocks / self.total_blocks if self.total_blocks else 0.0

    # --- the engine loop ---------------------------------------------------------------------

    def _free(self, req: SimRequest) -> None:
        self.used_blocks -= req.blocks
        req.blocks = 0

    def _preempt(self, victim: SimRequest) -> None:
        self.running.remove(victim)
        self._free(victim)
        # Recompute mode: the prompt and the tokens produced so far are prefilled again.
        victim.computed = 0
        self.waiting.appendleft(victim)
        self.stats.preemptions += 1

    def _schedule(self) -> tuple[list[tuple[SimRequest, int]], int]:
        cfg = self.config
        budget = cfg.max_num_batched_tokens
        batch: list[tuple[SimRequest, int]] = []
        prefill = 0
        preempted = False
        for req in list(self.running):
            if req not in self.running or budget <= 0:
                continue
            n = min(req.num_tokens - req.computed, budget)
            need = _blocks(req.computed + n, cfg.block_size) - req.blocks
            while need > self.total_blocks - self.used_blocks:
                preempted = True
                victim = self.running[-1]
                self._preempt(victim)
                if victim is req:
                    break
            if req not in self.running:
                continue
            self.used_blocks += need
            req.blocks += need
            batch.append((req, n))
            budget -= n
            if n > 1:
                prefill += n
        # New requests only when nothing had to be preempted this step (as vLLM V1).
        while not preempted and self.waiting and len(self.running) < cfg.max_num_seqs and budget > 0:
            req = self.waiting[0]
            n = min(req.num_tokens - req.computed, budget)
            need = _blocks(req.computed + n, cfg.block_size)
            if need > self.total_blocks - self.used_blocks:
                break  # waits for KV cache
            self.waiting.popleft()
            if not req.admitted_at:
                req.admitted_at = time.monotonic()
            self.running.append(req)
            self.used_blocks += need
            req.blocks = need
            batch.append((req, n))
            budget -= n
            prefill += n
        return batch, prefill

    def step_seconds(self, seqs: int, prefill_tokens: int) -> float:
        cfg = self.config
        t = cfg.step_base_s + cfg.step_per_seq_s * seqs + cfg.step_per_seq2_s * seqs * seqs
        return (t + prefill_tokens / cfg.prefill_tokens_per_s) / cfg.speedup

    def _complete(self, batch: list[tuple[SimRequest, int]], now: float, step_s: float) -> None:
        stats = self.stats
        for req, n in batch:
            if req.cancelled or req not in self.running:
                continue
            req.computed += n
            if req.computed < req.num_tokens:
                continue  # prefill chunk, no token yet
            req.produced += 1
            stats.generation_tokens += 1
            if req.produced == 1:
                req.first_token_at = now
                stats.prompt_tokens += req.prompt_tokens
            elif self._on_token is not None:
                self._on_token(req, now - req.last_token_at, step_s)
            req.last_token_at = now
            if req.produced >= req.target_tokens:
                req.finished = True
                req.finished_at = now
                self.running.remove(req)
                self._free(req)
                stats.success[req.finish_reason] += 1
                if self._on_finish is not None:
                    self._on_finish(req)
            req.wake()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            if not self.running and not self.waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
                deadline = loop.time()
            batch, prefill = self._schedule()
            if not batch:
                # Everything waiting needs more KV than exists: nothing can ever run it.
                req = self.waiting.popleft()
                self.cancel(req)
                req.wake()
                continue
            step_s = self.step_seconds(len(batch), prefill)
            self.stats.steps += 1
            if self._on_step is not None:
                self._on_step(sum(n for _, n in batch))
            # Absolute deadlines: a late wake-up shortens the next sleep instead of drifting; at
            # most one step of lateness is made up, so a starved loop doesn't run steps in a burst.
            deadline = max(deadline, loop.time() - step_s) + step_s
            await asyncio.sleep(deadline - loop.time())
            self._complete(batch, time.monotonic(), step_s)
