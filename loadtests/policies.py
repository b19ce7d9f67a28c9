"""`longserve bench policies`: every KV policy at every budget on the same prompts, side
by side with the full cache measured in the same run.

Each sample is sent first with `kv_policy: full`, then once per (policy, budget), one
after the other, so the policy runs read the full run's prompt from the prefix cache (a
policy compacts into fresh blocks and never alters cached ones, so this is exact) and the
whole matrix costs about one prefill per sample. Policies that need the attention of
every prompt query (H2O) skip the prefix cache and prefill in full.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from loadtests.quality import _ask, summarize
from loadtests.tasks import Sample


@dataclass(frozen=True)
class PolicyRun:
    name: str
    budget: float | int | None

    @property
    def label(self) -> str:
        return self.name if self.budget is None else f"{self.name}@{self.budget}"

    def body(self) -> dict:
        return {"kv_policy": {"name": self.name, "budget": self.budget}}


FULL = PolicyRun("full", None)


def parse_runs(policies: str, budgets: str | None) -> list[PolicyRun]:
    """`snapkv,h2o` x `0.5,0.35` -> runs; budgets are ratios (with a dot) or token counts.
    A policy that keeps every entry (`kivi4`) runs once, without a budget."""
    from cache_policies.registry import policy_class

    try:
        parsed = [float(b) if "." in b else int(b) for b in budgets.split(",")] if budgets else []
    except ValueError:
        raise ValueError(f"--budgets {budgets!r}: give ratios (0.35) or token counts (512), "
                         "comma-separated") from None
    runs = []
    for name in policies.split(","):
        if not policy_class(name).takes_budget:
            runs.append(PolicyRun(name, None))
        elif not parsed:
            raise ValueError(f"policy {name!r} needs --budgets")
        else:
            runs += [PolicyRun(name, b) for b in parsed]
    return runs


async def run_matrix(url: str, model: str, samples: list[Sample], runs: list[PolicyRun], *,
                     concurrency: int, api_key: str | None, progress: bool = True
                     ) -> dict[str, list[dict]]:
    from openai import AsyncOpenAI
    from tqdm import tqdm

    client = AsyncOpenAI(base_url=url.rstrip("/") + "/v1", api_key=api_key or "none",
                         max_retries=0, timeout=3600)
    gate = asyncio.Semaphore(concurrency)
    records: dict[str, list[dict]] = {run.label: [] for run in [FULL, *runs]}
    bar = tqdm(total=len(samples) * (len(runs) + 1), desc="policies", unit="request",
               disable=not progress)

    async def one(sample: Sample) -> None:
        async with gate:
            for run in [FULL, *runs]:
                records[run.label].append(await _ask(client, model, sample, run.body()))
                bar.update()

    try:
        await asyncio.gather(*(one(s) for s in samples))
    finally:
        bar.close()
        await client.close()
    return records


def matrix_summary(records: dict[str, list[dict]], reference: str = FULL.label) -> list[dict]:
    """One row per run and prompt length: score, share of the reference run's score
    (the full cache), fidelity against it."""
    full = records[reference]
    rows = []
    for label, recs in records.items():
        lengths = sorted({r["length"] for r in recs})
        for length in lengths:
            mine = [r for r in recs if r["length"] == length]
            ref = [r for r in full if r["length"] == length]
            s = summarize(mine, ref)["overall"]
            full_score = summarize(ref)["overall"]["score"]
            rows.append({
                "run": label, "length": length, "samples": s["samples"], "errors": s["errors"],
                "score": s["score"], "of_full": s["score"] / full_score if full_score else None,
                "identical": s["fidelity"]["identical"],
                "token_agreement": s["fidelity"]["token_agreement"],
            })
    return rows


def matrix_markdown(rows: list[dict], title: str) -> str:
    def pct(x):
        return "—" if x is None else f"{100 * x:.1f}%"

    lines = [f"### {title}", "",
             "| run | length | samples | score | of full | identical | token agreement |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['length']} | {r['samples']} | {r['score']:.1f} | "
                     f"{pct(r['of_full'])} | {pct(r['identical'])} | {pct(r['token_agreement'])} |")
    return "\n".join(lines) + "\n"
