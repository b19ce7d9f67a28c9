"""Scorer, fidelity, percentile and goodput math against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from loadtests.scoring import fidelity, score, string_match_all, string_match_part, token_agreement
from loadtests.stats import goodput, percentile, summary


def test_string_match_all_counts_each_reference():
    assert string_match_all("The numbers are 123 and 456.", ["123", "456", "789"]) == 2 / 3
    assert string_match_all("ALPHA beta", ["alpha", "Beta"]) == 1.0
    assert string_match_all("", ["x"]) == 0.0


def test_string_match_part_needs_any_one():
    assert string_match_part("it is Paris", ["London", "paris"]) == 1.0
    assert string_match_part("it is Rome", ["London", "paris"]) == 0.0
    assert score("abc", ["b"], "part") == 1.0 and score("abc", ["b", "z"], "all") == 0.5


def test_token_agreement_hand_cases():
    assert token_agreement([1, 2, 3], [1, 2, 3]) == 1.0
    assert token_agreement([1, 2, 3], [1, 9, 3]) == 2 / 3
    assert token_agreement([1, 2], [1, 2, 3, 4]) == 2 / 4
    assert token_agreement([], []) == 1.0
    assert token_agreement([5], []) == 0.0


def test_fidelity_over_common_samples():
    out = {"a": [1, 2], "b": [1, 2, 3, 4], "c": [7]}
    ref = {"a": [1, 2], "b": [1, 0, 3, 0], "d": [1]}
    f = fidelity(out, ref)
    assert f == {"samples": 2, "identical": 0.5, "token_agreement": (1.0 + 0.5) / 2}
    assert fidelity({}, ref)["identical"] is None


def test_percentile_matches_numpy_linear():
    values = [15, 20, 35, 40, 50]
    assert percentile(values, 50) == 35
    assert percentile(values, 0) == 15 and percentile(values, 100) == 50
    assert percentile(values, 40) == pytest.approx(29.0)  # rank 1.6 -> 20 + 0.6 * 15
    assert percentile([7], 99) == 7
    assert math.isnan(percentile([], 50))
    assert summary([1, 2, 3, 4])["mean"] == 2.5


def test_goodput_counts_only_requests_meeting_every_slo():
    reqs = [
        {"ok": True, "ttft": 0.1, "tpot": 0.02},   # meets both
        {"ok": True, "ttft": 0.5, "tpot": 0.02},   # TTFT too slow
        {"ok": True, "ttft": 0.1, "tpot": 0.09},   # TPOT too slow
        {"ok": False, "ttft": None, "tpot": None},  # failed
        {"ok": True, "ttft": 0.2, "tpot": None},   # one output token: no TPOT, meets TTFT
    ]
    assert goodput(reqs, 2.0, ttft_slo_s=0.3, tpot_slo_s=0.05) == 2 / 2.0
    assert goodput(reqs, 2.0, ttft_slo_s=None, tpot_slo_s=None) == 4 / 2.0
    assert goodput(reqs, 0.0, 0.3, 0.05) == 0.0
