"""Errors the sidecar answers itself, always in the OpenAI error envelope.

Exception tree::

    SidecarError                  status, OpenAI `type`, `code`, `param`, extra headers
    ├── InvalidRequest            400 invalid_request_error (malformed JSON, bad fields)
    │   └── GuardrailRejection    400 a hard guardrail refused the request (max_tokens_exceeded, ...)
    ├── AuthenticationFailed      401 invalid_api_key
    ├── PermissionDenied          403 feature_not_allowed / model_not_allowed / key_disabled
    ├── PayloadTooLarge           413 request_too_large
    ├── RateLimited               429 rate_limit_exceeded / budget_exceeded / overloaded (+ Retry-After)
    └── UpstreamUnavailable       502/503/504 upstream_unavailable / upstream_timeout

Messages never contain a key's secret: they name the key by id at most.
"""

from __future__ import annotations

from typing import Any

import orjson


class SidecarError(Exception):
    status: int = 500
    type: str = "internal_error"
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.param = param
        self.headers = headers or {}

    @property
    def tier(self) -> str | None:
        """Guardrail tier for metrics (`hard`, `medium`, `soft`), or None if not a guardrail."""
        return None

    def envelope(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        return orjson.dumps(self.envelope())


class InvalidRequest(SidecarError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class GuardrailRejection(InvalidRequest):
    @property
    def tier(self) -> str | None:
        return "hard"


class AuthenticationFailed(SidecarError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(SidecarError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class PayloadTooLarge(SidecarError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"

    @property
    def tier(self) -> str | None:
        return "hard"


class RateLimited(SidecarError):
    """429. `code` is rate_limit_exceeded (medium tier), budget_exceeded or overloaded (soft)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after_s = retry_after_s
        self.headers.setdefault("retry-after", str(max(1, int(retry_after_s + 0.999))))

    @property
    def tier(self) -> str | None:
        return "soft" if self.code == "overloaded" else "medium"


class UpstreamUnavailable(SidecarError):
    status = 503
    type = "api_error"
    code = "upstream_unavailable"
