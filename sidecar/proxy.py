"""The hot path: `/v1/*` as a plain ASGI app (no FastAPI request/response objects per call).

Order for chat and completions: authenticate -> feature -> read body (413) -> parse (400) ->
model allowed (403) -> hard guardrails (400) -> guard chain (rate limits, budgets, shedding) ->
upstream. Everything refused before "upstream" never reaches vLLM. Upstream bytes are relayed as
they arrive (`sidecar/relay.py`; `sidecar/streaming.py` meters them on the side); upstream errors
pass through unchanged. Every request that got past authentication ends in exactly one usage record.

When a response completes, its record is durable (the spool's fsync) *before* the final bytes go
out: the stream's `[DONE]` (or its end), or a non-streamed body. A sidecar killed with SIGKILL right
after a client got its whole answer has thus already spooled that answer's record. Content chunks
are not delayed; the last byte pays one group commit. Refusals, cancellations and upstream errors
answered by the sidecar write in the `finally` path (`Ledger` keeps it to one record either way).

Unauthenticated requests are counted in metrics but write no usage record: nobody can be billed
for them, and a flood of bad keys must not flood the usage ledger.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from functools import partial
from typing import Any

import aiohttp
import orjson
from opentelemetry.trace import Span, SpanKind

from gpuledger.contracts import KeyPolicy, UsageRecord
from sidecar.asgi import (
    JSON,
    REQUEST_ID,
    ClientGone,
    DisconnectWatch,
    Receive,
    Scope,
    Send,
    fanout_of,
    header,
    model_of,
    parse_object,
    read_body,
    send_bytes,
    send_error,
)
from sidecar.auth import authenticate, check_model, model_allowed, resolve_feature
from sidecar.deps import Components
from sidecar.errors import (
    InvalidRequest,
    SidecarError,
    UpstreamUnavailable,
)
from sidecar.guardrails import (
    BLOCKED_PATHS,
    ENDPOINTS,
    Endpoint,
    apply_output_cap,
    check_prompt_cap,
    estimate_prompt_tokens,
)
from sidecar.hooks import Admission, RequestContext
from sidecar.metering import Ledger, Outcome, new_request_id
from sidecar.prefix_advisor import prompt_head
from sidecar.relay import Relay, unavailable
from sidecar.shedding import soft_guardrails
from sidecar.tracing import parent_context

log = logging.getLogger(__name__)


class Proxy:
    """ASGI app mounted on `/v1/{path}`."""

    def __init__(self, components: Components) -> None:
        self.c = components
        self._relay = Relay(components)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/v1/models":
            await self._models(scope, send)
        else:
            endpoint = ENDPOINTS.get(path) if method == "POST" else None
            await self._request(scope, receive, send, endpoint)

    def _authenticate(self, headers: dict[bytes, bytes]) -> KeyPolicy:
        if not self.c.policy_store.loaded:
            raise UpstreamUnavailable("No policy is loaded yet.", code="policy_unavailable")
        return authenticate(self.c.policy_store.current, header(headers, b"authorization"))

    def _unauthenticated(self, exc: SidecarError) -> None:
        self.c.metrics.requests.labels("other", "other", f"rejected:{exc.code}").inc()

    async def _request(
        self, scope: Scope, receive: Receive, send: Send, endpoint: Endpoint | None
    ) -> None:
        c = self.c
        op = endpoint.op if endpoint is not None else "other"
        t0 = time.monotonic()
        started_at = datetime.now(UTC)
        request_id = new_request_id()
        headers = dict(scope["headers"])
        extra: dict[str, str] = {REQUEST_ID: request_id}
        try:
            key = self._authenticate(headers)
        except SidecarError as exc:
            self._unauthenticated(exc)
            await send_error(send, exc, extra)
            return
        policy = c.policy_store.current
        feature_name, model, engine = key.default_feature, "unknown", c.default_engine
        actions: list[str] = []
        outcome = Outcome()
        admissions: list[Admission] = []
        try:
            feature = resolve_feature(policy, key, header(headers, b"x-feature"))
            feature_name = feature.name
            if scope["path"] in BLOCKED_PATHS:
                raise InvalidRequest(
                    f"{scope['path']} is not available through the sidecar.",
                    code="unsupported_endpoint",
                    status=404,
                )
            raw = await read_body(
                receive, c.settings.max_body_bytes, header(headers, b"content-length")
            )
            if endpoint is not None or raw[:1] == b"{":
                body = parse_object(raw)
                model = model_of(body) if endpoint else str(body.get("model") or "unknown")
            else:
                body = {}
            if model != "unknown":
                check_model(key, model)
            engine = c.engine_for(model)
            max_out, prompt_est, drop_usage = 0, estimate_prompt_tokens(raw), False
            stream = body.get("stream") is True
            if endpoint is not None:
                max_out = apply_output_cap(
                    body, feature, endpoint, actions=actions, response_headers=extra
                )
                exact = await check_prompt_cap(c.http(), engine.url, body, raw, feature, endpoint)
                prompt_est = exact or prompt_est
                if stream and endpoint.stream_usage_option:
                    options = body.get("stream_options")
                    if not (isinstance(options, dict) and options.get("include_usage")):
                        options = dict(options) if isinstance(options, dict) else {}
                        options["include_usage"] = True
                        body["stream_options"] = options
                        drop_usage = True
                raw = orjson.dumps(body)
            ctx = RequestContext(
                request_id=request_id,
                key=key,
                feature=feature,
                model=model,
                engine=engine.name,
                stream=stream,
                prompt_tokens_estimate=prompt_est,
                max_output_tokens=max_out,
                started_at=started_at,
                response_headers=extra,
                guardrail_actions=actions,
            )
            for guard in c.guards:
                try:
                    admission = await guard.admit(ctx)
                except SidecarError:
                    raise
                except Exception:  # a broken guard must not leak the others' reservations
                    log.exception("guard %s failed", getattr(guard, "name", guard))
                    raise SidecarError("The sidecar failed to admit the request.") from None
                if admission is not None:
                    admissions.append(admission)
        except (SidecarError, ClientGone) as exc:
            await _settle_all(admissions, None)
            if isinstance(exc, ClientGone):
                outcome.status = "cancelled"
            else:
                outcome.status = f"rejected:{exc.code}"
                if exc.tier is not None:
                    c.metrics.rejections.labels(
                        policy.feature_label(feature_name), exc.tier, exc.code
                    ).inc()
                await send_error(send, exc, extra)
            refused = c.metering.build(
                request_id=request_id, policy=policy, key_id=key.id, feature=feature_name,
                model=model, engine=engine, started_at=started_at, t0=t0, outcome=outcome,
                actions=actions, span=self._span(scope, headers, op, model), admitted=False,
            )  # fmt: skip
            await c.metering.write(refused)
            return

        span = self._span(scope, headers, op, model)
        if op != "other":
            span.set_attribute("gen_ai.operation.name", op)
            span.set_attribute("gen_ai.request.max_tokens", max_out // fanout_of(body))
        in_flight = c.metrics.in_flight.labels(policy.feature_label(feature_name))
        in_flight.inc()
        c.metering.clock(engine).admit(request_id, prompt_est, 0, n=fanout_of(body))
        if op != "other":  # prefix advisor (issue 7): hashes only the prompt's first bytes
            soft = soft_guardrails(c.settings, c.policy_store, c.registry)
            outcome.opening = soft.advisor.observe(
                policy.feature_label(feature_name),
                prompt_head(body, soft.advisor.head_bytes),
                prompt_est,
            )
        ledger = Ledger(
            c.metering,
            partial(
                c.metering.build, request_id=request_id, policy=policy, key_id=key.id,
                feature=feature_name, model=model, engine=engine, started_at=started_at, t0=t0,
                outcome=outcome, actions=actions, span=span, admitted=True,
            ),
            outcome, actions, op=op, model=model, prompt_est=prompt_est,
        )  # fmt: skip
        task = asyncio.current_task()
        watch = DisconnectWatch(task)
        watcher = asyncio.ensure_future(receive())
        watcher.add_done_callback(watch)
        try:
            await self._relay(
                scope, send, raw, span, headers, engine, extra, outcome, watch, ledger,
                request_id=request_id, t0=t0, drop_usage=drop_usage, stream=stream, op=op,
                fanout=fanout_of(body),
            )  # fmt: skip
        except asyncio.CancelledError:
            if not watch.gone or task is None:
                raise  # not ours: the server is shutting down
            task.uncancel()  # our own abort of the upstream call (see DisconnectWatch)
            outcome.status = "cancelled"  # the ledger estimates its tokens
        finally:
            watch.finished = True
            watcher.cancel()
            in_flight.dec()
            # Already written if the response completed; otherwise (cancelled, error) now.
            record = await ledger.write()
            await _settle_all(admissions, record)

    def _span(self, scope: Scope, headers: dict[bytes, bytes], op: str, model: str) -> Span:
        """The request's span, child of the caller's W3C trace context if it sent one."""
        span = self.c.tracer.start_span(
            f"{op} {model}" if op != "other" else f"{scope['method']} {scope['path']}",
            context=parent_context(header(headers, b"traceparent"), header(headers, b"tracestate")),
            kind=SpanKind.SERVER,
        )
        span.set_attribute("gen_ai.request.model", model)
        return span

    async def _models(self, scope: Scope, send: Send) -> None:
        """vLLM's model list, filtered to what the key may use (and merged across engines)."""
        c = self.c
        headers = dict(scope["headers"])
        extra: dict[str, str] = {}
        try:
            key = self._authenticate(headers)
        except SidecarError as exc:
            self._unauthenticated(exc)
            await send_error(send, exc, extra)
            return
        engines = c.policy_store.current.snapshot.engines or [c.default_engine]
        urls = dict.fromkeys(e.url.rstrip("/") for e in engines)
        seen: dict[str, Any] = {}
        reached = False
        for url in urls:
            try:
                async with c.http().get(f"{url}/v1/models") as resp:
                    if resp.status != 200:
                        continue
                    listing = orjson.loads(await resp.read())
                    reached = True
            except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
                continue
            for item in listing.get("data", []):
                model_id = item.get("id")
                if isinstance(model_id, str) and model_allowed(key, model_id):
                    seen.setdefault(model_id, item)
        if not reached:
            await send_error(send, unavailable("engine"), extra)
            return
        body = orjson.dumps({"object": "list", "data": list(seen.values())})
        await send_bytes(send, 200, body, JSON, extra)


async def _settle_all(admissions: list[Admission], record: UsageRecord | None) -> None:
    """Settle every admission once; one failing must not keep the others from settling."""
    for admission in admissions:
        try:
            await admission.settle(record)
        except Exception:
            log.exception("settling an admission failed")
