"""Names a request may give in `context_strategy`, mapped to strategy classes."""

from __future__ import annotations

import importlib

CONTEXT_STRATEGIES: dict[str, str] = {
    "reject": "server.context.reject:Reject",
}


def strategy_names() -> list[str]:
    return sorted(CONTEXT_STRATEGIES)


def get_strategy(name: str):
    try:
        module, _, attr = CONTEXT_STRATEGIES[name].partition(":")
    except KeyError:
        raise ValueError(
            f"unknown context_strategy {name!r}; valid names: {', '.join(strategy_names())}"
        ) from None
    return getattr(importlib.import_module(module), attr)()
