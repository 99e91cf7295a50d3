"""Every error as OpenAI's error object, ``{"error": {"message", "type", "param", "code"}}``.

Clients (the ``openai`` package among them) read that shape to raise a typed exception, so a
user mistake must never arrive as FastAPI's default 422 list or a 500 page. User errors are
answered here and logged as one line; only a bug in alignspec reaches the generic handler,
which answers 500 without a traceback for the client and logs one for the operator.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from alignspec.errors import AlignspecError

log = logging.getLogger("alignspec.server")

TYPES = {400: "invalid_request_error", 404: "not_found_error", 503: "service_unavailable"}


class APIError(Exception):
    """An error the server answers with its own status and OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})


def error_body(status: int, message: str, param: str | None = None, code: str | None = None):
    """The OpenAI error object (also sent as an SSE event when a stream fails)."""
    kind = TYPES.get(status, "invalid_request_error" if status < 500 else "internal_server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(error: APIError, request: Request | None = None) -> JSONResponse:
    if request is not None:
        request.app.state.metrics.request_error(error.status)
        log.info("%s %s -> %d: %s", request.method, request.url.path, error.status, error.message)
    body = error_body(error.status, error.message, error.param, error.code)
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def _union_tag(part: str) -> bool:
    """Pydantic names the union member it tried (``str``, ``list[int]``); no field does."""
    return "[" in part or part in {"str", "int", "float", "bool", "dict", "list", "none"}


def validation_error(exc: RequestValidationError) -> APIError:
    """The first pydantic error as one sentence naming the field (as ``param``)."""
    first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and not _union_tag(str(p))]
    param = ".".join(loc) or None
    kind = first.get("type", "")
    if kind == "json_invalid":
        return APIError(400, "the request body is not valid JSON", code="invalid_json")
    if kind == "missing" and not loc:
        return APIError(400, "the request needs a JSON body")
    if kind == "extra_forbidden":
        return APIError(400, f"unrecognized request argument supplied: {param}", param=param)
    if kind == "missing":
        return APIError(400, f"missing required parameter: {param}", param=param)
    if not loc:
        return APIError(400, "the request body must be a JSON object")
    return APIError(400, f"invalid value for {param}: {first.get('msg', 'invalid')}", param=param)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into an OpenAI error object."""

    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc), request)

    @app.exception_handler(AlignspecError)
    async def _user(request: Request, exc: AlignspecError) -> JSONResponse:
        return error_response(APIError(400, str(exc)), request)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(APIError(exc.status_code, str(exc.detail)), request)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        request.app.state.metrics.request_error(500)
        return JSONResponse(error_body(500, "internal server error"), status_code=500)
