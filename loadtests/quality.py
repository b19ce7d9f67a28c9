"""`longserve bench quality`: the synthetic long-context tasks against any
OpenAI-compatible URL, scored per task, with fidelity against a reference run."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import asdict

from loadtests.scoring import fidelity, score
from loadtests.tasks import Sample

# RULER-style prompting: the assistant turn starts with the answer prefix and the model
# continues it (vLLM's `continue_final_message`); token ids come back for fidelity.
REQUEST_EXTRAS = {"add_generation_prompt": False, "continue_final_message": True,
                  "return_token_ids": True}


async def _ask(client, model: str, sample: Sample, extra_body: dict,
               stream: bool = False) -> dict:
    """One sample, greedy. With `stream`, the record also holds `ttft_s` (time to the
    first generated token)."""
    import openai

    started = time.perf_counter()
    record = {"id": sample.id, "task": sample.task, "length": sample.length,
              "prompt_tokens": sample.prompt_tokens, "answers": sample.answers}
    try:
        resp = await client.chat.completions.create(
            model=model, messages=sample.messages, max_tokens=sample.max_tokens, temperature=0,
            extra_body={**REQUEST_EXTRAS, **extra_body}, stream=stream,
        )
        if stream:
            prediction, tokens = "", []
            async for chunk in resp:
                if not chunk.choices:
                    continue
                new = (chunk.choices[0].model_extra or {}).get("token_ids") or []
                if new and not tokens:
                    record["ttft_s"] = time.perf_counter() - started
                tokens += new
                prediction += chunk.choices[0].delta.content or ""
        else:
            choice = resp.choices[0]
            prediction = choice.message.content or ""
            tokens = (choice.model_extra or {}).get("token_ids") or []
        record.update(prediction=prediction, tokens=tokens,
                      score=score(prediction, sample.answers, sample.metric), error=None)
    except openai.APIStatusError as exc:
        record.update(prediction="", tokens=[], score=0.0,
                      error=f"{exc.status_code}: {exc.message}")
    except openai.APIConnectionError as exc:
        record.update(prediction="", tokens=[], score=0.0, error=f"connection: {exc}")
    record["latency_s"] = time.perf_counter() - started
    return record


async def run_samples(url: str, model: str, samples: list[Sample], *, extra_body: dict,
                      concurrency: int, api_key: str | None, progress: bool = True) -> list[dict]:
    from openai import AsyncOpenAI
    from tqdm import tqdm

    client = AsyncOpenAI(base_url=url.rstrip("/") + "/v1", api_key=api_key or "none",
                         max_retries=0, timeout=3600)
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(samples), desc="quality", unit="sample", disable=not progress)

    async def one(sample: Sample) -> dict:
        async with gate:
            record = await _ask(client, model, sample, extra_body)
        bar.update()
        return record

    try:
        return list(await asyncio.gather(*(one(s) for s in samples)))
    finally:
        bar.close()
        await client.close()


def summarize(records: list[dict], reference: list[dict] | None = None) -> dict:
    """Per (task, length): mean score (0-100), errors, and fidelity if a reference is given."""
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["task"], r["length"])].append(r)
    ref_tokens = {r["id"]: r["tokens"] for r in reference or [] if r.get("error") is None}
    rows = []
    for (task, length), group in sorted(groups.items()):
        ok = [r for r in group if r["error"] is None]
        row = {"task": task, "length": length, "samples": len(group),
               "errors": len(group) - len(ok),
               "score": 100 * sum(r["score"] for r in group) / len(group)}
        if reference is not None:
            row["fidelity"] = fidelity({r["id"]: r["tokens"] for r in ok}, ref_tokens)
        rows.append(row)
    overall = {"score": 100 * sum(r["score"] for r in records) / max(len(records), 1),
               "samples": len(records), "errors": sum(r["error"] is not None for r in records)}
    if reference is not None:
        overall["fidelity"] = fidelity(
            {r["id"]: r["tokens"] for r in records if r["error"] is None}, ref_tokens)
    return {"rows": rows, "overall": overall}


def samples_as_dicts(samples: list[Sample]) -> list[dict]:
    return [asdict(s) for s in samples]
