"""Percentiles and goodput, as `vllm bench serve` computes them."""

from __future__ import annotations

import math


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(rank), math.ceil(rank)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def summary(values: list[float], qs=(50, 90, 99)) -> dict:
    if not values:
        return {"mean": math.nan, **{f"p{q}": math.nan for q in qs}}
    return {"mean": sum(values) / len(values), **{f"p{q}": percentile(values, q) for q in qs}}


def goodput(requests: list[dict], duration_s: float, ttft_slo_s: float | None,
            tpot_slo_s: float | None) -> float:
    """Successful requests per second that met every given SLO (TTFT and TPOT)."""
    def meets(r: dict) -> bool:
        if not r["ok"]:
            return False
        if ttft_slo_s is not None and r["ttft"] > ttft_slo_s:
            return False
        return not (tpot_slo_s is not None and r["tpot"] is not None and r["tpot"] > tpot_slo_s)

    return sum(map(meets, requests)) / duration_s if duration_s > 0 else 0.0
