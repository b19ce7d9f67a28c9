"""Soak: a bounded run of mixed long and short requests against one server, loopback only.
Passes with zero errors, the KV cache empty at the end and the server's memory steady.

    python -m loadtests.soak --duration 600 --concurrency 4 --long-tokens 3000

Without `--url` it starts `longserve serve` (eager) and reads the resident memory of its
whole process tree (API server and engine core) every few seconds; with `--url` it reads
the API server's own `process_resident_memory_bytes` from `/metrics` and `--pid`'s tree
when given. The mix, drawn per request from a seeded generator:

| kind | share | what |
| --- | ---: | --- |
| short | 35% | one-line chat, 32 tokens, not streamed |
| short-stream | 20% | the same, streamed, usage included |
| long | 20% | a ~`--long-tokens` needle prompt, 16 tokens; half of them cold (a fresh `cache_salt`), half hitting the prefix cache |
| long-policy | 10% | the same under SnapKV at 30% of the KV, streamed |
| abort | 10% | a long stream the client closes after 3 events (vLLM must free it) |
| completion | 5% | `/v1/completions`, 16 tokens |

Errors: any status other than 200, a stream without `[DONE]`, an empty answer, an
exception. Memory is judged after a warm-up (the first quarter of the samples): growth is
the last quarter's median over the second quarter's, and a least-squares slope over the
samples after warm-up is printed in MiB per minute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

MIX = [("short", 35), ("short-stream", 20), ("long", 20), ("long-policy", 10), ("abort", 10),
       ("completion", 5)]


@dataclass
class Tally:
    done: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)

    def ok(self, kind: str, seconds: float) -> None:
        self.done[kind] = self.done.get(kind, 0) + 1
        self.latencies.setdefault(kind, []).append(seconds)


def tree_rss(pid: int) -> int:
    import psutil

    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


async def memory_sampler(http: httpx.AsyncClient, pid: int | None, every: float,
                         stop: asyncio.Event, samples: list[tuple[float, int]]) -> None:
    from loadtests.prom import value

    start = time.monotonic()
    while not stop.is_set():
        if pid is not None:
            rss = tree_rss(pid)
        else:
            rss = int(value((await http.get("/metrics")).text, "process_resident_memory_bytes"))
        samples.append((time.monotonic() - start, rss))
        try:
            await asyncio.wait_for(stop.wait(), every)
        except TimeoutError:
            pass


async def one(http: httpx.AsyncClient, kind: str, model: str, long_samples, rng) -> str | None:
    """One request of `kind`; None when it went as it should, else what went wrong."""
    if kind in ("short", "short-stream"):
        body = {"model": model, "max_tokens": 32, "temperature": 0.7, "seed": rng.randrange(1000),
                "messages": [{"role": "user", "content": f"Name a color. ({rng.random():.6f})"}]}
    elif kind == "completion":
        body = {"model": model, "prompt": f"Once upon a time {rng.random():.6f}",
                "max_tokens": 16}
    else:
        sample = rng.choice(long_samples)
        body = {"model": model, "messages": sample.messages, "max_tokens": 16, "temperature": 0}
        if rng.random() < 0.5:  # cold: the whole prompt is prefilled again
            body["cache_salt"] = f"soak-{rng.random()}"
        if kind == "long-policy":
            body["kv_policy"] = {"name": "snapkv", "budget": 0.3}
        if kind == "abort":
            body.update(max_tokens=512, ignore_eos=True)
    path = "/v1/completions" if kind == "completion" else "/v1/chat/completions"
    if kind in ("short-stream", "long-policy", "abort"):
        body.update(stream=True, stream_options={"include_usage": True})
        async with http.stream("POST", path, json=body) as resp:
            if resp.status_code != 200:
                return f"{kind}: {resp.status_code} {(await resp.aread())[:200]!r}"
            events = 0
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                events += 1
                if kind == "abort" and events == 3:
                    return None  # leaving the block closes the stream: vLLM aborts it
                if line == "data: [DONE]":
                    return None if events > 2 else f"{kind}: a stream without content"
                if '"error"' in line[:20]:
                    return f"{kind}: error event {line[:200]}"
            return f"{kind}: stream ended without [DONE]"
    resp = await http.post(path, json=body)
    if resp.status_code != 200:
        return f"{kind}: {resp.status_code} {resp.text[:200]}"
    choice = resp.json()["choices"][0]
    text = choice.get("text") if kind == "completion" else choice["message"]["content"]
    return None if text else f"{kind}: empty answer"


async def worker(http, model, long_samples, deadline, rng, tally: Tally) -> None:
    kinds, weights = zip(*MIX)
    while time.monotonic() < deadline:
        kind = rng.choices(kinds, weights)[0]
        start = time.monotonic()
        try:
            problem = await one(http, kind, model, long_samples, rng)
        except httpx.HTTPError as exc:
            problem = f"{kind}: {type(exc).__name__} {exc}"
        if problem:
            tally.errors.append(problem)
        else:
            tally.ok(kind, time.monotonic() - start)


def slope_mib_per_min(points: list[tuple[float, int]]) -> float:
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] / 60 for p in points], [p[1] / 2**20 for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


async def soak(url: str, api_key: str | None, duration: float, concurrency: int,
               long_tokens: int, seed: int, pid: int | None, sample_every: float) -> dict:
    from transformers import AutoTokenizer

    from loadtests.prom import value
    from loadtests.tasks import build_sample
    from server.model_store import prepare

    tokenizer = AutoTokenizer.from_pretrained(str(prepare()[0]))
    long_samples = [build_sample("niah_single", long_tokens, i, seed, tokenizer)
                    for i in range(8)]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    tally, memory, stop = Tally(), [], asyncio.Event()
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as http:
        model = (await http.get("/v1/models")).json()["data"][0]["id"]
        sampler = asyncio.create_task(memory_sampler(http, pid, sample_every, stop, memory))
        deadline = time.monotonic() + duration
        start = time.monotonic()
        await asyncio.gather(*(worker(http, model, long_samples, deadline,
                                      random.Random(f"{seed}:{i}"), tally)
                               for i in range(concurrency)))
        elapsed = time.monotonic() - start
        for _ in range(100):  # aborted streams are freed at the engine's next step
            text = (await http.get("/metrics")).text
            if value(text, "vllm:num_requests_running") == 0 and \
                    value(text, "vllm:kv_cache_usage_perc") == 0:
                break
            await asyncio.sleep(0.2)
        stop.set()
        await sampler
        kv_end = value(text, "vllm:kv_cache_usage_perc")
        ready = (await http.get("/ready")).status_code
    quarter = max(1, len(memory) // 4)
    settled = memory[quarter:]
    second = statistics.median(r for _, r in memory[quarter:2 * quarter] or memory)
    last = statistics.median(r for _, r in memory[-quarter:])
    return {
        "duration_s": round(elapsed, 1), "concurrency": concurrency, "long_tokens": long_tokens,
        "requests": sum(tally.done.values()), "by_kind": tally.done,
        "errors": len(tally.errors), "first_errors": tally.errors[:10],
        "p50_s": {k: round(statistics.median(v), 3) for k, v in tally.latencies.items()},
        "memory_samples": len(memory), "rss_start_mib": round(memory[0][1] / 2**20, 1),
        "rss_settled_mib": round(second / 2**20, 1), "rss_end_mib": round(last / 2**20, 1),
        "rss_growth": round(last / second - 1, 4),
        "rss_slope_mib_per_min": round(slope_mib_per_min(settled), 2),
        "kv_usage_at_end": kv_end, "ready_at_end": ready == 200,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running server (loopback); default: start one")
    p.add_argument("--api-key")
    p.add_argument("--pid", type=int, help="with --url: the server's pid, for its tree's RSS")
    p.add_argument("--duration", type=float, default=600, help="seconds of load (max 3600)")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--long-tokens", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-every", type=float, default=5.0)
    p.add_argument("--max-growth", type=float, default=0.05,
                   help="resident memory growth after warm-up that fails the run")
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = p.parse_args(argv)
    if not 0 < args.duration <= 3600:
        p.error("--duration is bounded: (0, 3600] seconds")
    server = None
    if args.url is None:
        import tempfile

        from loadtests.servers import longserve

        server = longserve(Path(tempfile.mkdtemp()) / "longserve.log",
                           "--enforce-eager").start().wait_ready()
        args.url, args.pid = server.url, server.proc.pid
    elif not args.url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]")):
        p.error("the soak runs against a loopback server only")
    try:
        result = asyncio.run(soak(args.url, args.api_key, args.duration, args.concurrency,
                                  args.long_tokens, args.seed, args.pid, args.sample_every))
    finally:
        if server is not None:
            server.stop()
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    failed = (result["errors"] or result["kv_usage_at_end"] != 0 or not result["ready_at_end"]
              or result["rss_growth"] > args.max_growth)
    print("soak:", "FAILED" if failed else "passed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
