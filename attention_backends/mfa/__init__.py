"""Decode attention for layers with one shared KV head: Step-3's Multi-Matrix
Factorization Attention (a low-rank query projection expanded to many heads over one KV
head), and MQA in general. vLLM serves Step-3 text models (`Step3TextForCausalLM`) with
its own layer code; what changes is the kernel under them: the shared head's keys and
values are read once per request for every query head (`kernels.mfa_decode`)."""

import os

ENV = "LONGSERVE_MFA_DECODE"
MODES = ("auto", "on", "off")


def mode() -> str:
    """The route's mode from the environment; a bad value is refused (the server checks it
    at start-up, before the engine's workers read it)."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{ENV}={value!r}: expected one of {', '.join(MODES)}")
    return value


# worker counters (cache_policies.stats): decode tokens the shared-KV route attended
KIND = "mfa"
FIELDS = ("tokens",)
