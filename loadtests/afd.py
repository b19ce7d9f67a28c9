"""Attention-FFN disaggregation against the monolithic server, on this machine: TPOT and
decode throughput, and the bytes moved per token per layer (read back from the attention
server's `longserve_afd_*` counters).

Each configuration is served alone (one after the other, same flags, same prompts): the
monolithic `longserve serve`, then `--afd-role attention` with one `longserve afd-ffn`
worker (1:1) at each micro-batch count asked for. On one host the worker and the engine
share the CPU cores, so this measures the cost of the split (transfers, serialisation,
the extra process), not the gain of giving FFN and attention their own hardware.

    python -m loadtests.afd --batch 4 --tokens 64 --micro-batches 1,2
    python -m loadtests.afd --transport      # the link alone: round trip by message size

`--transport` times `server.afd.transport.Link` itself between two local processes (no
model): the round trip of a header and a (tokens x hidden) message answered with the same
size, by size, from which the per-message latency and the bandwidth of the performance
model in BENCHMARKS.md come.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from loadtests.decode_cost import one
from loadtests.prom import value
from loadtests.servers import BIN, free_port, longserve


async def workload(url: str, batch: int, tokens: int, prompt_tokens: int,
                   repeat: int) -> dict:
    import random

    rng = random.Random(0)
    prompts = [[rng.randrange(3, 49000) for _ in range(prompt_tokens)] for _ in range(batch)]
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        await one(http, prompts[0], 4)  # warm-up
        tpots, walls = [], []
        for _ in range(repeat):
            start = time.perf_counter()
            tpots += await asyncio.gather(*(one(http, p, tokens) for p in prompts))
            walls.append(time.perf_counter() - start)
    return {"tpot": statistics.median(tpots),
            "throughput": batch * tokens / statistics.median(walls)}


def run_config(label: str, args, workdir: Path, afd_micro_batches: int | None) -> dict:
    flags = ["--dtype", args.dtype, "--enforce-eager", "--max-num-seqs", str(args.batch),
             "--kv-cache-memory", "1GiB"]
    worker, env = None, {}
    if afd_micro_batches is not None:
        port = free_port()
        flags += ["--afd-role", "attention", "--afd-port", str(port),
                  "--afd-micro-batches", str(afd_micro_batches)]
        log = (workdir / f"{label}-ffn.log").open("w")
        pin = ["taskset", "-c", args.ffn_cores] if args.ffn_cores else []
        if args.engine_cores:  # vLLM's CPU worker binds its OpenMP threads to these
            env["VLLM_CPU_OMP_THREADS_BIND"] = args.engine_cores
        worker = subprocess.Popen(
            [*pin, str(BIN / "longserve"), "afd-ffn", "--attention", f"127.0.0.1:{port}",
             "--dtype", args.dtype, "--device", "cpu",
             *(["--threads", str(args.ffn_threads)] if args.ffn_threads else [])],
            stdout=log, stderr=subprocess.STDOUT)
    server = longserve(workdir / f"{label}.log", *flags, env=env).start()
    try:
        server.wait_ready()
        result = asyncio.run(workload(server.url, args.batch, args.tokens, args.prompt_tokens,
                                      args.repeat))
        text = httpx.get(server.url + "/metrics").text
        tokens = value(text, "longserve_afd_tokens_total", direction="to_ffn")
        if tokens:
            result["bytes_per_token_layer"] = (
                value(text, "longserve_afd_bytes_total", direction="to_ffn") / tokens)
        print(f"{label}: TPOT {result['tpot'] * 1e3:.2f} ms, "
              f"{result['throughput']:.1f} tokens/s", flush=True)
        return result
    finally:
        server.stop()
        if worker is not None:
            worker.terminate()
            worker.wait(30)


def _echo(port: int, hidden: int) -> None:
    """The far end of `transport_round_trips`: answers every message with one as big."""
    import torch

    from server.afd import transport
    from server.afd.transport import IDLE, TAG_DATA, TAG_HEADER, TAG_OUT, Link

    store = transport.connect_store(f"127.0.0.1:{port}", timeout=30)
    link = Link.join(store, 0, 1, rank=1, device=torch.device("cpu"), timeout=IDLE)
    while True:
        header, work = link.receive((3,), torch.int64, TAG_HEADER)
        Link.wait([work])
        if header[0] < 0:
            return
        x, work = link.receive((int(header[1]), hidden), torch.bfloat16, TAG_DATA)
        Link.wait([work])
        Link.wait(link.post([x], TAG_OUT))


def transport_round_trips(hidden: int, sizes: list[int], repeat: int) -> list[tuple]:
    import datetime
    import multiprocessing

    import torch

    from server.afd import transport
    from server.afd.transport import TAG_DATA, TAG_HEADER, TAG_OUT, Link

    port = free_port()
    store = transport.connect_store(f"127.0.0.1:{port}", timeout=30, master=True)
    store.add(transport.key(0, "generation"), 1)
    far = multiprocessing.get_context("spawn").Process(target=_echo, args=(port, hidden))
    far.start()
    link = Link.join(store, 0, 1, rank=0, device=torch.device("cpu"),
                     timeout=datetime.timedelta(seconds=30))
    rows = []
    for tokens in sizes:
        x = torch.randn(tokens, hidden).to(torch.bfloat16)
        header = torch.tensor([0, tokens, 0])
        samples = []
        for _ in range(repeat + 1):
            start = time.perf_counter()
            sends = link.post([header], TAG_HEADER) + link.post([x], TAG_DATA)
            _, work = link.receive(x.shape, x.dtype, TAG_OUT)
            Link.wait(sends + [work])
            samples.append(time.perf_counter() - start)
        rows.append((tokens, tokens * hidden * 2, statistics.median(samples[1:])))
    Link.wait(link.post([torch.tensor([-1, 0, 0])], TAG_HEADER))
    far.join(30)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.afd", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--micro-batches", default="1,2")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--ffn-threads", type=int, default=None,
                   help="torch threads of the FFN worker (default: torch's)")
    p.add_argument("--engine-cores", default=None, help="AFD runs: the attention engine's "
                   "cores (VLLM_CPU_OMP_THREADS_BIND, e.g. 0)")
    p.add_argument("--ffn-cores", default=None, help="AFD runs: the FFN worker's cores "
                   "(taskset -c, e.g. 1)")
    p.add_argument("--transport", action="store_true", help="time the link alone")
    p.add_argument("--hidden", type=int, default=576, help="--transport: hidden size "
                   "(default: SmolLM2-135M's)")
    args = p.parse_args(argv)
    if args.transport:
        rows = transport_round_trips(args.hidden, [1, 4, 16, 64, 256, 1024, 4096], 200)
        print(f"link round trip (header + message there, message back), hidden "
              f"{args.hidden}, bf16, gloo on loopback, median of 200")
        print("| tokens | bytes each way | round trip us | GB/s (both ways) |")
        print("| ---: | ---: | ---: | ---: |")
        for tokens, size, rt in rows:
            print(f"| {tokens} | {size:,} | {rt * 1e6:.0f} | {2 * size / rt / 1e9:.2f} |")
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="afd-bench-"))
    runs = {"monolithic": run_config("monolithic", args, workdir, None)}
    for k in (int(x) for x in args.micro_batches.split(",")):
        runs[f"afd 1:1, {k} micro-batch{'es' if k > 1 else ''}"] = run_config(
            f"afd-mb{k}", args, workdir, k)
    base = runs["monolithic"]
    print(f"\nbatch {args.batch}, prompt {args.prompt_tokens}, {args.tokens} tokens, "
          f"{args.dtype}, median of {args.repeat} rounds")
    print("| configuration | TPOT ms | tokens/s | TPOT vs monolithic | throughput vs "
          "monolithic | bytes per token per layer, each way |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in runs.items():
        moved = r.get("bytes_per_token_layer")
        print(f"| {name} | {r['tpot'] * 1e3:.2f} | {r['throughput']:.1f} | "
              f"{r['tpot'] / base['tpot']:.2f}x | {r['throughput'] / base['throughput']:.2f}x "
              f"| {f'{moved:.0f}' if moved else '-'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
