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


def read(path: str | Path) -> dict[str, dict[str, int]]:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
