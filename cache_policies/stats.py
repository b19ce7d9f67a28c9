"""Per-policy compression counters, kept by the scheduler (engine core process) and read
by the API process for `/metrics`: a small JSON file replaced atomically on each change.
The engine core is always a child of the API process on the same host."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

ENV = "LONGSERVE_KV_STATS_FILE"
FIELDS = ("requests", "compactions", "skipped", "tokens_before", "tokens_kept",
          "blocks_before", "blocks_freed")


class PolicyStats:
    def __init__(self, path: str | None = None) -> None:
        self.path = Path(path) if path else (Path(os.environ[ENV]) if ENV in os.environ else None)
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(FIELDS, 0))

    def add(self, policy: str, **deltas: int) -> None:
        row = self.counts[policy]
        for field, delta in deltas.items():
            row[field] += delta
        self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.counts))
        os.replace(tmp, self.path)


class RetrievalStats:
    """Blocks attended by retrieval policies, counted in the worker process (which picks
    the blocks) and written next to the scheduler's file, at most once a second."""

    FIELDS = ("attended", "candidates")

    def __init__(self) -> None:
        base = os.environ.get(ENV)
        self.path = Path(f"{base}.worker{os.getpid()}") if base else None
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(self.FIELDS, 0))
        self._written = 0.0
        self._dirty = False

    def add(self, policy: str, **deltas: int) -> None:
        row = self.counts[policy]
        for field, delta in deltas.items():
            row[field] += delta
        self._dirty = True

    def flush(self, every: float = 1.0) -> None:
        import time

        if not self._dirty or self.path is None or time.monotonic() - self._written < every:
            return
        tmp = Path(f"{self.path}.tmp")
        tmp.write_text(json.dumps(self.counts))
        os.replace(tmp, self.path)
        self._written, self._dirty = time.monotonic(), False


def read_retrieval(path: str | Path) -> dict[str, dict[str, int]]:
    """The workers' retrieval counts, summed."""
    total: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(RetrievalStats.FIELDS, 0))
    for file in Path(path).parent.glob(Path(path).name + ".worker*"):
        if file.suffix == ".tmp":
            continue
        for policy, row in read(file).items():
            for field, value in row.items():
                total[policy][field] += value
    return total


def read(path: str | Path) -> dict[str, dict[str, int]]:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
