"""ASGI middleware for what every route shares: API-key auth and the body size limit.

They answer with `errors.error_response` themselves, because they run outside FastAPI's
exception handlers.
"""

from __future__ import annotations

import secrets

from server.errors import PayloadTooLarge, Unauthorized, error_response
from server.ratelimit import key_id

OPEN_PATHS = frozenset({"/health", "/ready"})


class APIKeyMiddleware:
    """Every route but /health and /ready needs `Authorization: Bearer <key>`, one of the
    server's keys. The key's id (a hash: server.ratelimit.key_id) goes to
    `request.state.api_key_id`, which rate limits are counted by."""

    def __init__(self, app, api_keys: list[str]) -> None:
        self.app = app
        self._keys = [(key.encode(), key_id(key)) for key in api_keys]

    def _key_id(self, scope) -> str | None:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() != b"bearer":
                    return None
                # compare_digest against every key: no timing side channel on which
                # key, or how much of one, matched
                found = None
                for key, ident in self._keys:
                    if secrets.compare_digest(token.strip(), key):
                        found = ident
                return found
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        ident = self._key_id(scope)
        if ident is not None:
            scope.setdefault("state", {})["api_key_id"] = ident
            return await self.app(scope, receive, send)
        await error_response(Unauthorized(
            "missing or invalid API key: send `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        ))(scope, receive, send)


class BodySizeLimitMiddleware:
    """413 for a body over `max_bytes`: at once from Content-Length; a body without one
    (chunked) is read up to the limit first and replayed to the app if it fits."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, scope, receive, send) -> None:
        await error_response(PayloadTooLarge(
            f"request body exceeds {self.max_bytes} bytes (--max-request-bytes); send "
            "less, or raise the limit on the server",
        ))(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", ()))
        length = headers.get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                return await self._refuse(scope, receive, send)
            return await self.app(scope, receive, send)
        if scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        buffered, size = [], 0
        while True:
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send)
            if not message.get("more_body", False):
                break

        async def replay():
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)
