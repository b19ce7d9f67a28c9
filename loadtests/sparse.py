"""`longserve bench sparse`: sparse prefill attention against dense on the same prompts in
one run: TTFT, prefill throughput, task score and fidelity.

Every sample is sent once per run (dense first on even samples, last on odd ones, so a
drift of the machine's speed falls on both), one request at a time, each with a fresh
`cache_salt` so that every prefill is cold. TTFT is the time to the first generated token
over the streamed response; prefill throughput is prompt tokens / TTFT. The TTFT ratio is
the geometric mean over samples of dense TTFT / run TTFT.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass

from loadtests.policies import matrix_summary
from loadtests.quality import _ask
from loadtests.tasks import Sample

DENSE = "dense"


@dataclass(frozen=True)
class AttentionRun:
    label: str
    attention: dict

    def body(self) -> dict:
        return {"attention": self.attention, "cache_salt": uuid.uuid4().hex}


DENSE_AGAIN = "dense (again)"


def _number(item: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{item!r}: the density after @ must be a number, got {text!r}") from None


def parse_runs(spec: str, extra: dict | None = None) -> list[AttentionRun]:
    """`vertical_slash@0.2,lsh@0.3:mass=0.9` -> sparse runs (method@density, then the run's
    own parameters as :name=value), `extra` parameters added to each; the dense run first.
    `dense` among them sends every sample densely a second time: the run-to-run noise floor
    of the fidelity columns."""
    runs = [AttentionRun(DENSE, {"name": "dense"})]
    for item in spec.split(","):
        head, *own = item.split(":")
        method, _, density = head.partition("@")
        if method == DENSE:
            runs.append(AttentionRun(DENSE_AGAIN, {"name": "dense"}))
            continue
        attention = {"name": "sparse", "method": method, **(extra or {})}
        if density:
            attention["density"] = _number(item, density)
        for setting in own:
            name, eq, value = setting.partition("=")
            if not eq:
                raise ValueError(f"{item!r}: run parameters are :name=value, got {setting!r}")
            try:  # numbers, booleans and JSON as JSON; a bare word as the string it is
                attention[name] = json.loads(value)
            except json.JSONDecodeError:
                attention[name] = value
        runs.append(AttentionRun(item, attention))
    return runs


PAIRS = ("longserve_sparse_pairs_attended_total", "longserve_sparse_pairs_causal_total")


async def _pairs(http) -> tuple[float, float]:
    from loadtests.prom import totals

    counts = totals((await http.get("/metrics")).text)
    return counts[PAIRS[0]], counts[PAIRS[1]]


async def run_sparse(url: str, model: str, samples: list[Sample], runs: list[AttentionRun], *,
                     api_key: str | None, progress: bool = True) -> dict[str, list[dict]]:
    """Every sample through every run, one request at a time; each record also gets the
    query-key pairs its sparse chunks attended and could have (the server's counters)."""
    import httpx
    from openai import AsyncOpenAI
    from tqdm import tqdm

    client = AsyncOpenAI(base_url=url.rstrip("/") + "/v1", api_key=api_key or "none",
                         max_retries=0, timeout=3600)
    # The counters are read once per request, several seconds apart: a connection idle
    # that long is one uvicorn may be closing (its keep-alive is 5 s, as httpx's), and a
    # read sent on it fails. Reuse one only within a second.
    http = httpx.AsyncClient(base_url=url.rstrip("/"), timeout=60, headers=(
        {"Authorization": f"Bearer {api_key}"} if api_key else {}),
        limits=httpx.Limits(keepalive_expiry=1.0))
    records: dict[str, list[dict]] = {run.label: [] for run in runs}
    try:
        with tqdm(total=len(samples) * len(runs), desc="sparse", unit="request",
                  disable=not progress) as bar:
            before = await _pairs(http)  # one request at a time: a read ends one, starts the next
            for i, sample in enumerate(samples):
                for run in runs if i % 2 == 0 else runs[::-1]:
                    record = await _ask(client, model, sample, run.body(), stream=True)
                    after = await _pairs(http)
                    record["pairs_attended"], record["pairs_causal"] = (
                        b - a for a, b in zip(before, after))
                    before = after
                    records[run.label].append(record)
                    bar.update()
    finally:
        await client.close()
        await http.aclose()
    return records


def sparse_summary(records: dict[str, list[dict]], reference: str = DENSE) -> list[dict]:
    """Per run and length: quality vs the reference run (as `bench policies`) plus TTFT
    figures (speed-up: geometric mean of reference TTFT / run TTFT)."""
    rows = matrix_summary(records, reference=reference)
    dense = {r["id"]: r for r in records[reference]}
    for row in rows:
        mine = [r for r in records[row["run"]] if r["length"] == row["length"]
                and r.get("ttft_s") and dense[r["id"]].get("ttft_s")]
        if not mine:
            continue
        row["ttft_s"] = sum(r["ttft_s"] for r in mine) / len(mine)
        row["prefill_tok_s"] = sum(r["prompt_tokens"] / r["ttft_s"] for r in mine) / len(mine)
        row["ttft_speedup"] = math.exp(sum(math.log(dense[r["id"]]["ttft_s"] / r["ttft_s"])
                                           for r in mine) / len(mine))
        causal = sum(r.get("pairs_causal", 0) for r in mine)
        if causal:  # pairs attended in the chunks that went sparse, of their causal pairs
            row["sparse_density"] = sum(r["pairs_attended"] for r in mine) / causal
    return rows


def sparse_markdown(rows: list[dict], title: str, reference: str = DENSE) -> str:
    def pct(x):
        return "—" if x is None else f"{100 * x:.1f}%"

    density = any("sparse_density" in r for r in rows)  # bench sparse, not bench rag
    lines = [f"### {title}", "",
             f"| run | length | samples | TTFT s | prefill tok/s | TTFT speed-up vs {reference} "
             + ("| density of sparse chunks " if density else "")
             + f"| score | of {reference} | identical | token agreement |",
             "| --- | ---: | ---: | ---: | ---: | ---: |" + " ---: |" * (4 + density)]
    for r in sorted(rows, key=lambda r: (r["length"], r["run"] != reference)):
        lines.append(
            f"| {r['run']} | {r['length']} | {r['samples']} | {r.get('ttft_s', 0):.2f} | "
            f"{r.get('prefill_tok_s', 0):.0f} | {r.get('ttft_speedup', 0):.2f}x | "
            + (f"{pct(r.get('sparse_density'))} | " if density else "")
            + f"{r['score']:.1f} | {pct(r['of_full'])} | {pct(r['identical'])} | "
            f"{pct(r['token_agreement'])} |")
    return "\n".join(lines) + "\n"
