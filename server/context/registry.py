"""Names a request may give in `context_strategy`, mapped to strategy classes."""

from __future__ import annotations

import importlib

CONTEXT_STRATEGIES: dict[str, str] = {
    "reject": "server.context.reject:Reject",
    "truncate_middle": "server.context.truncate_middle:TruncateMiddle",
    "chain_of_agents": "server.context.chain_of_agents:ChainOfAgents",
    "rag": "server.context.rag:Rag",
}


def strategy_names() -> list[str]:
    return sorted(CONTEXT_STRATEGIES)


def check_name(name: str) -> str:
    if name not in CONTEXT_STRATEGIES:
        raise ValueError(
            f"unknown context_strategy {name!r}; valid names: {', '.join(strategy_names())}")
    return name


def get_strategy(name: str):
    module, _, attr = CONTEXT_STRATEGIES[check_name(name)].partition(":")
    return getattr(importlib.import_module(module), attr)()
