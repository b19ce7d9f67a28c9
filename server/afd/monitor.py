"""The attention server's side of AFD outside the engine: it hosts the store the FFN
workers and the engine's worker meet in, and reads the workers' heartbeats, so /ready
and new requests see a missing worker at once (not after a request's timeout)."""

from __future__ import annotations

import json
import threading
import time

from server.afd import transport
from server.afd.ffn_worker import HEARTBEAT_S

SILENT_AFTER_S = 6 * HEARTBEAT_S


class AFDMonitor:
    def __init__(self, port: int, shards: int, micro_batches: int, timeout: float) -> None:
        self.port, self.shards = port, shards
        self.micro_batches, self.timeout = micro_batches, timeout
        self.store = transport.connect_store(f"0.0.0.0:{port}", timeout=timeout, master=True)
        started = time.monotonic()
        self._beats = {shard: (-1, started) for shard in range(shards)}  # count, when it moved
        self._reader = transport.connect_store(f"127.0.0.1:{port}", timeout=timeout)
        self._lock = threading.Lock()
        threading.Thread(target=self._watch, daemon=True, name="afd-heartbeats").start()

    def _watch(self) -> None:
        """Follow every shard's heartbeat counter, whether or not anyone asks."""
        while True:
            for shard in list(self._beats):
                self._read(shard)
            time.sleep(HEARTBEAT_S / 2)

    def _read(self, shard: int) -> tuple[int, float]:
        """The shard's heartbeat count now, and since when it has had that value."""
        with self._lock:
            now = time.monotonic()
            current = self._reader.add(transport.key(shard, "alive"), 0)
            count, seen = self._beats[shard]
            if current != count:
                self._beats[shard] = count, seen = current, now
            return count, seen

    def engine_env(self) -> str:
        """What the engine's worker needs to reach the workers (`server.afd.model.ENV`)."""
        return json.dumps({"store": f"127.0.0.1:{self.port}", "shards": self.shards,
                           "micro_batches": self.micro_batches, "timeout": self.timeout})

    def problem(self) -> str | None:
        """None when every FFN shard's worker sent a heartbeat lately, else what is wrong."""
        now = time.monotonic()
        for shard, (count, seen) in sorted(self._beats.items()):
            if now - seen > SILENT_AFTER_S:
                # asked again now: the watcher may simply not have run lately (a busy
                # process), which is no reason to call a live worker silent
                count, seen = self._read(shard)
                now = time.monotonic()
            if now - seen > SILENT_AFTER_S:
                state = "has not connected" if count <= 0 else \
                    f"has been silent for {now - seen:.0f}s"
                return f"the FFN worker for shard {shard}/{self.shards} {state}"
        return None
