"""Reading Prometheus text exposition (a server's /metrics) into numbers."""

from __future__ import annotations

from collections import Counter


def samples(text: str):
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        yield from family.samples


def totals(text: str) -> Counter:
    """Every sample name -> the sum of its values over all label sets."""
    out: Counter = Counter()
    for s in samples(text):
        out[s.name] += s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(s.value for s in samples(text)
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))
