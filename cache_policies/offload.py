"""The offload tier of retrieval policies: KV blocks moved out of vLLM's KV memory, by
(request, layer, logical block), as the raw bytes the block held in the cache. A block
read back is byte-identical to what left.

`host` (the default) keeps them in the worker process's own memory; `redis://...` in a
Redis server (one per host or shared; keys expire after a day in case a worker dies
without cleaning up). `none` turns the tier off: retrieval then only selects.
"""

from __future__ import annotations

import os

import torch

ENV = "LONGSERVE_KV_OFFLOAD"
KEY_TTL_S = 24 * 3600


class HostStore:
    def __init__(self) -> None:
        self._blocks: dict[tuple[str, str, int], torch.Tensor] = {}

    def put(self, req: str, layer: str, first: int, raw: torch.Tensor) -> None:
        """raw: (n, ...) the n blocks' storage, logical blocks first .. first + n - 1."""
        for i, block in enumerate(raw):
            self._blocks[(req, layer, first + i)] = block.clone()

    def get(self, req: str, layer: str, indices: list[int]) -> torch.Tensor:
        return torch.stack([self._blocks[(req, layer, i)] for i in indices])

    def drop(self, req: str) -> None:
        for key in [k for k in self._blocks if k[0] == req]:
            del self._blocks[key]

    def __len__(self) -> int:
        return len(self._blocks)


class RedisStore:
    def __init__(self, url: str) -> None:
        import redis

        self._redis = redis.Redis.from_url(url)
        self._redis.ping()  # fail at start-up, not in the middle of a request
        self._meta: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
        self._prefix = f"longserve:kv:{os.getpid()}:"

    def _key(self, req: str, layer: str, index: int) -> str:
        return f"{self._prefix}{req}:{layer}:{index}"

    def put(self, req: str, layer: str, first: int, raw: torch.Tensor) -> None:
        self._meta[req] = (raw.dtype, tuple(raw.shape[1:]))
        pipe = self._redis.pipeline(transaction=False)
        for i, block in enumerate(raw):
            data = block.contiguous().view(torch.uint8).numpy().tobytes()
            pipe.set(self._key(req, layer, first + i), data, ex=KEY_TTL_S)
        pipe.execute()

    def get(self, req: str, layer: str, indices: list[int]) -> torch.Tensor:
        dtype, shape = self._meta[req]
        values = self._redis.mget([self._key(req, layer, i) for i in indices])
        if any(v is None for v in values):
            raise KeyError(f"offloaded KV of request {req} is missing from Redis")
        return torch.stack([torch.frombuffer(bytearray(v), dtype=torch.uint8).view(dtype)
                            .view(shape) for v in values])

    def drop(self, req: str) -> None:
        if self._meta.pop(req, None) is None:
            return
        keys = list(self._redis.scan_iter(match=f"{self._prefix}{req}:*", count=1000))
        if keys:
            self._redis.delete(*keys)

    def __len__(self) -> int:
        return sum(1 for _ in self._redis.scan_iter(match=f"{self._prefix}*", count=1000))


def check_spec(spec: str) -> str:
    if spec in ("none", "host") or spec.startswith(("redis://", "rediss://", "unix://")):
        return spec
    raise ValueError(f"--kv-offload {spec!r}: use none, host or redis://HOST:PORT[/DB]")


def make_store(spec: str | None = None):
    """The store named by `spec` (default: the environment, else `host`); None for `none`."""
    spec = check_spec(spec or os.environ.get(ENV, "host"))
    if spec == "none":
        return None
    return HostStore() if spec == "host" else RedisStore(spec)


def enabled() -> bool:
    return check_spec(os.environ.get(ENV, "host")) != "none"
