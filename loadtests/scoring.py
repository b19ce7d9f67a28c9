"""Scores (RULER's string match) and fidelity against a reference run."""

from __future__ import annotations


def string_match_all(prediction: str, answers: list[str]) -> float:
    """RULER `string_match_all`: share of the reference answers found in the prediction
    (case-insensitive)."""
    text = prediction.lower()
    return sum(a.lower() in text for a in answers) / len(answers)


def string_match_part(prediction: str, answers: list[str]) -> float:
    """RULER `string_match_part`: 1 if any reference answer is in the prediction."""
    text = prediction.lower()
    return float(any(a.lower() in text for a in answers))


METRICS = {"all": string_match_all, "part": string_match_part}


def score(prediction: str, answers: list[str], metric: str) -> float:
    return METRICS[metric](prediction, answers)


def token_agreement(tokens: list[int], reference: list[int]) -> float:
    """Share of positions where two greedy outputs agree, over the longer output:
    1.0 only for identical sequences; two empty outputs agree fully."""
    longest = max(len(tokens), len(reference))
    if longest == 0:
        return 1.0
    return sum(a == b for a, b in zip(tokens, reference)) / longest


def fidelity(outputs: dict[str, list[int]], reference: dict[str, list[int]]) -> dict:
    """Identical-output share and mean token agreement over the samples both runs have."""
    common = sorted(outputs.keys() & reference.keys())
    if not common:
        return {"samples": 0, "identical": None, "token_agreement": None}
    agreements = [token_agreement(outputs[k], reference[k]) for k in common]
    return {
        "samples": len(common),
        "identical": sum(outputs[k] == reference[k] for k in common) / len(common),
        "token_agreement": sum(agreements) / len(agreements),
    }
