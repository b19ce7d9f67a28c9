"""The config every KV policy takes and the base every policy class derives from."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar


@dataclass(frozen=True)
class KVPolicyConfig:
    """A request's (or the deployment's) choice of KV policy and its budget.

    `budget` is either a ratio in (0, 1] of the prompt's KV entries kept, or an integer
    count of KV entries (tokens) kept per sequence; None means the policy's own default.
    """

    name: str
    budget: float | int | None = None

    def __post_init__(self) -> None:
        budget = self.budget
        if budget is None:
            return
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise ValueError(f"kv_policy.budget must be a number, got {budget!r}")
        if isinstance(budget, float) and not 0.0 < budget <= 1.0:
            raise ValueError(
                f"kv_policy.budget {budget} is not a valid ratio: use a fraction in (0, 1] "
                "of the prompt's KV to keep, or an integer token count"
            )
        if isinstance(budget, int) and budget < 1:
            raise ValueError(f"kv_policy.budget {budget} tokens: keep at least 1 token")

    def to_dict(self) -> dict:
        return asdict(self)


class KVPolicy:
    """Base of every policy. Subclasses set `name` and say whether a budget applies."""

    name: ClassVar[str]
    takes_budget: ClassVar[bool] = True

    def __init__(self, config: KVPolicyConfig) -> None:
        self.config = config

    @classmethod
    def validate(cls, config: KVPolicyConfig) -> None:
        if not cls.takes_budget and config.budget is not None:
            raise ValueError(
                f"kv_policy {cls.name!r} keeps the whole cache and takes no budget; "
                "omit kv_policy.budget or choose a policy that evicts"
            )
