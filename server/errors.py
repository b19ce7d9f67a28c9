"""Every error longserve returns, and the one function that maps exceptions to the
OpenAI error envelope `{"error": {"message", "type", "param", "code"}}`.

`code` is the HTTP status as an integer, as vLLM's own server sends it, so clients that
already talk to vLLM read longserve's errors the same way.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

logger = logging.getLogger(__name__)


class LongserveError(Exception):
    """An error with the status, type and parameter a client should see."""

    status: HTTPStatus = HTTPStatus.BAD_REQUEST
    type: str = "BadRequestError"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}


class ContextLengthExceeded(LongserveError):
    pass


class Unauthorized(LongserveError):
    status = HTTPStatus.UNAUTHORIZED
    type = "AuthenticationError"


class PayloadTooLarge(LongserveError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    type = "RequestTooLargeError"


class UnsupportedMediaType(LongserveError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    type = "UnsupportedMediaTypeError"


class QueueFull(LongserveError):
    status = HTTPStatus.TOO_MANY_REQUESTS
    type = "RateLimitError"


class RateLimited(LongserveError):
    status = HTTPStatus.TOO_MANY_REQUESTS
    type = "RateLimitError"


class ServiceUnavailable(LongserveError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    type = "ServiceUnavailableError"


class QueueTimeout(ServiceUnavailable):
    pass


def count_error(status: int, type_: str) -> None:
    from server import metrics

    metrics.ERRORS.labels(status=str(int(status)), type=type_).inc()


def envelope(message: str, type_: str, status: int, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": int(status)}}


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One readable line per problem: `body.messages: List should have at least 1 item`."""
    lines, params = [], []
    for err in exc.errors():
        if not isinstance(err, dict):
            lines.append(str(err))
            params.append(None)
            continue
        if err.get("type") == "json_invalid":
            ctx, loc = err.get("ctx") or {}, err.get("loc", ())
            at = f" at character {loc[-1]}" if len(loc) > 1 else ""
            lines.append(f"the request body is not valid JSON: {ctx.get('error', 'parse error')}{at}")
            params.append(None)
            continue
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        lines.append(f"{where}: {msg}" if where else msg)
        params.append(where or None)
    return "; ".join(lines) or "invalid request", params[0] if params else None


def error_response(exc: BaseException) -> JSONResponse:
    """Map any exception raised while serving a request to status + OpenAI envelope."""
    from vllm.exceptions import GracefulHTTPError, VLLMError, VLLMServerError
    from vllm.v1.engine.exceptions import EngineDeadError

    headers: dict[str, str] = {}
    if isinstance(exc, LongserveError):
        status, type_, param, message = exc.status, exc.type, exc.param, exc.message
        headers = exc.headers
    elif isinstance(exc, RequestValidationError):
        message, param = _validation_message(exc)
        status, type_ = HTTPStatus.BAD_REQUEST, "BadRequestError"
    elif isinstance(exc, HTTPException):
        status = HTTPStatus(exc.status_code)
        type_, param, message = status.phrase.replace(" ", ""), None, str(exc.detail)
        headers = dict(exc.headers or {})
    elif isinstance(exc, EngineDeadError):
        status, type_, param = HTTPStatus.SERVICE_UNAVAILABLE, "ServiceUnavailableError", None
        message = "the inference engine has stopped; this replica is shutting down"
    elif isinstance(exc, VLLMServerError) or not isinstance(
        exc, (VLLMError, GracefulHTTPError, ValueError, TypeError, OverflowError, NotImplementedError)
    ):
        logger.exception("internal error", exc_info=exc)
        status, type_, param = HTTPStatus.INTERNAL_SERVER_ERROR, "InternalServerError", None
        message = "internal server error; see the server log"
    else:
        # vLLM's own client errors (validation, not found, ...) keep vLLM's mapping.
        from vllm.entrypoints.serve.exception_handling.error_response import (
            create_error_response,
        )

        err = create_error_response(exc).error
        status, type_, param, message = HTTPStatus(err.code), err.type, err.param, err.message
    count_error(status, type_)
    return JSONResponse(
        jsonable_encoder(envelope(message, type_, status, param)),
        status_code=int(status),
        headers=headers,
    )


def install(app) -> None:
    """Route every exception FastAPI sees through `error_response`."""

    async def handler(request, exc):
        return error_response(exc)

    for exc_type in (Exception, RequestValidationError, HTTPException, LongserveError):
        app.add_exception_handler(exc_type, handler)
