"""`longserve bench quality | load | compare | policies | capacity | sparse | rag | context
| plot`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from loadtests import report

LOAD_WAIT_S = 900  # how long a bench waits for a server that is still loading its model


def _common(p: argparse.ArgumentParser, url: bool = True) -> None:
    if url:
        p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", help="model name to send (default: the server's first model)")
    p.add_argument("--api-key", help="bearer key, if the server wants one")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the served model's "
                   "local directory, from /v1/models)")
    p.add_argument("--extra-body", type=json.loads, default={},
                   help='JSON merged into every request, e.g. \'{"kv_policy": {"name": "full"}}\'')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="directory for JSON, Markdown, PNG")
    p.add_argument("--label", default="run", help="name of this run in tables and plots")
    p.add_argument("--no-progress", action="store_true")


def _quality_args(p: argparse.ArgumentParser) -> None:
    from loadtests.tasks import QUALITY_TASKS

    p.add_argument("--tasks", default=",".join(QUALITY_TASKS))
    p.add_argument("--lengths", default="2048,4096", help="prompt lengths in tokens")
    p.add_argument("--samples", type=int, default=20, help="samples per task and length")
    p.add_argument("--concurrency", default="4", help="requests in flight (load: levels "
                   "to sweep, e.g. 1,4)")
    p.add_argument("--reference", type=Path, help="quality.json of the full-cache run on the "
                   "same prompts: fidelity is measured against it")
    p.add_argument("--x-value", type=float, help="this run's position on a plot's x axis "
                   "(e.g. the KV budget) for `bench plot --x x_value`")


def _load_args(p: argparse.ArgumentParser, concurrency: bool = True) -> None:
    p.add_argument("--mode", choices=["open", "closed"], default="closed")
    if concurrency:  # `compare` has one --concurrency for both workloads
        p.add_argument("--concurrency", default="1,4", help="closed loop: levels to sweep")
    p.add_argument("--rate", default="inf", help="open loop: requests/s (several: a sweep)")
    p.add_argument("--burstiness", type=float, default=1.0, help="open loop: gamma shape; "
                   "1 = Poisson")
    p.add_argument("--num-requests", type=int, default=16)
    p.add_argument("--prompt-lens", default="1024:0.5,4096:0.3,7168:0.2",
                   help="prompt length mix, LEN:WEIGHT,...")
    p.add_argument("--output-len", default="64", help="fixed N, or LO-HI sampled uniformly")
    p.add_argument("--ttft-slo", type=float, help="goodput SLO: TTFT seconds")
    p.add_argument("--tpot-slo", type=float, help="goodput SLO: TPOT seconds")


def retry_after_s(value: str | None, default: float = 5.0) -> float:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP date (RFC 9110),
    held between 0 and 60 s; `default` when it is missing or unreadable."""
    import math
    from datetime import datetime, timezone
    from email.utils import parsedate_to_datetime

    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return default
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    return default if math.isnan(seconds) else min(max(seconds, 0.0), 60.0)


def _server_model(url: str, api_key: str | None) -> tuple[str, str]:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + LOAD_WAIT_S
    while True:
        try:
            reply = httpx.get(url.rstrip("/") + "/v1/models", headers=headers, timeout=30)
        except httpx.TransportError as exc:
            raise SystemExit(f"bench: cannot reach {url}: {exc}") from None
        if reply.status_code == 503 and time.monotonic() < deadline:
            # the server answers 503 with Retry-After while the engine loads
            time.sleep(retry_after_s(reply.headers.get("Retry-After")))
            continue
        if reply.status_code != 200:
            raise SystemExit(f"bench: GET {url}/v1/models answered {reply.status_code}: "
                             f"{reply.text[:300]}")
        first = reply.json()["data"][0]
        return first["id"], first.get("root") or first["id"]


def _tokenizer(args, root: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(args.tokenizer or root)


def _task_samples(args, url: str | None = None) -> tuple[str, list]:
    """The served model's name and the task samples the arguments ask for."""
    from loadtests.tasks import build_samples

    model, root = _server_model(url or args.url, args.api_key)
    samples = build_samples(args.tasks.split(","), [int(x) for x in args.lengths.split(",")],
                            args.samples, args.seed, _tokenizer(args, root))
    return args.model or model, samples


def _write_matrix(args, kind: str, model: str, samples: list, settings: dict, rows: list,
                  records: dict, markdown: str) -> dict:
    from loadtests.quality import samples_as_dicts

    result = {"config": {"url": args.url, "model": model, "tasks": args.tasks,
                         "lengths": args.lengths, "samples": args.samples, "seed": args.seed,
                         **settings, "label": args.label},
              "rows": rows, "records": records, "prompts": samples_as_dicts(samples)}
    out = args.out / args.label
    report.write_json(out / f"{kind}.json", result)
    (out / f"{kind}.md").write_text(markdown)
    print(markdown)
    return result


def quality(args, url: str | None = None, label: str | None = None) -> dict:
    from loadtests.quality import run_samples, samples_as_dicts, summarize

    url = url or args.url
    model, samples = _task_samples(args, url)
    records = asyncio.run(run_samples(
        url, model, samples, extra_body=args.extra_body,
        concurrency=int(args.concurrency), api_key=args.api_key,
        progress=not args.no_progress))
    reference = json.loads(args.reference.read_text())["records"] if args.reference else None
    label = label or args.label
    result = {
        "config": {"url": url, "model": model, "tasks": args.tasks,
                   "lengths": args.lengths, "samples": args.samples, "seed": args.seed,
                   "extra_body": args.extra_body, "label": label, "x_value": args.x_value,
                   "reference": str(args.reference) if args.reference else None},
        "summary": summarize(records, reference),
        "records": records,
        "prompts": samples_as_dicts(samples),
    }
    out = args.out / label
    report.write_json(out / "quality.json", result)
    md = report.quality_markdown(result["summary"], f"quality: {label}")
    (out / "quality.md").write_text(md)
    report.plot_quality([result], "length", out / "quality.png")
    print(md)
    return result


def load(args, url: str | None = None, label: str | None = None) -> list[dict]:
    from loadtests.load import make_requests, run_load

    url = url or args.url
    label = label or args.label
    model, root = _server_model(url, args.api_key)
    tokenizer = _tokenizer(args, root)
    levels = args.concurrency.split(",") if args.mode == "closed" else args.rate.split(",")
    results = []
    for i, level in enumerate(levels):
        # fresh prompts per level: repeating them would measure the prefix cache
        requests = make_requests(tokenizer, args.num_requests, args.prompt_lens,
                                 args.output_len, args.seed + 1000 * i)
        result = asyncio.run(run_load(
            url, args.model or model, requests, extra_body=args.extra_body,
            api_key=args.api_key, mode=args.mode, rate=float(level),
            burstiness=args.burstiness, concurrency=int(level) if args.mode == "closed" else 1,
            seed=args.seed, ttft_slo=args.ttft_slo, tpot_slo=args.tpot_slo,
            progress=not args.no_progress))
        result["label"] = f"{'c' if args.mode == 'closed' else 'rate'}={level}"
        result["config"] = {"url": url, "prompt_lens": args.prompt_lens,
                            "output_len": args.output_len, "num_requests": args.num_requests,
                            "seed": args.seed, "extra_body": args.extra_body, "run": label}
        results.append(result)
        print(report.load_markdown(result, f"load: {label}, {result['label']}"))
    out = args.out / label
    report.write_json(out / "load.json", {"runs": results})
    (out / "load.md").write_text("\n".join(
        report.load_markdown(r, f"load: {label}, {r['label']}") for r in results))
    report.plot_load(results, out / "load.png")
    return results


def _parsed_runs(args, parse, *spec):
    """The runs a bench's arguments name, parsed before any model or prompt is loaded; a
    mistake ends the bench with what was wrong, not a traceback."""
    try:
        return parse(*spec)
    except ValueError as exc:
        raise SystemExit(f"bench {args.bench}: {exc}") from None


def policies(args) -> dict:
    from loadtests.policies import matrix_markdown, matrix_summary, parse_runs, run_matrix

    runs = _parsed_runs(args, parse_runs, args.policies, args.budgets)
    model, samples = _task_samples(args)
    records = asyncio.run(run_matrix(
        args.url, model, samples, runs,
        concurrency=int(args.concurrency), api_key=args.api_key, progress=not args.no_progress))
    rows = matrix_summary(records)
    return _write_matrix(args, "policies", model, samples,
                         {"policies": args.policies, "budgets": args.budgets}, rows, records,
                         matrix_markdown(rows, f"KV policies vs full cache: {args.label}"))


def sparse(args) -> dict:
    from loadtests.sparse import parse_runs, run_sparse, sparse_markdown, sparse_summary

    runs = _parsed_runs(args, parse_runs, args.runs, args.sparse_config)
    model, samples = _task_samples(args)
    records = asyncio.run(run_sparse(args.url, model, samples, runs,
                                     api_key=args.api_key, progress=not args.no_progress))
    rows = sparse_summary(records)
    return _write_matrix(args, "sparse", model, samples,
                         {"runs": args.runs, "sparse_config": args.sparse_config}, rows, records,
                         sparse_markdown(rows, f"sparse prefill vs dense: {args.label}"))


def _multidoc_samples(args, model_root: str) -> list:
    from loadtests.multidoc import build_multidoc

    tokenizer = _tokenizer(args, model_root)
    return [build_multidoc(args.documents, int(length), i, args.seed, tokenizer)
            for length in args.lengths.split(",") for i in range(args.samples)]


def rag(args) -> dict:
    from loadtests.rag import ALL, parse_rag_runs, run_rag
    from loadtests.sparse import sparse_markdown, sparse_summary

    runs = _parsed_runs(args, parse_rag_runs, args.runs)
    model, root = _server_model(args.url, args.api_key)
    samples = _multidoc_samples(args, root)
    records = asyncio.run(run_rag(args.url, args.model or model, samples,
                                  runs, api_key=args.api_key,
                                  progress=not args.no_progress))
    rows = sparse_summary(records, reference=ALL)
    args.tasks = "multidoc_qa"
    return _write_matrix(args, "rag", args.model or model, samples,
                         {"runs": args.runs, "documents": args.documents}, rows, records,
                         sparse_markdown(rows, f"RAG path vs every document in the prompt: "
                                         f"{args.label}", reference=ALL))


def context(args) -> dict:
    import dataclasses

    import httpx

    from loadtests.multidoc import single_prompt
    from loadtests.rag import context_markdown, context_summary, run_context
    from loadtests.tasks import build_samples

    model, root = _server_model(args.url, args.api_key)
    tasks = args.tasks.split(",")
    samples = build_samples([t for t in tasks if t != "multidoc_qa"],
                            [int(x) for x in args.lengths.split(",")], args.samples, args.seed,
                            _tokenizer(args, root))
    if "multidoc_qa" in tasks:
        samples += [dataclasses.replace(s, messages=single_prompt(s))
                    for s in _multidoc_samples(args, root)]
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    window = httpx.get(args.url.rstrip("/") + "/info", headers=headers,
                       timeout=30).json()["max_model_len"]
    records = asyncio.run(run_context(args.url, args.model or model, samples,
                                      args.strategies.split(","), api_key=args.api_key,
                                      progress=not args.no_progress))
    rows = context_summary(records)
    return _write_matrix(args, "context", args.model or model, samples,
                         {"strategies": args.strategies, "window": window}, rows, records,
                         context_markdown(rows, f"long-context strategies: {args.label}",
                                          window))


def capacity(args) -> list[dict]:
    from loadtests.capacity import capacity_markdown, run_capacity
    from loadtests.policies import parse_runs

    runs = _parsed_runs(args, parse_runs, args.policies, args.budgets)
    model, root = _server_model(args.url, args.api_key)
    rows = asyncio.run(run_capacity(
        args.url, args.model or model, _tokenizer(args, root),
        runs, num_requests=args.num_requests,
        prompt_len=args.prompt_len, output_len=args.output_len,
        concurrency=args.concurrency, seed=args.seed, api_key=args.api_key,
        shared_document=args.shared_document, progress=not args.no_progress))
    out = args.out / args.label
    report.write_json(out / "capacity.json", {"config": vars(args) | {"out": str(args.out)},
                                              "rows": rows})
    md = capacity_markdown(rows, f"capacity at fixed KV memory: {args.label}")
    (out / "capacity.md").write_text(md)
    print(md)
    return rows


def compare(args) -> int:
    from loadtests.compare import run_compare

    return run_compare(args, {"quality": quality, "load": load}[args.workload])


def plot(args) -> int:
    runs = [json.loads(Path(p).read_text()) for p in args.runs]
    args.out.mkdir(parents=True, exist_ok=True)
    report.plot_quality(runs, args.x, args.out / f"quality-vs-{args.x}.png")
    print(args.out / f"quality-vs-{args.x}.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="longserve bench", description=__doc__)
    sub = parser.add_subparsers(dest="bench", required=True)
    q = sub.add_parser("quality", help="synthetic long-context tasks (RULER/NeedleBench-style)")
    _common(q)
    _quality_args(q)
    ld = sub.add_parser("load", help="streaming load: TTFT, TPOT, ITL, throughput, goodput")
    _common(ld)
    _load_args(ld)
    c = sub.add_parser("compare", help="stock vLLM vs longserve on the same workload")
    c.add_argument("workload", choices=["quality", "load"])
    _common(c, url=False)
    _quality_args(c)
    _load_args(c, concurrency=False)
    c.add_argument("--model-path", help="model for both servers (default: the embedded one)")
    c.add_argument("--kv-cache-memory-bytes", type=int, default=2 << 30,
                   help="KV cache for both servers, bytes")
    c.add_argument("--server-flags", default="--enforce-eager",
                   help="vLLM flags given to both servers; write it with '=': "
                   "--server-flags='--enforce-eager --max-num-seqs 8'")
    c.add_argument("--rounds", type=int, default=2,
                   help="alternate stock/longserve this many times; figures are per round")
    pm = sub.add_parser("policies", help="every KV policy x budget vs the full cache, "
                        "same prompts, one run")
    _common(pm)
    _quality_args(pm)
    pm.add_argument("--policies", default="streaming,snapkv,h2o,tova,kvmerger,d2o")
    pm.add_argument("--budgets", default="0.5,0.35,0.2",
                    help="ratios of the prompt (with a dot) or token counts")
    sp = sub.add_parser("sparse", help="sparse prefill attention vs dense: TTFT, prefill "
                        "throughput, score and fidelity on the same prompts, one run")
    _common(sp)
    _quality_args(sp)
    sp.add_argument("--runs", default="vertical_slash@0.2",
                    help="sparse runs as METHOD@DENSITY[:NAME=VALUE...], comma-separated, e.g. "
                    "`vertical_slash@0.2,vertical_slash@0.1:mass=0.9` (dense always runs first; "
                    "`dense` here sends every sample densely once more: the noise floor)")
    sp.add_argument("--sparse-config", type=json.loads, default={},
                    help='parameters added to every sparse run, e.g. \'{"min_len": 1024}\'')
    rg = sub.add_parser("rag", help="multi-document QA: the RAG path vs every document in "
                        "the prompt: TTFT and score on the same samples, one run")
    _common(rg)
    rg.add_argument("--lengths", default="4096,6144", help="prompt lengths (every document "
                    "in the prompt) in tokens")
    rg.add_argument("--samples", type=int, default=10, help="samples per length")
    rg.add_argument("--documents", type=int, default=24, help="documents per sample (16-32)")
    rg.add_argument("--runs", default="drop@0.1,extractive@0.1",
                    help="RAG runs as MODE@EXPAND_SHARE[/CHUNK_TOKENS], comma-separated "
                    "(`all` always runs)")
    cx = sub.add_parser("context", help="long-context strategies on prompts longer than the "
                        "served window: score, latency, tokens spent")
    _common(cx)
    cx.add_argument("--tasks", default="niah_single,multidoc_qa")
    cx.add_argument("--lengths", default="4096,8192", help="prompt lengths in tokens")
    cx.add_argument("--samples", type=int, default=6, help="samples per task and length")
    cx.add_argument("--documents", type=int, default=24, help="multidoc_qa: documents")
    cx.add_argument("--strategies", default="truncate_middle,rag,chain_of_agents")
    cp = sub.add_parser("capacity", help="requests in flight and throughput at fixed KV "
                        "memory: full vs KV policies")
    _common(cp)
    cp.add_argument("--policies", default="snapkv")
    cp.add_argument("--budgets", default="0.35")
    cp.add_argument("--num-requests", type=int, default=24)
    cp.add_argument("--prompt-len", type=int, default=4096)
    cp.add_argument("--output-len", type=int, default=128)
    cp.add_argument("--concurrency", type=int, default=16)
    cp.add_argument("--shared-document", action="store_true",
                    help="every request asks about one document (prefix-cached after a "
                    "warm-up): decode-bound instead of prefill-bound")
    p = sub.add_parser("plot", help="score and fidelity against length or KV budget")
    p.add_argument("runs", nargs="+", help="quality.json files")
    p.add_argument("--x", choices=["length", "x_value"], default="x_value")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--no-progress", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.bench == "quality":
        quality(args)
    elif args.bench == "load":
        load(args)
    elif args.bench == "policies":
        policies(args)
    elif args.bench == "capacity":
        capacity(args)
    elif args.bench == "sparse":
        sparse(args)
    elif args.bench == "rag":
        rag(args)
    elif args.bench == "context":
        context(args)
    elif args.bench == "compare":
        return compare(args)
    else:
        return plot(args)
    print(f"done in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return 0
