"""`longserve bench capacity`: with the server's fixed KV memory, how many long requests
run at once and how fast, under `full` and under each KV policy, in one run.

Two workloads: distinct documents (every request prefills its own prompt, so prefill
bounds throughput on a small host), or `--shared-document` (many questions over one
long document: the document comes from the prefix cache, decoding dominates; copy-on-
compact keeps the cached document intact for the next request). A closed loop keeps `concurrency` requests outstanding (more than the KV memory holds
under `full`); a sampler reads vLLM's own gauges (`vllm:num_requests_running`,
`vllm:kv_cache_usage_perc`) while it runs. "Requests per KV pool" is requests running over
KV usage: how many such requests the whole pool holds, whether or not this run filled it
(a prefill-bound run may not). Each run gets fresh prompts, so no run reads
another's prefix cache. Figures are ratios against the `full` run of the same invocation.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from loadtests.load import LoadRequest, make_requests, run_load
from loadtests.policies import FULL, PolicyRun


def _gauges(text: str) -> dict[str, float]:
    from loadtests.prom import totals

    wanted = {"vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting",
              "vllm:kv_cache_usage_perc": "kv_usage", "vllm:num_preemptions_total": "preemptions"}
    found = totals(text)
    return {short: found[name] for name, short in wanted.items()}


async def _sample(url: str, headers: dict, stop: asyncio.Event, every: float) -> list[dict]:
    samples = []
    async with httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=30) as http:
        while not stop.is_set():
            try:
                samples.append({"t": time.perf_counter(), **_gauges((await http.get("/metrics")).text)})
            except httpx.HTTPError:
                pass
            try:
                await asyncio.wait_for(stop.wait(), every)
            except asyncio.TimeoutError:
                pass
    return samples


def shared_document_requests(tokenizer, n: int, prompt_len: int, output_len: int,
                             seed: int) -> list[LoadRequest]:
    """n requests over one long document, each ending with its own question: after one
    warm-up request the document comes from the prefix cache and decoding dominates."""
    [base] = make_requests(tokenizer, 1, f"{prompt_len}:1", str(output_len), seed)
    out = []
    for i in range(n):
        messages = [dict(m) for m in base.messages]
        messages[-1]["content"] += f"\n\nQuestion {i}: retell the passage in your own words."
        out.append(LoadRequest(messages, base.prompt_tokens, output_len))
    return out


async def _warm_up(url: str, model: str, headers: dict, request: LoadRequest) -> None:
    async with httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=3600) as http:
        resp = await http.post("/v1/chat/completions", json={
            "model": model, "messages": request.messages, "max_tokens": 1})
        resp.raise_for_status()


async def run_capacity(url: str, model: str, tokenizer, runs: list[PolicyRun], *, num_requests: int,
                       prompt_len: int, output_len: int, concurrency: int, seed: int,
                       api_key: str | None, shared_document: bool = False,
                       progress: bool = True) -> list[dict]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    rows = []
    for i, run in enumerate([FULL, *runs]):
        run_seed = seed + 1000 * (i + 1)
        if shared_document:
            requests = shared_document_requests(tokenizer, num_requests, prompt_len,
                                                output_len, run_seed)
            await _warm_up(url, model, headers, requests[0])
        else:
            requests = make_requests(tokenizer, num_requests, f"{prompt_len}:1",
                                     str(output_len), run_seed)
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample(url, headers, stop, 0.5))
        result = await run_load(url, model, requests, extra_body=run.body(), api_key=api_key,
                                mode="closed", concurrency=concurrency, progress=progress)
        stop.set()
        samples = await sampler
        busy = [s for s in samples if s["running"] > 0] or samples
        rows.append({
            "run": run.label, "completed": result["completed"], "errors": result["errors"],
            "duration_s": result["duration_s"],
            "output_tok_s": result["output_token_throughput"],
            "total_tok_s": result["total_token_throughput"],
            "running_mean": sum(s["running"] for s in busy) / len(busy),
            "running_max": max(s["running"] for s in busy),
            "kv_usage_mean": sum(s["kv_usage"] for s in busy) / len(busy),
            "preemptions": samples[-1]["preemptions"] - samples[0]["preemptions"] if samples else 0,
            "ttft_ms_p50": result["ttft_ms"]["p50"], "tpot_ms_p50": result["tpot_ms"]["p50"],
        })
    for row in rows:  # requests the whole KV pool would hold at this run's usage per request
        row["requests_per_pool"] = (row["running_mean"] / row["kv_usage_mean"]
                                    if row["kv_usage_mean"] else None)
    base = rows[0]
    for row in rows:
        row["running_vs_full"] = row["running_mean"] / base["running_mean"]
        row["throughput_vs_full"] = row["output_tok_s"] / base["output_tok_s"]
        row["per_pool_vs_full"] = (row["requests_per_pool"] / base["requests_per_pool"]
                                   if row["requests_per_pool"] and base["requests_per_pool"]
                                   else None)
    return rows


def capacity_markdown(rows: list[dict], title: str) -> str:
    lines = [f"### {title}", "",
             "| run | done | requests running (mean / max) | vs full | KV usage | requests per "
             "KV pool | vs full | output tok/s | vs full | TTFT p50 ms | TPOT p50 ms "
             "| preemptions |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
             "| ---: |"]
    for r in rows:
        per_pool = "—" if r.get("requests_per_pool") is None else f"{r['requests_per_pool']:.1f}"
        per_pool_x = "—" if r.get("per_pool_vs_full") is None else f"{r['per_pool_vs_full']:.2f}x"
        lines.append(
            f"| {r['run']} | {r['completed']} | {r['running_mean']:.2f} / {r['running_max']:.0f} "
            f"| {r['running_vs_full']:.2f}x | {100 * r['kv_usage_mean']:.0f}% "
            f"| {per_pool} | {per_pool_x} "
            f"| {r['output_tok_s']:.1f} | {r['throughput_vs_full']:.2f}x "
            f"| {r['ttft_ms_p50']:.0f} | {r['tpot_ms_p50']:.0f} | {r['preemptions']:.0f} |")
    return "\n".join(lines) + "\n"
