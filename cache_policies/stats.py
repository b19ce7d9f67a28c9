"""Per-policy compression counters, kept by the scheduler (engine core process) and read
by the API process for `/metrics`: a small JSON file replaced atomically on each change.
The engine core is always a child of the API process on the same host."""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from pathlib import Path

ENV = "LONGSERVE_KV_STATS_FILE"
FIELDS = ("requests", "compactions", "skipped", "tokens_before", "tokens_kept",
          "blocks_before", "blocks_freed")


RETRIEVAL_FIELDS = ("attended", "candidates")


class PolicyStats:
    """Counters per policy, written to `path` when they change, at most once per `every`
    seconds (the last changes wait for the next `flush`)."""

    def __init__(self, path: str | None = None, fields: tuple[str, ...] = FIELDS,
                 every: float = 0.0) -> None:
        self.path = Path(path) if path else (Path(os.environ[ENV]) if ENV in os.environ else None)
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(fields, 0))
        self.every = every
        self._written = float("-inf")
        self._dirty = False

    def add(self, policy: str, **deltas: int) -> None:
        row = self.counts[policy]
        for field, delta in deltas.items():
            row[field] += delta
        self._dirty = True
        self.flush()

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._dirty or self.path is None or (now - self._written < self.every
                                                    and not force):
            return
        tmp = Path(f"{self.path}.tmp")
        tmp.write_text(json.dumps(self.counts))
        os.replace(tmp, self.path)
        self._written, self._dirty = now, False


def worker_stats(kind: str, fields: tuple[str, ...]) -> PolicyStats:
    """Counters kept in a worker process (per step, per layer), written next to the
    scheduler's file as `<file>.<kind><pid>`, at most once a second."""
    base = os.environ.get(ENV)
    return PolicyStats(f"{base}.{kind}{os.getpid()}" if base else None, fields, 1.0)


def read_workers(path: str | Path, kind: str,
                 fields: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Every worker's `kind` counters, summed per key."""
    total: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(fields, 0))
    for file in Path(path).parent.glob(f"{Path(path).name}.{kind}*"):
        if file.suffix == ".tmp":
            continue
        for key, row in read(file).items():
            for field, value in row.items():
                total[key][field] += value
    return total


def retrieval_stats() -> PolicyStats:
    """Pages attended by retrieval policies, counted in the worker that picks them."""
    return worker_stats("worker", RETRIEVAL_FIELDS)


def read_retrieval(path: str | Path) -> dict[str, dict[str, int]]:
    return read_workers(path, "worker", RETRIEVAL_FIELDS)


def read(path: str | Path) -> dict[str, dict[str, int]]:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
