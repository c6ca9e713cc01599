"""Control plane errors: every 4xx is `{"detail": <str or list>, "code": <str>}`.

Exception tree::

    ControlPlaneError         500 internal_error (base; never raised as such)
    ├── Unauthorized          401 unauthorized      missing or unknown bearer token
    ├── Forbidden             403 forbidden         a valid token of the wrong kind (sidecar on admin)
    ├── NotFound              404 <resource>_not_found
    ├── Conflict              409 <resource>_exists / conflict
    └── Unprocessable         422 invalid_<what>    semantic errors pydantic cannot see

Request validation failures (pydantic) are answered as 422 with code `validation_error` and the
pydantic error list as `detail`. Messages never include a key's secret.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException


class ErrorBody(BaseModel):
    detail: Any
    code: str


class ControlPlaneError(Exception):
    status: int = 500
    code: str = "internal_error"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class Unauthorized(ControlPlaneError):
    status = 401
    code = "unauthorized"


class Forbidden(ControlPlaneError):
    status = 403
    code = "forbidden"


class NotFound(ControlPlaneError):
    status = 404
    code = "not_found"

    def __init__(self, resource: str, ident: str) -> None:
        super().__init__(f"{resource} {ident!r} not found", code=f"{resource}_not_found")


class Conflict(ControlPlaneError):
    status = 409
    code = "conflict"


class Unprocessable(ControlPlaneError):
    status = 422
    code = "unprocessable"


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "unprocessable",
}

# Shared OpenAPI entries so every route documents the uniform error body.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or unknown bearer token"},
    403: {"model": ErrorBody, "description": "Token of the wrong kind"},
    422: {"model": ErrorBody, "description": "Invalid input"},
}


def install_handlers(app: FastAPI) -> None:
    async def _own(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ControlPlaneError)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.detail, "code": exc.code}, exc.status, headers=headers)

    async def _validation(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = jsonable_encoder(exc.errors(), exclude={"input", "ctx", "url"})
        return JSONResponse({"detail": errors, "code": "validation_error"}, 422)

    async def _http(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _STATUS_CODES.get(exc.status_code, "error")
        return JSONResponse(
            {"detail": exc.detail, "code": code}, exc.status_code, headers=exc.headers
        )

    app.add_exception_handler(ControlPlaneError, _own)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
