"""`longserve bench load`: an async streaming load generator, open loop (Poisson arrivals
with gamma burstiness, as `vllm bench serve`) or closed loop (fixed concurrency).

Per request it records TTFT (first content token), inter-token latencies, TPOT
((e2e - TTFT) / (output tokens - 1)) and e2e latency; per run, percentiles, throughput,
goodput under an SLO, errors by status, and the server's own Prometheus view of TTFT and
TPOT over the same window as a cross-check.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass

import httpx

from loadtests.stats import goodput, summary


@dataclass
class LoadRequest:
    messages: list[dict]
    prompt_tokens: int
    max_tokens: int


def parse_mix(text: str) -> list[tuple[int, float]]:
    """'1024:0.5,4096:0.3,7168:0.2' -> [(1024, .5), ...]; '2048' -> [(2048, 1.0)]."""
    mix = []
    for part in text.split(","):
        length, _, weight = part.partition(":")
        mix.append((int(length), float(weight or 1.0)))
    if any(n <= 0 or w <= 0 for n, w in mix):
        raise ValueError(f"bad length mix {text!r}: lengths and weights must be positive")
    return mix


def parse_range(text: str) -> tuple[int, int]:
    """'128' -> (128, 128); '64-256' -> (64, 256), sampled uniformly."""
    lo, _, hi = text.partition("-")
    return int(lo), int(hi or lo)


def make_requests(tokenizer, n: int, prompt_mix: str, output_len: str, seed: int) -> list[LoadRequest]:
    from loadtests.tasks import build_sample

    rng = random.Random(seed)
    mix = parse_mix(prompt_mix)
    lo, hi = parse_range(output_len)
    lengths = rng.choices([m[0] for m in mix], weights=[m[1] for m in mix], k=n)
    out = []
    for i, length in enumerate(lengths):
        sample = build_sample("prose", length, i, seed, tokenizer)
        out.append(LoadRequest(sample.messages, sample.prompt_tokens, rng.randint(lo, hi)))
    return out


async def stream_one(http: httpx.AsyncClient, model: str, req: LoadRequest,
                     extra_body: dict) -> dict:
    body = {"model": model, "messages": req.messages, "max_tokens": req.max_tokens,
            "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}, **extra_body}
    record = {"ok": False, "status": None, "prompt_tokens": req.prompt_tokens,
              "output_tokens": 0, "ttft": None, "tpot": None, "itl": [], "e2e": None,
              "error": None}
    start = time.perf_counter()
    last = None
    try:
        async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
            record["status"] = resp.status_code
            if resp.status_code != 200:
                record["error"] = (await resp.aread()).decode(errors="replace")[:500]
                return record
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    record["status"] = event["error"].get("code", "stream-error")
                    record["error"] = event["error"].get("message")
                    return record
                choices = event.get("choices") or []
                if choices and choices[0].get("delta", {}).get("content"):
                    now = time.perf_counter()
                    if last is None:
                        record["ttft"] = now - start
                    else:
                        record["itl"].append(now - last)
                    last = now
                if event.get("usage"):
                    record["output_tokens"] = event["usage"]["completion_tokens"]
                    record["prompt_tokens"] = event["usage"]["prompt_tokens"]
    except httpx.HTTPError as exc:
        record.update(status="connection", error=repr(exc))
        return record
    record["e2e"] = time.perf_counter() - start
    record["ok"] = record["ttft"] is not None
    if record["ok"] and record["output_tokens"] > 1:
        record["tpot"] = (record["e2e"] - record["ttft"]) / (record["output_tokens"] - 1)
    return record


def arrival_gaps(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Gaps between request starts: gamma(shape=burstiness, mean 1/rate); burstiness 1 is
    Poisson, below 1 burstier, above 1 more regular. rate=inf sends all at once."""
    if rate == float("inf"):
        return [0.0] * n
    rng = random.Random(seed)
    return [rng.gammavariate(burstiness, 1.0 / (rate * burstiness)) for _ in range(n)]


async def run_open_loop(http, model, requests, extra_body, rate, burstiness, seed, bar=None):
    async def fire(req):
        record = await stream_one(http, model, req, extra_body)
        if bar:
            bar.update()
        return record

    tasks = []
    for req, gap in zip(requests, arrival_gaps(len(requests), rate, burstiness, seed)):
        await asyncio.sleep(gap)
        tasks.append(asyncio.create_task(fire(req)))
    return list(await asyncio.gather(*tasks))


async def run_closed_loop(http, model, requests, extra_body, concurrency, bar=None):
    queue = list(reversed(requests))
    records = []

    async def worker():
        while queue:
            records.append(await stream_one(http, model, queue.pop(), extra_body))
            if bar:
                bar.update()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records


def server_view(before: str, after: str) -> dict:
    """The server's mean TTFT and TPOT over the run, from its Prometheus histograms."""
    from loadtests.prom import totals

    b, a = totals(before), totals(after)
    view = {}
    for key, metric in (("ttft", "vllm:time_to_first_token_seconds"),
                        ("tpot", "vllm:request_time_per_output_token_seconds")):
        count = a[f"{metric}_count"] - b[f"{metric}_count"]
        view[f"{key}_mean"] = (a[f"{metric}_sum"] - b[f"{metric}_sum"]) / count if count else None
        view[f"{key}_count"] = count
    return view


def summarize(records: list[dict], duration: float, ttft_slo: float | None,
              tpot_slo: float | None) -> dict:
    ok = [r for r in records if r["ok"]]
    out_tokens = sum(r["output_tokens"] for r in ok)
    in_tokens = sum(r["prompt_tokens"] for r in ok)
    ms = 1000.0
    return {
        "requests": len(records),
        "completed": len(ok),
        "errors": dict(Counter(str(r["status"]) for r in records if not r["ok"])),
        "duration_s": duration,
        "request_throughput": len(ok) / duration if duration else 0.0,
        "output_token_throughput": out_tokens / duration if duration else 0.0,
        "total_token_throughput": (in_tokens + out_tokens) / duration if duration else 0.0,
        "goodput": goodput(records, duration, ttft_slo, tpot_slo),
        "slo": {"ttft_s": ttft_slo, "tpot_s": tpot_slo},
        "ttft_ms": {k: v * ms for k, v in summary([r["ttft"] for r in ok]).items()},
        "tpot_ms": {k: v * ms for k, v in summary(
            [r["tpot"] for r in ok if r["tpot"] is not None]).items()},
        "itl_ms": {k: v * ms for k, v in summary([x for r in ok for x in r["itl"]]).items()},
        "e2e_ms": {k: v * ms for k, v in summary([r["e2e"] for r in ok]).items()},
    }


async def run_load(url: str, model: str, requests: list[LoadRequest], *, extra_body: dict,
                   api_key: str | None, mode: str, rate: float = float("inf"),
                   burstiness: float = 1.0, concurrency: int = 1, seed: int = 0,
                   ttft_slo: float | None = None, tpot_slo: float | None = None,
                   progress: bool = True) -> dict:
    from tqdm import tqdm

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, limits=limits,
                                 timeout=httpx.Timeout(3600, connect=30)) as http:
        scrape = await _metrics(http)
        bar = tqdm(total=len(requests), desc=f"load {mode}", unit="req", disable=not progress)
        start = time.perf_counter()
        if mode == "open":
            records = await run_open_loop(http, model, requests, extra_body, rate, burstiness,
                                          seed, bar)
        else:
            records = await run_closed_loop(http, model, requests, extra_body, concurrency, bar)
        duration = time.perf_counter() - start
        bar.close()
        after = await _metrics(http)
    result = summarize(records, duration, ttft_slo, tpot_slo)
    result["mode"] = {"kind": mode, "rate": rate, "burstiness": burstiness,
                      "concurrency": concurrency}
    if scrape is not None and after is not None:
        server = server_view(scrape, after)
        client_ttft = result["ttft_ms"]["mean"] / 1000
        client_tpot = result["tpot_ms"]["mean"] / 1000
        server["ttft_client_over_server"] = (
            client_ttft / server["ttft_mean"] if server["ttft_mean"] else None)
        server["tpot_client_over_server"] = (
            client_tpot / server["tpot_mean"] if server["tpot_mean"] else None)
        result["server_metrics"] = server
    result["records"] = records
    return result


async def _metrics(http: httpx.AsyncClient) -> str | None:
    try:
        resp = await http.get("/metrics")
    except httpx.HTTPError:
        return None
    return resp.text if resp.status_code == 200 else None
