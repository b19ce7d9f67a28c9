"""Chunk encodings cached by content hash and encoder, so repeated documents skip the
encoder: an in-process LRU by default, Redis when `--chunk-store redis://...` is given
(shared by every replica, kept across restarts)."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable

import torch


def chunk_key(encoder: str, text: str) -> str:
    return f"longserve:chunk:{encoder}:{hashlib.sha256(text.encode()).hexdigest()}"


class MemoryStore:
    """Least recently used first out, at most `capacity` vectors (384 floats: 1.5 KiB)."""

    def __init__(self, capacity: int = 65536) -> None:
        self.capacity = capacity
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, keys: list[str]) -> list[bytes | None]:
        with self._lock:
            out = []
            for key in keys:
                value = self._data.get(key)
                if value is not None:
                    self._data.move_to_end(key)
                out.append(value)
            return out

    def put(self, items: dict[str, bytes]) -> None:
        with self._lock:
            for key, value in items.items():
                self._data[key] = value
                self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)


class RedisStore:
    """Vectors under `longserve:chunk:<encoder>:<sha256>`, expiring after `ttl` seconds."""

    def __init__(self, url: str, ttl: int = 7 * 24 * 3600) -> None:
        import redis

        self.url, self.ttl = url, ttl
        self._client = redis.Redis.from_url(url)

    def get(self, keys: list[str]) -> list[bytes | None]:
        return self._client.mget(keys) if keys else []

    def put(self, items: dict[str, bytes]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for key, value in items.items():
            pipe.set(key, value, ex=self.ttl)
        pipe.execute()


def make_store(spec: str) -> MemoryStore | RedisStore:
    """`memory` or `redis://HOST:PORT[/DB]`."""
    if spec == "memory":
        return MemoryStore()
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(spec)
    raise ValueError(f"--chunk-store takes `memory` or redis://HOST:PORT[/DB], got {spec!r}")


class CachedEncoder:
    """`encode(texts)` through the store: only texts never seen are encoded.
    `on_lookup(hits, misses)` is told the outcome of every call (the metrics)."""

    def __init__(self, encoder, store, on_lookup: Callable[[int, int], None] | None = None):
        self.encoder, self.store, self.on_lookup = encoder, store, on_lookup

    @property
    def name(self) -> str:
        return self.encoder.name

    def encode(self, texts: list[str], cache: bool = True) -> tuple[torch.Tensor, int, int]:
        """(len(texts), dim) unit vectors, how many distinct texts came from the store and
        how many were encoded (a text that repeats within the call counts once). Without
        `cache` the store is neither read nor written."""
        unique = list(dict.fromkeys(texts))
        keys = [chunk_key(self.encoder.name, text) for text in unique]
        found = self.store.get(keys) if cache else [None] * len(unique)
        missing = [i for i, value in enumerate(found) if value is None]
        vectors = torch.empty(len(unique), self.encoder.dim)
        for i, value in enumerate(found):
            if value is not None:
                vectors[i] = torch.frombuffer(bytearray(value), dtype=torch.float32)
        if missing:
            fresh = self.encoder.encode([unique[i] for i in missing])
            vectors[missing] = fresh
            if cache:
                self.store.put({keys[i]: fresh[j].numpy().tobytes()
                                for j, i in enumerate(missing)})
        hits = len(unique) - len(missing)
        if self.on_lookup:
            self.on_lookup(hits, len(missing))
        row = {text: i for i, text in enumerate(unique)}
        return vectors[[row[text] for text in texts]], hits, len(missing)
