"""Served per-token decode cost against context length, for the attention backends of
issue 9, on random checkpoints (`loadtests.checkpoints`) served by `longserve serve`:

- `lightning`: a hybrid MiniMax-format model (7 lightning layers, 1 softmax) against the
  same model with every layer softmax attention: lightning's decode cost should not grow
  with the context, softmax attention's does;
- `mfa`: a Step-3 text model (64 query heads x 256 over one KV head) served with the
  shared-KV decode route (`LONGSERVE_MFA_DECODE=auto`) and without it (`off`: vLLM's
  CPU kernel, the generic path), same weights, same prompts.

For each context length, `--batch` requests of that many prompt tokens (random ids) decode
`--tokens` tokens each, streamed, together; TPOT = (last token - first token) / (tokens -
1), median over requests and `--repeat` rounds. One warm-up request per context fills the
prefix cache where the model allows it, so rounds measure decode, not prefill.

    python -m loadtests.decode_cost mfa --contexts 1024,4096 --batch 4
    python -m loadtests.decode_cost lightning --contexts 1024,4096,16384
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from loadtests import checkpoints
from loadtests.servers import longserve

# lightning family: MiniMax-Text-01's pattern (one softmax layer after seven lightning
# layers) at a size whose prefill fits this CPU
HYBRID = ("linear_attention",) * 7 + ("full_attention",)
LIGHTNING_SHAPE = dict(hidden=256, heads=16, kv_heads=4, head_dim=64, intermediate=256,
                       block=256, experts=4)
MFA_SHAPE = dict(hidden=256, heads=64, head_dim=256, share_q_dim=128, layers=2)


async def one(http: httpx.AsyncClient, prompt: list[int], tokens: int) -> float:
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    first = last = None
    produced = 0
    async with http.stream("POST", "/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{resp.status_code}: {(await resp.aread())[:300]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("choices"):
                last = time.perf_counter()
                first = first or last
            if event.get("usage"):
                produced = event["usage"]["completion_tokens"]
    if produced != tokens:
        raise RuntimeError(f"expected {tokens} tokens, got {produced}")
    return (last - first) / (tokens - 1)


async def measure(url: str, contexts: list[int], batch: int, tokens: int,
                  repeat: int) -> dict[int, float]:
    import random

    out = {}
    async with httpx.AsyncClient(base_url=url, timeout=3600) as http:
        for n in contexts:
            rng = random.Random(n)
            prompts = [[rng.randrange(3, 49000) for _ in range(n)] for _ in range(batch)]
            for prompt in prompts:  # warm-up: prefill each prompt once (prefix cache)
                await one(http, prompt, 2)
            samples = []
            for _ in range(repeat):
                samples += await asyncio.gather(*(one(http, p, tokens) for p in prompts))
            out[n] = statistics.median(samples)
            print(f"  context {n}: TPOT {out[n] * 1e3:.2f} ms", flush=True)
    return out


def serve_and_measure(label: str, model: Path, workdir: Path, args, env: dict | None = None,
                      extra: tuple[str, ...] = ()) -> dict[int, float]:
    print(f"{label}:", flush=True)
    longest = max(args.contexts) + args.tokens + 16
    server = longserve(workdir / f"{label}.log", "--model", str(model), "--dtype",
                       args.dtype, "--enforce-eager", "--max-model-len", str(longest),
                       "--max-num-seqs", str(max(4, args.batch)), "--kv-cache-memory",
                       args.kv_cache_memory, *extra, env=env).start()
    try:
        server.wait_ready()
        return asyncio.run(measure(server.url, args.contexts, args.batch, args.tokens,
                                   args.repeat))
    finally:
        server.stop()


def table(contexts: list[int], runs: dict[str, dict[int, float]], reference: str) -> str:
    names = list(runs)
    head = "| context | " + " | ".join(f"{n} TPOT ms" for n in names)
    head += " | " + " | ".join(f"{n} vs first context" for n in names)
    head += " | " + " | ".join(f"{reference} / {n}" for n in names if n != reference) + " |"
    lines = [head, "|" + " ---: |" * (1 + 2 * len(names) + len(names) - 1)]
    for c in contexts:
        row = [f"{c:,}"] + [f"{runs[n][c] * 1e3:.2f}" for n in names]
        row += [f"{runs[n][c] / runs[n][contexts[0]]:.2f}x" for n in names]
        row += [f"{runs[reference][c] / runs[n][c]:.2f}" for n in names if n != reference]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.decode_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("family", choices=["lightning", "mfa"])
    p.add_argument("--contexts", default="1024,4096,16384",
                   type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--kv-cache-memory", default="4GiB")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="decode-cost-"))
    max_len = max(args.contexts) + args.tokens + 16
    if args.family == "lightning":
        hybrid = checkpoints.minimax(workdir / "hybrid", layers=HYBRID, max_len=max_len,
                                     **LIGHTNING_SHAPE)
        softmax = checkpoints.minimax(workdir / "softmax", layers=("full_attention",) * 8,
                                      max_len=max_len, **LIGHTNING_SHAPE)
        runs = {"hybrid": serve_and_measure("hybrid", hybrid, workdir, args),
                "softmax": serve_and_measure("softmax", softmax, workdir, args)}
        reference = "softmax"
    else:
        model = checkpoints.step3(workdir / "step3", max_len=max_len, **MFA_SHAPE)
        runs = {"generic": serve_and_measure("generic", model, workdir, args,
                                             env={"LONGSERVE_MFA_DECODE": "off"}),
                "mfa": serve_and_measure("mfa", model, workdir, args,
                                         env={"LONGSERVE_MFA_DECODE": "auto"})}
        reference = "generic"
    print(f"\n{args.family}: batch {args.batch}, {args.tokens} tokens, {args.dtype}, "
          f"median of {args.repeat} rounds")
    print(table(args.contexts, runs, reference))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
