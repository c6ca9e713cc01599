"""The extension points of the request path.

The proxy builds one `RequestContext` per request after authentication and the hard guardrails.
Every `Guard` in the app's guard chain is then asked to admit it, in order (rate limits, budget
leases, load shedding). A guard refuses by raising a `sidecar.errors.SidecarError` (usually
`RateLimited`); it admits by returning an `Admission` (or None when it has nothing to settle).
When the request ends, however it ends, every admission is settled exactly once with the final
usage record, so reservations become real charges and concurrency slots are released. If a later
guard refuses, the admissions already granted are released with `record=None` (they consume no
quota).

Guards run on the hot path: the in-process ones must not do network I/O in `admit`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from gpuledger.contracts import FeaturePolicy, KeyPolicy, UsageRecord


@dataclass(slots=True)
class RequestContext:
    request_id: str
    key: KeyPolicy
    feature: FeaturePolicy
    model: str
    engine: str
    stream: bool
    prompt_tokens_estimate: int
    max_output_tokens: int = field(
        metadata={"doc": "max_tokens after guardrails, times n: the most this request can emit"}
    )
    started_at: datetime
    # Headers every guard may add to the response (x-ratelimit-*, x-gpuledger-*).
    response_headers: dict[str, str] = field(default_factory=dict)
    guardrail_actions: list[str] = field(default_factory=list)

    @property
    def reserved_tokens(self) -> int:
        return self.prompt_tokens_estimate + self.max_output_tokens


class Admission(Protocol):
    async def settle(self, record: UsageRecord | None) -> None:
        """Called once when the request ends; `None` means it never ran (release, charge nothing)."""


class Guard(Protocol):
    name: str

    async def admit(self, ctx: RequestContext) -> Admission | None:
        """Admit the request or raise a SidecarError."""
