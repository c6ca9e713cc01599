"""An OpenAI-compatible engine simulator that behaves like vLLM on a GPU, for load tests.

`python -m serving.simulator --port 8001 [--preset h100-llama8b] [--speedup 1.0]`

It answers `/v1/chat/completions`, `/v1/completions` (streamed in vLLM's exact SSE format, or
not), `/v1/models`, `/tokenize`, `/health` and `/metrics` (vLLM's metric names, labels
`engine="0", model_name=...`), with the timing of continuous batching (see
`serving.simulator_core`). Tokens are not real: prompts count ~4 characters per token and the
output is filler words, one token each. It lets the sidecar be load-tested at GPU speed on a
machine without one; functional tests keep using the real vLLM engine.

Calibration of the `h100-llama8b` preset (one H100 80GB, Llama-3.1-8B, BF16, vLLM 0.26):
- Measured on the lent H100 (/work/shared/notes/vllm-gpu.md, streamed chat, ~210-token prompts,
  256 output tokens): 163 tok/s for one stream (6.05 ms per token after a 28 ms TTFT),
  8,201 tok/s at 64 streams (7.2 ms per token), 9,790 tok/s at 256 streams of which ~192 were in
  flight on average (~18.5 ms per token), TTFT p50 28 / 68 / 167 ms at 1 / 16 / 64 streams,
  KV cache 434,976 tokens at 0.85 memory utilisation.
- Step time a + b*seqs + c*seqs^2: a = 6.0 ms is the single-stream step (reading 15 GiB of
  weights at H100's 3.35 TB/s takes ~4.8 ms of it). The measured step grows faster than linearly
  (7.2 ms at 64, 18.5 ms at ~192), which a linear b cannot fit, so b = 0 and c = 0.29 us: 7.2 ms
  at 64 seqs, 16.7 ms at 192, 25 ms at 256 (10,200 tok/s of pure decode; measured 9,790).
- Prefill 45,000 tok/s: what makes 64 simultaneous 210-token prompts reach a median TTFT of
  ~167 ms; public figures for 8B on H100 give the same order (~14 GFLOP per token against
  989 TFLOP/s dense BF16 is ~70k tok/s at full utilisation).
- api_overhead 15 ms: the rest of the 28 ms single-stream TTFT (HTTP, chat template and
  tokenization in vLLM's API server) after one 6 ms step and 4.7 ms of prefill.
- max_num_seqs 256 and max_num_batched_tokens 8192: vLLM's defaults for its OpenAI server.
`--speedup X` divides every modelled duration by X (0.5 runs the engine at half speed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import time
from dataclasses import replace
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from serving.simulator_core import PRESETS, Scheduler, SimConfig, SimRequest, preset

_WORDS = [" lorem", " ipsum", " dolor", " sit", " amet", " the", " GPU", " ledger", " token", " of"]
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
_ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
_ITER_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
_FINGERPRINT = "vllm-simulator"
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


def estimate_tokens(text: str) -> int:
    """~4 characters per token, Llama-3's average on English text."""
    return max(1, (len(text) + 3) // 4)


def _text(start: int, end: int) -> str:
    return "".join(_WORDS[i % len(_WORDS)] for i in range(start, end))


class SimError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def response(self) -> web.Response:
        kind = {400: "BadRequestError", 404: "NotFoundError"}.get(self.status, "InternalServerError")
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.status}}
        return web.Response(status=self.status, body=orjson.dumps(body), content_type="application/json")


class _Gauges(Collector):
    """Gauges and counters read from the scheduler at scrape time, so serving costs nothing."""

    def __init__(self, sched: Scheduler, model: str) -> None:
        self._s, self._labels = sched, ["0", model]

    def collect(self) -> Any:
        s, st, lv = self._s, self._s.stats, self._labels
        names = ["engine", "model_name"]
        for name, doc, value in (
            ("vllm:num_requests_running", "Requests in model execution batches.", len(s.running)),
            ("vllm:num_requests_waiting", "Requests waiting to be processed.", len(s.waiting)),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", s.kv_usage()),
        ):
            g = GaugeMetricFamily(name, doc, labels=names)
            g.add_metric(lv, value)
            yield g
        for name, doc, value in (
            ("vllm:prompt_tokens", "Number of prefill tokens processed.", st.prompt_tokens),
            ("vllm:generation_tokens", "Number of generation tokens processed.", st.generation_tokens),
            ("vllm:num_preemptions", "Cumulative number of preemption from the engine.", st.preemptions),
            ("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.", st.prefix_queries),
            ("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", st.prefix_hits),
        ):
            c = CounterMetricFamily(name, doc, labels=names)
            c.add_metric(lv, value)
            yield c
        c = CounterMetricFamily(
            "vllm:request_success", "Count of successfully processed requests.",
            labels=["engine", "finished_reason", "model_name"],
        )  # fmt: skip
        for reason in ("stop", "length", "abort"):
            c.add_metric(["0", reason, lv[1]], st.success[reason])
        yield c


class Simulator:
    """The aiohttp app: request parsing, response formats and metrics around a `Scheduler`."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.registry = CollectorRegistry()
        lv = {"engine": "0", "model_name": config.model}
        names = ["engine", "model_name"]

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Any:
            return Histogram(name, doc, names, registry=self.registry, buckets=buckets).labels(**lv)

        self._ttft = hist("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", _TTFT_BUCKETS)
        self._itl = hist("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", _ITL_BUCKETS)
        self._tpot = hist("vllm:request_time_per_output_token_seconds", "Histogram of time_per_output_token_seconds per request.", _ITL_BUCKETS)
        self._e2e = hist("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", _LATENCY_BUCKETS)
        self._queue = hist("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", _LATENCY_BUCKETS)
        self._prefill = hist("vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.", _LATENCY_BUCKETS)
        self._decode = hist("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.", _LATENCY_BUCKETS)
        self._iter = hist("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", _ITER_BUCKETS)
        self.scheduler = Scheduler(
            config,
            on_token=lambda _r, itl, _s: self._itl.observe(itl),
            on_step=self._iter.observe,
            on_finish=self._finished,
        )
        self.registry.register(_Gauges(self.scheduler, config.model))
        self._created = int(time.time())

    def _finished(self, r: SimRequest) -> None:
        self._ttft.observe(r.first_token_at - r.arrival)
        self._e2e.observe(r.finished_at - r.arrival)
        self._queue.observe(r.admitted_at - r.arrival)
        self._prefill.observe(r.first_token_at - r.admitted_at)
        self._decode.observe(r.finished_at - r.first_token_at)
        if r.produced > 1:
            self._tpot.observe((r.finished_at - r.first_token_at) / (r.produced - 1))

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_get("/health", self._health)
        app.router.add_get("/version", self._version)
        app.router.add_get("/metrics", self._metrics)
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _startup(self, _app: web.Application) -> None:
        self.scheduler.start()

    async def _cleanup(self, _app: web.Application) -> None:
        await self.scheduler.stop()

    # --- small endpoints ---------------------------------------------------------------------

    async def _health(self, _r: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _version(self, _r: web.Request) -> web.Response:
        return web.json_response({"version": "gpuledger-simulator"})

    async def _metrics(self, _r: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type="text/plain", charset="utf-8")

    async def _models(self, _r: web.Request) -> web.Response:
        m = self.config.model
        card = {"id": m, "object": "model", "created": self._created, "owned_by": "vllm", "root": m,
                "parent": None, "max_model_len": self.config.max_model_len}  # fmt: skip
        return web.json_response({"object": "list", "data": [card]})

    async def _tokenize(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
            n = self._prompt_tokens(body, chat="messages" in body)[0]
        except SimError as exc:
            return exc.response()
        return web.json_response({"count": n, "max_model_len": self.config.max_model_len,
                                  "tokens": list(range(1, n + 1)), "token_strs": None})  # fmt: skip

    # --- parsing -----------------------------------------------------------------------------

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise SimError(400, f"Invalid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise SimError(400, "The request body must be a JSON object")
        return body

    def _prompt_tokens(self, body: dict[str, Any], chat: bool) -> tuple[int, bytes]:
        """(token count, text key for prefix caching)."""
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise SimError(400, "messages: Field required", "messages")
            parts: list[str] = []
            for m in messages:
                content = m.get("content") if isinstance(m, dict) else None
                if isinstance(content, list):
                    content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
                parts.append(f"<|{m.get('role', 'user') if isinstance(m, dict) else 'user'}|>{content or ''}")
            text = "".join(parts)
            # Llama-3's chat template: BOS, ~5 header tokens per message, the assistant header.
            return 1 + 5 * len(messages) + 4 + estimate_tokens(text), text.encode()
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return len(prompt), orjson.dumps(prompt)
        if not isinstance(prompt, str):
            raise SimError(400, "prompt must be a string or a list of token ids", "prompt")
        return 1 + estimate_tokens(prompt), prompt.encode()

    def _plan(self, body: dict[str, Any], chat: bool) -> tuple[SimRequest, bytes]:
        cfg = self.config
        model = body.get("model", cfg.model)
        if model != cfg.model:
            raise SimError(404, f"The model `{model}` does not exist.", "model")
        if body.get("n", 1) != 1:
            raise SimError(400, "the simulator supports n=1 only", "n")
        prompt_tokens, key = self._prompt_tokens(body, chat)
        limit = cfg.max_model_len
        if prompt_tokens >= limit:
            raise SimError(400, f"This model's maximum context length is {limit} tokens. However, your "
                           f"request has {prompt_tokens} input tokens. Please reduce the length of the "
                           "input messages.", "messages" if chat else "prompt")  # fmt: skip
        max_tokens = body.get("max_completion_tokens") if chat else None
        max_tokens = max_tokens if max_tokens is not None else body.get("max_tokens")
        if max_tokens is None:
            max_tokens = limit - prompt_tokens if chat else 16
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise SimError(400, f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens")
        if max_tokens > limit:
            raise SimError(400, f"max_tokens={max_tokens} cannot be greater than max_model_len={limit}. "
                           f"Please request fewer output tokens. (parameter=max_tokens, value={max_tokens})",
                           "max_tokens")  # fmt: skip
        # Prompt + max_tokens over the context is not an error in vLLM: output is capped.
        max_tokens = min(max_tokens, limit - prompt_tokens)
        natural = None if body.get("ignore_eos") else cfg.natural_output_tokens
        return SimRequest(prompt_tokens, max_tokens, natural), key

    # --- generation --------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = await self._body(request)
            req, key = self._plan(body, chat)
        except SimError as exc:
            return exc.response()
        if self.config.api_overhead_s:
            await asyncio.sleep(self.config.api_overhead_s / self.config.speedup)
        self.scheduler.submit(req, key)
        try:
            if body.get("stream"):
                opts = body.get("stream_options") or {}
                return await self._stream(request, req, chat, bool(opts.get("include_usage")))
            await self._wait(req, 0, final=True)
            return self._whole(req, chat)
        except SimError as exc:
            return exc.response()
        finally:
            # The client went away (or the handler failed): free the slot like vLLM's abort.
            self.scheduler.cancel(req)

    async def _wait(self, req: SimRequest, sent: int, final: bool = False) -> None:
        while not req.finished and (final or req.produced <= sent):
            req.waiter = asyncio.get_running_loop().create_future()
            await req.waiter
        req.waiter = None

    def _usage(self, req: SimRequest, stream: bool = False) -> dict[str, Any]:
        usage: dict[str, Any] = {"prompt_tokens": req.prompt_tokens, "completion_tokens": req.produced,
                                 "total_tokens": req.prompt_tokens + req.produced}  # fmt: skip
        if not stream:
            usage |= {"prompt_tokens_details": None, "completion_tokens_details": None}
        return usage

    @staticmethod
    def _per_request_metrics(req: SimRequest) -> dict[str, float]:
        """What vLLM adds with `--enable-per-request-metrics` (the profiles turn it on)."""
        gen = (req.finished_at - req.first_token_at) * 1000
        return {"time_to_first_token_ms": (req.first_token_at - req.arrival) * 1000,
                "generation_time_ms": gen,
                "queue_time_ms": (req.admitted_at - req.arrival) * 1000,
                "mean_itl_ms": gen / (req.produced - 1) if req.produced > 1 else 0.0,
                "tokens_per_second": 1000 * req.produced / gen if gen else 0.0}  # fmt: skip

    def _whole(self, req: SimRequest, chat: bool) -> web.Response:
        if req.cancelled:
            raise SimError(500, "request aborted: it needs more KV cache than the engine has")
        rid, created, text = os.urandom(8).hex(), int(time.time()), _text(0, req.produced)
        choice: dict[str, Any]
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": None,
                       "audio": None, "function_call": None, "tool_calls": [], "reasoning_content": None}  # fmt: skip
            choice = {"index": 0, "message": message, "logprobs": None,
                      "finish_reason": req.finish_reason, "stop_reason": None}  # fmt: skip
            obj, prefix = "chat.completion", "chatcmpl-"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": req.finish_reason,
                      "stop_reason": None, "prompt_logprobs": None}  # fmt: skip
            obj, prefix = "text_completion", "cmpl-"
        out = {"id": prefix + rid, "object": obj, "created": created, "model": self.config.model,
               "choices": [choice], "service_tier": None, "system_fingerprint": _FINGERPRINT,
               "usage": self._usage(req), "prompt_logprobs": None, "kv_transfer_params": None,
               "metrics": self._per_request_metrics(req)}  # fmt: skip
        return web.Response(body=orjson.dumps(out), content_type="application/json")

    async def _stream(
        self, request: web.Request, req: SimRequest, chat: bool, include_usage: bool
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers=_SSE_HEADERS)
        await resp.prepare(request)
        rid, created, model = os.urandom(8).hex(), int(time.time()), orjson.dumps(self.config.model)
        obj = b"chat.completion.chunk" if chat else b"text_completion"
        head = (b'data: {"id":"' + (b"chatcmpl-" if chat else b"cmpl-") + rid.encode() + b'","object":"'
                + obj + b'","created":' + str(created).encode() + b',"model":' + model + b',"choices":')  # fmt: skip
        if chat:
            open_, close = b'[{"index":0,"delta":{"content":', b'},"logprobs":null,"finish_reason":'
        else:
            open_, close = b'[{"index":0,"text":', b',"logprobs":null,"finish_reason":'
        end = b',"token_ids":null}]}\n\n'
        sent = 0
        while True:
            await self._wait(req, sent)
            if req.cancelled:
                break
            out = []
            if chat and sent == 0:
                out.append(head + b'[{"index":0,"delta":{"role":"assistant","content":""},'
                           b'"logprobs":null,"finish_reason":null}],"prompt_token_ids":null,'
                           b'"prompt_text":null}\n\n')  # fmt: skip
            done = req.finished
            tail = b'"' + req.finish_reason.encode() + b'","stop_reason":null' + end if done else b"null" + end
            out.append(head + open_ + orjson.dumps(_text(sent, req.produced)) + close + tail)
            sent = req.produced
            if done:
                if include_usage:
                    extra = {"usage": self._usage(req, stream=True), "system_fingerprint": _FINGERPRINT,
                             "metrics": self._per_request_metrics(req)}  # fmt: skip
                    out.append(head + b"[]," + orjson.dumps(extra)[1:] + b"\n\n")
                out.append(b"data: [DONE]\n\n")
            await resp.write(b"".join(out))
            if done:
                break
        await resp.write_eof()
        return resp


def create_app(config: SimConfig) -> web.Application:
    return Simulator(config).app()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m serving.simulator", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--preset", default="h100-llama8b", choices=sorted(PRESETS))
    p.add_argument("--speedup", type=float, help="divide every modelled duration by this")
    p.add_argument("--served-model-name", dest="model")
    p.add_argument("--max-num-seqs", type=int)
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--kv-cache-tokens", type=int)
    p.add_argument("--natural-output-tokens", type=int, help="where EOS falls unless ignore_eos")
    p.add_argument("--api-overhead-s", type=float)
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> SimConfig:
    keys = ("speedup", "model", "max_num_seqs", "max_model_len", "kv_cache_tokens",
            "natural_output_tokens", "api_overhead_s")  # fmt: skip
    overrides = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    cfg = preset(args.preset)
    cfg = replace(cfg, **overrides)
    if "kv_cache_tokens" in overrides:
        cfg = replace(cfg, prefix_cache_blocks=cfg.kv_cache_tokens // cfg.block_size)
    return cfg


async def _serve(cfg: SimConfig, host: str, port: int) -> None:
    runner = web.AppRunner(create_app(cfg), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=4096).start()
    print(f"simulator ({cfg.model}) on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    cfg = config_from_args(args)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency of uvicorn[standard]
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(_serve(cfg, args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
