"""`reject` (the default): a request that does not fit the context gets a 400 that says
by how much; nothing is ever cut silently."""

from __future__ import annotations

from server.context.base import Strategy


class Reject(Strategy):
    name = "reject"

    async def apply(self, request, ctx) -> dict:
        return {"name": self.name, "changed": False}  # vLLM's render counts, check() decides
