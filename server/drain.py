"""SIGTERM drains instead of cutting: readiness goes false and new requests get 503 at
once, requests in flight run to their end (bounded by `--drain-seconds`), then uvicorn
shuts down and the process exits 0. A second signal skips the wait. Kubernetes' preStop
pause (helm/) keeps the endpoint in rotation until this starts."""

from __future__ import annotations

import asyncio
import logging
import time

import uvicorn

from server.state import Phase, set_phase

logger = logging.getLogger("longserve")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app, drain_seconds: float) -> None:
        super().__init__(config)
        self.app, self.drain_seconds = app, drain_seconds
        self._drain_task: asyncio.Task | None = None

    def handle_exit(self, sig, frame) -> None:
        # uvicorn's own handler records the signal and raises it again after shutdown,
        # which would end the process by SIGTERM; a drained server exits 0 instead.
        state = self.app.state
        if self._drain_task is None and state.phase is Phase.READY:
            set_phase(state, Phase.DRAINING)
            logger.info("signal %s: draining %d request(s) in flight (at most %ss)", sig,
                        state.admission.in_flight, self.drain_seconds)
            loop = asyncio.get_event_loop()
            loop.call_soon_threadsafe(self._start_drain)
            return
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True

    def _start_drain(self) -> None:
        self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        admission = self.app.state.admission
        deadline = time.monotonic() + self.drain_seconds
        while admission.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if admission.in_flight:
            logger.warning("drain: %d request(s) still in flight after %ss; shutting down",
                           admission.in_flight, self.drain_seconds)
        else:
            logger.info("drain: no request in flight; shutting down")
        self.should_exit = True
