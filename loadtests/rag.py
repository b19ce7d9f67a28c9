"""`longserve bench rag` and `longserve bench context`.

`rag`: multi-document QA (loadtests.multidoc), every document in the prompt (`all`, the
reference) against the RAG path (`documents` + `rag` options) on the same samples, one
request at a time, each prefill cold (fresh `cache_salt`). Each RAG run is sent twice
per sample: `cold` (`rag.cache` false: the encoder runs on every chunk) then `warm`
(after a one-token request filled the chunk store: the encodings come from it). TTFT
speed-up: geometric mean over samples of `all` TTFT / run TTFT.

`context`: prompts 2-4x the served window under `truncate_middle`, `rag` and
`chain_of_agents`: score, latency to the first token and the tokens each strategy spent
(chain of agents counts every worker call)."""

from __future__ import annotations

import dataclasses
import time
import uuid

from loadtests.multidoc import single_prompt
from loadtests.quality import _ask
from loadtests.tasks import Sample

ALL = "all"


def parse_rag_runs(spec: str) -> list[dict]:
    """`drop@0.1,extractive@0.1/64` -> RAG options (MODE@EXPAND_SHARE[/CHUNK_TOKENS])."""
    runs = []
    for item in spec.split(","):
        head, _, chunk = item.partition("/")
        mode, _, expand = head.partition("@")
        try:
            runs.append({"mode": mode, **({"expand": float(expand)} if expand else {}),
                         **({"chunk_tokens": int(chunk)} if chunk else {})})
        except ValueError:
            raise ValueError(f"{item!r}: runs are MODE@EXPAND_SHARE[/CHUNK_TOKENS], with a "
                             "number after @ and a token count after /") from None
    return runs


def _label(options: dict) -> str:
    chunk = f"/{options['chunk_tokens']}" if "chunk_tokens" in options else ""
    return f"{options['mode']}@{options.get('expand', 'default')}{chunk}"


async def run_rag(url: str, model: str, samples: list[Sample], runs: list[dict], *,
                  api_key: str | None, progress: bool = True) -> dict[str, list[dict]]:
    from openai import AsyncOpenAI
    from tqdm import tqdm

    client = AsyncOpenAI(base_url=url.rstrip("/") + "/v1", api_key=api_key or "none",
                         max_retries=0, timeout=3600)
    labels = [ALL] + [f"{_label(o)} {t}" for o in runs for t in ("cold", "warm")]
    records: dict[str, list[dict]] = {label: [] for label in labels}
    try:
        with tqdm(total=len(samples) * len(labels), desc="rag", unit="request",
                  disable=not progress) as bar:
            for i, sample in enumerate(samples):
                everything = dataclasses.replace(sample, messages=single_prompt(sample))
                order = [None, *runs] if i % 2 == 0 else [*runs, None]
                for options in order:
                    if options is None:
                        records[ALL].append(await _ask(client, model, everything,
                                                       {"cache_salt": uuid.uuid4().hex},
                                                       stream=True))
                        bar.update()
                        continue
                    body = {"documents": sample.meta["documents"], "rag": options}
                    cold = {**body, "rag": {**options, "cache": False}}
                    records[f"{_label(options)} cold"].append(await _ask(
                        client, model, sample, {**cold, "cache_salt": uuid.uuid4().hex},
                        stream=True))
                    await _ask(client, model, dataclasses.replace(sample, max_tokens=1),
                               {**body, "cache_salt": uuid.uuid4().hex})  # fills the store
                    records[f"{_label(options)} warm"].append(await _ask(
                        client, model, sample, {**body, "cache_salt": uuid.uuid4().hex},
                        stream=True))
                    bar.update(2)
    finally:
        await client.close()
    return records


async def run_context(url: str, model: str, samples: list[Sample], strategies: list[str], *,
                      api_key: str | None, progress: bool = True) -> dict[str, list[dict]]:
    """Each sample under each strategy, non-streaming (the usage counts every call)."""
    import openai
    from openai import AsyncOpenAI
    from tqdm import tqdm

    from loadtests.quality import REQUEST_EXTRAS
    from loadtests.scoring import score

    client = AsyncOpenAI(base_url=url.rstrip("/") + "/v1", api_key=api_key or "none",
                         max_retries=0, timeout=3600)
    records: dict[str, list[dict]] = {name: [] for name in strategies}
    try:
        with tqdm(total=len(samples) * len(strategies), desc="context", unit="request",
                  disable=not progress) as bar:
            for sample in samples:
                for name in strategies:
                    started = time.perf_counter()
                    record = {"id": sample.id, "task": sample.task, "length": sample.length,
                              "prompt_tokens": sample.prompt_tokens, "answers": sample.answers}
                    try:
                        resp = await client.chat.completions.create(
                            model=model, messages=sample.messages, temperature=0,
                            max_tokens=sample.max_tokens, extra_body={
                                **REQUEST_EXTRAS, "context_strategy": name,
                                "cache_salt": uuid.uuid4().hex})
                        prediction = resp.choices[0].message.content or ""
                        context = (resp.model_extra or {}).get("longserve", {}).get("context", {})
                        record.update(
                            prediction=prediction, score=score(prediction, sample.answers,
                                                               sample.metric),
                            tokens=(resp.choices[0].model_extra or {}).get("token_ids") or [],
                            usage=resp.usage.model_dump(), context=context, error=None)
                    except openai.APIStatusError as exc:
                        record.update(prediction="", tokens=[], score=0.0, usage=None,
                                      error=f"{exc.status_code}: {exc.message}")
                    record["latency_s"] = time.perf_counter() - started
                    records[name].append(record)
                    bar.update()
    finally:
        await client.close()
    return records


def context_summary(records: dict[str, list[dict]]) -> list[dict]:
    rows = []
    for name, recs in records.items():
        for length in sorted({r["length"] for r in recs}):
            for task in sorted({r["task"] for r in recs}):
                mine = [r for r in recs if r["length"] == length and r["task"] == task]
                if not mine:
                    continue
                ok = [r for r in mine if r["error"] is None]
                rows.append({
                    "strategy": name, "task": task, "length": length, "samples": len(mine),
                    "errors": len(mine) - len(ok),
                    "score": 100 * sum(r["score"] for r in mine) / len(mine),
                    "latency_s": sum(r["latency_s"] for r in ok) / max(len(ok), 1),
                    "tokens": sum(r["usage"]["total_tokens"] for r in ok) / max(len(ok), 1),
                    "calls": sum(r["context"].get("workers", 0) + 1 for r in ok)
                    / max(len(ok), 1),
                })
    return rows


def context_markdown(rows: list[dict], title: str, window: int) -> str:
    lines = [f"### {title}", "", f"served window: {window} tokens", "",
             "| strategy | task | prompt tokens | samples | errors | score | latency s | "
             "engine calls | tokens processed |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(rows, key=lambda r: (r["task"], r["length"], r["strategy"])):
        lines.append(f"| {r['strategy']} | {r['task']} | {r['length']} | {r['samples']} | "
                     f"{r['errors']} | {r['score']:.1f} | {r['latency_s']:.1f} | "
                     f"{r['calls']:.1f} | {r['tokens']:.0f} |")
    return "\n".join(lines) + "\n"
