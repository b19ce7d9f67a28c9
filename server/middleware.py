"""ASGI middleware for what every route shares: API-key auth and the body size limit.

They answer with `errors.error_response` themselves, because they run outside FastAPI's
exception handlers.
"""

from __future__ import annotations

import secrets

from server.errors import PayloadTooLarge, Unauthorized, error_response

OPEN_PATHS = frozenset({"/health", "/ready"})


class APIKeyMiddleware:
    """Every route but /health and /ready needs `Authorization: Bearer <key>`."""

    def __init__(self, app, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode()

    def _authorized(self, scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                # compare_digest: no timing side channel on the key's content
                return scheme.lower() == b"bearer" and secrets.compare_digest(
                    token.strip(), self._key)
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._authorized(scope):
            return await self.app(scope, receive, send)
        await error_response(Unauthorized(
            "missing or invalid API key: send `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        ))(scope, receive, send)


class BodySizeLimitMiddleware:
    """413 for a body over `max_bytes`: at once from Content-Length, or as soon as a
    chunked body grows past the limit."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"request body exceeds {self.max_bytes} bytes (--max-request-bytes); send "
            "less, or raise the limit on the server")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                return await error_response(self._too_large())(scope, receive, send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._too_large()  # mapped by the app's exception handlers
            return message

        await self.app(scope, counting_receive, send)
