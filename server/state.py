"""The server's lifecycle: loading -> ready -> draining | dead, kept on `app.state`."""

from __future__ import annotations

import enum

from server import metrics
from server.errors import ServiceUnavailable


class Phase(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    DEAD = "dead"  # the engine stopped or failed to start


def set_phase(state, phase: Phase) -> None:
    state.phase = phase
    metrics.READY.set(1 if phase is Phase.READY else 0)


def afd_problem(state) -> str | None:
    """On an AFD attention server: why the FFN workers cannot serve now, else None."""
    monitor = getattr(state, "afd", None)
    return None if monitor is None else monitor.problem()


def serving_or_503(state):
    """The serving objects, or a 503 (with Retry-After while loading) saying why not."""
    phase = state.phase
    if phase is Phase.READY:
        if (problem := afd_problem(state)) is not None:
            raise ServiceUnavailable(f"{problem}; retry shortly", headers={"Retry-After": "2"})
        return state.serving
    if phase is Phase.LOADING:
        raise ServiceUnavailable(
            "the model is still loading; retry shortly", headers={"Retry-After": "5"})
    if phase is Phase.DRAINING:  # shutting down: another replica can take it now
        raise ServiceUnavailable("this server is draining and takes no new requests; retry "
                                 "on another replica", headers={"Retry-After": "1"})
    raise ServiceUnavailable(f"this server is {phase.value} and takes no new requests")
