"""`longserve bench compare`: stock vLLM and longserve on the same model, KV memory and
flags, the same workload against both in one invocation, ratios ours / stock."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from loadtests import report
from loadtests.servers import BIN, longserve, stock_vllm

LOAD_KEYS = [("TTFT mean", "ttft_ms", "mean"), ("TTFT p50", "ttft_ms", "p50"),
             ("TTFT p99", "ttft_ms", "p99"), ("TPOT mean", "tpot_ms", "mean"),
             ("TPOT p50", "tpot_ms", "p50"), ("TPOT p99", "tpot_ms", "p99"),
             ("ITL p50", "itl_ms", "p50"), ("E2E mean", "e2e_ms", "mean"),
             ("output tok/s", "output_token_throughput", None),
             ("requests/s", "request_throughput", None)]


def _default_model() -> str:
    subprocess.run([str(BIN / "longserve"), "models", "prepare"], check=True,
                   stdout=subprocess.DEVNULL)
    return subprocess.run([str(BIN / "longserve"), "models", "path"], check=True,
                          capture_output=True, text=True).stdout.strip()


def _value(result: dict, key: str, sub: str | None) -> float:
    return result[key][sub] if sub else result[key]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def load_table(runs: dict[str, list[list[dict]]]) -> tuple[str, list[dict]]:
    """runs[server][round] = one result per level; figures are averaged over rounds."""
    rows, lines = [], ["| level | metric | stock vLLM | longserve | longserve / stock |",
                       "| --- | --- | --- | --- | --- |"]
    for i, level in enumerate(r["label"] for r in runs["stock"][0]):
        for name, key, sub in LOAD_KEYS:
            stock = _mean([_value(rnd[i], key, sub) for rnd in runs["stock"]])
            ours = _mean([_value(rnd[i], key, sub) for rnd in runs["longserve"]])
            ratio = ours / stock if stock else float("nan")
            rows.append({"level": level, "metric": name, "stock": stock, "longserve": ours,
                         "ratio": ratio})
            lines.append(f"| {level} | {name} | {stock:.2f} | {ours:.2f} | {ratio:.3f} |")
    return "\n".join(lines) + "\n", rows


def quality_table(runs: dict[str, list[dict]]) -> tuple[str, list[dict]]:
    from loadtests.quality import summarize

    stock, ours = runs["stock"][0], runs["longserve"][0]
    vs_stock = summarize(ours["records"], stock["records"])["overall"]
    rows = [{"metric": "score (all tasks)", "stock": stock["summary"]["overall"]["score"],
             "longserve": ours["summary"]["overall"]["score"]}]
    lines = ["| metric | stock vLLM | longserve | longserve / stock |", "| --- | --- | --- | --- |",
             f"| score, all tasks | {rows[0]['stock']:.1f} | {rows[0]['longserve']:.1f} | "
             f"{rows[0]['longserve'] / rows[0]['stock'] if rows[0]['stock'] else float('nan'):.3f} |",
             f"| identical greedy outputs vs stock | | {100 * vs_stock['fidelity']['identical']:.1f}% | |",
             f"| token agreement vs stock | | {100 * vs_stock['fidelity']['token_agreement']:.1f}% | |"]
    rows.append({"metric": "fidelity vs stock", **vs_stock["fidelity"]})
    return "\n".join(lines) + "\n", rows


def run_compare(args, workload) -> int:
    model = args.model_path or _default_model()
    name = Path(model.rstrip("/")).name
    flags = shlex.split(args.server_flags)
    common = ["--model", model, "--served-model-name", name, *flags]
    out: Path = args.out
    servers = {
        "stock": stock_vllm(out / "stock-vllm.log", *common,
                            "--kv-cache-memory-bytes", str(args.kv_cache_memory_bytes)),
        "longserve": longserve(out / "longserve.log", *common,
                               "--kv-cache-memory", str(args.kv_cache_memory_bytes)),
    }
    runs: dict[str, list] = {"stock": [], "longserve": []}
    try:
        for srv in servers.values():
            srv.start()
        servers["stock"].wait_ready(ready_path="/health")
        servers["longserve"].wait_ready()
        base_seed = args.seed
        for rnd in range(args.rounds):
            # alternate who goes first, so drift of a noisy machine hits both alike; new
            # prompts each round (both servers get the same ones), so no round is served
            # from the prefix cache another round filled
            order = ["stock", "longserve"] if rnd % 2 == 0 else ["longserve", "stock"]
            args.seed = base_seed + 100_000 * rnd
            for who in order:
                runs[who].append(workload(args, url=servers[who].url, label=f"{who}-r{rnd}"))
    finally:
        for srv in servers.values():
            srv.stop()
    table, rows = (load_table if args.workload == "load" else quality_table)(runs)
    header = (f"## compare {args.workload}: longserve vs stock vLLM {args.rounds} round(s), "
              f"model {name}, KV {args.kv_cache_memory_bytes} bytes, flags `{args.server_flags}`\n")
    print(header + "\n" + table)
    (out / "compare.md").write_text(header + "\n" + table)
    report.write_json(out / "compare.json", {"rows": rows, "config": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}})
    return 0
