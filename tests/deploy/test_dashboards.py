"""The Grafana dashboards in deploy/grafana: every query names a metric the running server
exports (its `/metrics`: vLLM's and longserve's), and every issue-named view is there."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

DASHBOARDS = sorted((Path(__file__).resolve().parents[2] / "deploy" / "grafana").glob("*.json"))
METRIC = re.compile(r"\b(?:vllm:|longserve_)[a-zA-Z0-9_:]+")


def queries(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def exported_names(text: str) -> set[str]:
    """Every sample name the text format can carry for the families in `text` (a labelled
    family shows no sample until its first observation, so the TYPE lines count)."""
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
             if line and not line.startswith("#")}
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        base = name.removesuffix("_total")
        names |= {name, base}
        if kind == "counter":
            names.add(base + "_total")
        if kind == "histogram":
            names |= {base + s for s in ("_bucket", "_sum", "_count")}
    return names


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_dashboard_is_well_formed(path):
    dashboard = json.loads(path.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"]
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"] and panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for view in ("time to first token", "time per output token", "end-to-end", "goodput",
                 "waiting", "kv cache usage", "preemptions", "compression per policy",
                 "rag"):
        assert view in titles, view


@pytest.mark.engine
@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_every_query_names_an_exported_metric(path, server, auth):
    exported = exported_names(httpx.get(server.url + "/metrics", headers=auth).text)
    dashboard = json.loads(path.read_text())
    used = {name for expr in queries(dashboard) for name in METRIC.findall(expr)}
    for variable in dashboard["templating"]["list"]:
        used |= set(METRIC.findall(variable.get("query", "")))
    missing = sorted(used - exported)
    assert not missing, f"{path.name} queries metrics the server does not export: {missing}"
    assert len(used) >= 20
