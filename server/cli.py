"""`longserve` command line: `serve`, `afd-ffn`, `models prepare`, `bench`, `train`,
`health`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError


def _number(text: str) -> int | float:
    from server.settings import parse_number  # as LONGSERVE_KV_BUDGET is read

    return parse_number(text)


def _serve_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="start the OpenAI-compatible server",
        description="Start the server. Flags not listed here are passed to vLLM's engine "
        "as `vllm serve` reads them (e.g. --dtype, --tensor-parallel-size). Every flag "
        "also reads LONGSERVE_<NAME> from the environment (e.g. LONGSERVE_PORT).",
    )
    add = p.add_argument
    add("--model", help="local Hugging Face model directory or hub id "
        "(default: the embedded SmolLM2-135M-Instruct)")
    add("--served-model-name", help="model name clients send (default: directory name)")
    add("--host", help="bind address (default 0.0.0.0)")
    add("--port", type=int, help="port (default 8000)")
    add("--max-model-len", type=int, help="context length in tokens (default: the model's)")
    add("--api-key", help="require `Authorization: Bearer KEY` (all routes but /health, "
        "/ready); several keys comma-separated, each with its own rate limits")
    add("--kv-cache-memory", help="KV cache size, e.g. 2GiB (default: 2GiB on CPU; on GPU, "
        "vLLM's --gpu-memory-utilization share)")
    add("--max-num-seqs", type=int, help="requests the engine runs at once")
    add("--enforce-eager", action="store_true", default=None,
        help="no graph compilation: starts in seconds instead of minutes")
    add("--max-request-bytes", help="largest request body, e.g. 16MiB (default 16MiB)")
    add("--default-max-tokens", type=int, help="completion tokens a request that sets no "
        "max_tokens may generate (default 2048; vLLM's own: the rest of the context); "
        "requests that set max_tokens get what they ask")
    add("--max-queued-requests", type=int,
        help="waiting requests beyond which new ones get 429 (default 256)")
    add("--max-queued-tokens", type=int, help="prompt tokens waiting for the engine beyond "
        "which new requests get 429 (default 0: no limit)")
    add("--queue-timeout", type=float, help="seconds a request may wait for its first output "
        "before it is aborted with 503 (default 0: no deadline)")
    add("--rate-limit-rpm", type=int, help="requests per minute per API key (default 0: none)")
    add("--rate-limit-tpm", type=int, help="tokens per minute per API key: prompt plus the "
        "completion tokens a request may generate (default 0: none)")
    add("--rate-limit-store", help="rate-limit buckets: memory (default, per replica) or "
        "redis://HOST:PORT[/DB] (shared across replicas)")
    add("--kv-policy", help="default KV cache policy (default: full)")
    add("--kv-budget", type=_number, help="default KV budget: ratio in (0,1] or token count")
    add("--kv-recompress-every", type=int, help="run a request's KV policy again once its "
        "KV has grown this many tokens past the budget while generating (default 1024)")
    add("--kv-offload", help="where retrieval policies (quest, actqkv, shadow4) move the "
        "blocks they are not reading out of the KV memory: none, host (default) or "
        "redis://HOST:PORT/DB")
    add("--cskv", help="directory written by `longserve calibrate cskv`: enables the cskv, "
        "cskv8 and cskv4 KV policies (keys and values stored as low-rank features)")
    add("--attention", help="default prefill attention: dense (default) or sparse "
        "(long prompts attend to the KV blocks an online estimate picks; decode is dense)")
    add("--sparse-config", help="sparse attention parameters as JSON, e.g. "
        "'{\"method\": \"vertical_slash\", \"density\": 0.2, \"min_len\": 2048}' "
        "(methods: vertical_slash, block_topk, lsh); requests may override them")
    add("--context-strategy", help="default long-context strategy for prompts longer than "
        "the window: reject (default), truncate_middle, chain_of_agents or rag")
    add("--chunk-store", help="where RAG chunk encodings are cached: memory (default, "
        "in-process LRU) or redis://HOST:PORT[/DB]")
    add("--rag-max-tokens", type=int,
        help="most document tokens one request may bring (default 262144)")
    add("--rag-projection", help="directory written by `longserve train refrag`: serves "
        "rag mode `refrag` (left-out chunks as embedding rows via vLLM's prompt embeddings)")
    add("--afd-role", help="attention: run every layer's FFN on `longserve afd-ffn` "
        "workers (attention-FFN disaggregation; default none)")
    add("--afd-port", type=int, help="port the FFN workers connect to (default 29600)")
    add("--afd-ffn-workers", type=int, help="FFN workers, each holding a shard of every "
        "layer's FFN (default 1)")
    add("--afd-micro-batches", type=int, help="micro-batches per layer in flight to the "
        "workers (default 2)")
    add("--afd-timeout", type=float, help="seconds an FFN call, or a restarted worker's "
        "rejoin, may take before requests fail (default 10)")
    add("--drain-seconds", type=float, help="on SIGTERM, how long requests in flight may "
        "run before the server stops (default 120; new requests get 503 meanwhile)")
    add("--log-level", help="debug, info, warning, error (default info)")


def _serve(args: argparse.Namespace, vllm_extra: list[str]) -> int:
    import uvicorn

    from server.app import build_app
    from server.drain import DrainingServer
    from server.settings import Settings

    given = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        for err in exc.errors():
            where = "".join(f"--{str(p).replace('_', '-')}: " for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            print(f"longserve serve: {where}{msg}", file=sys.stderr)
        return 2
    from server.engine import vllm_namespace

    try:  # a mistyped vLLM flag fails here, before anything loads (hints: when it loads)
        vllm_namespace(settings, "model", "name", vllm_extra, hints=False)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    except ValueError as exc:  # flags that contradict each other
        print(f"longserve serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = build_app(settings, vllm_extra)
    server = DrainingServer(uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level,
        timeout_graceful_shutdown=30,
    ), app, settings.drain_seconds)
    app.state.server = server
    server.run()
    return app.state.exit_code


def _models(args: argparse.Namespace) -> int:
    from server import model_store

    if args.models_command == "path":
        print(model_store.default_model_dir())
        return 0
    logging.basicConfig(level="INFO", format="%(message)s")
    try:
        path, built = model_store.prepare(force=args.force)
    except model_store.ModelPrepareError as exc:
        print(f"longserve models prepare: {exc}", file=sys.stderr)
        return 1
    print(f"{'prepared' if built else 'already prepared'}: {path}")
    return 0


def _health(args: argparse.Namespace) -> int:
    """0 when the local server answers /health (or /ready) with 200: the image's
    HEALTHCHECK, which has neither curl nor an HTTP client of its own."""
    import os
    import urllib.error
    import urllib.request

    port = args.port or int(os.environ.get("LONGSERVE_PORT", "8000"))
    url = f"http://127.0.0.1:{port}/{'ready' if args.ready else 'health'}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as resp:
            return 0 if resp.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"longserve health: {url}: {exc}", file=sys.stderr)
        return 1


def _afd_ffn_parser(sub) -> None:
    p = sub.add_parser("afd-ffn", help="run an attention-FFN disaggregation FFN worker",
                       description="Hold shard --shard of --shards of every layer's FFN of "
                       "--model and serve it to the attention servers given (each started "
                       "with `longserve serve --afd-role attention`). Reconnects whenever a "
                       "server restarts; a restarted worker rejoins running servers.")
    p.add_argument("--attention", required=True,
                   help="attention servers' AFD addresses, HOST:PORT[,HOST:PORT...]")
    p.add_argument("--model", help="the attention servers' model directory (default: the "
                   "embedded SmolLM2-135M-Instruct)")
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"],
                   help="the attention servers' dtype (default bfloat16)")
    p.add_argument("--device", default="cuda" if _has_cuda() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _afd_ffn(args: argparse.Namespace) -> int:
    from server.afd import ffn_worker
    from server.model_store import prepare

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model = Path(args.model) if args.model else prepare()[0]
    try:
        return ffn_worker.run(model, [a.strip() for a in args.attention.split(",")],
                              args.shard, args.shards, args.dtype, args.device)
    except ValueError as exc:
        print(f"longserve afd-ffn: {exc}", file=sys.stderr)
        return 2


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train what longserve learns (`refrag`: the RAG chunk "
                       "projection served with --rag-projection)")
    tsub = p.add_subparsers(dest="train_command", required=True)
    r = tsub.add_parser("refrag", help="fit the chunk-embedding projection (decoder and "
                        "encoder frozen) on generated text")
    r.add_argument("--out", required=True, type=Path, help="artifact directory to write")
    r.add_argument("--steps", type=int, default=300)
    r.add_argument("--batch", type=int, default=8)
    r.add_argument("--vectors", type=int, default=2, help="embedding rows per chunk")
    r.add_argument("--width", type=int, default=1024, help="hidden width of the projection")
    r.add_argument("--lr", type=float, default=2e-3)
    r.add_argument("--chunk-tokens", type=int, default=64)
    r.add_argument("--documents", type=int, default=200, help="generated training documents")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--objectives", default="reconstruct,continue,qa",
                   help="objectives and their weights, e.g. reconstruct=1,continue=1,qa=2 "
                   "(reconstruct a chunk from its rows; continue a document from them; answer "
                   "a question from a prompt rendered as the RAG path renders it)")
    r.add_argument("--held-out", type=int, default=24,
                   help="held-out examples per objective for the losses reported")
    r.add_argument("--init", type=Path, default=None,
                   help="start from this projection (a later stage of the curriculum)")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _calibrate_parser(sub) -> None:
    p = sub.add_parser("calibrate", help="calibrate what KV policies load (`cskv`: the "
                       "low-rank bases served with --cskv)")
    csub = p.add_subparsers(dest="calibrate_command", required=True)
    c = csub.add_parser("cskv", help="per-layer, per-KV-head bases of keys (before RoPE) "
                        "and values, from the model's activations on generated text")
    c.add_argument("--out", required=True, type=Path, help="artifact directory to write")
    c.add_argument("--rank", required=True, type=int,
                   help="channels kept per key (a multiple of 8 up to head_dim)")
    c.add_argument("--value-rank", type=int, default=None,
                   help="channels kept per value (default: --rank)")
    c.add_argument("--model", default=None, help="model directory (default: the embedded "
                   "default model)")
    c.add_argument("--tokens", type=int, default=16384, help="calibration tokens, held-out "
                   "share included")
    c.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _calibrate(args) -> int:
    from cache_policies.compress.cskv_calibrate import calibrate, summary
    from server.model_store import prepare

    model = Path(args.model) if args.model else prepare()[0]
    try:
        meta = calibrate(model, args.out, args.rank, args.value_rank, tokens=args.tokens,
                         threads=args.threads)
    except ValueError as exc:
        print(f"longserve calibrate cskv: {exc}", file=sys.stderr)
        return 2
    print(summary(meta))
    print(f"wrote {args.out}; serve it with: longserve serve --cskv {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="longserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    models = sub.add_parser("models", help="manage the embedded default model")
    msub = models.add_subparsers(dest="models_command", required=True)
    prep = msub.add_parser("prepare", help="convert the packaged GGUF to a bf16 checkpoint "
                           "(idempotent; rebuilds a corrupted or partial cache)")
    prep.add_argument("--force", action="store_true", help="rebuild even if the cache is valid")
    msub.add_parser("path", help="print where the default model's checkpoint lives")

    sub.add_parser("bench", help="quality and load benchmarks (`longserve bench -h`)",
                   add_help=False)
    _train_parser(sub)
    _calibrate_parser(sub)
    _afd_ffn_parser(sub)
    health = sub.add_parser("health", help="exit 0 if the server on this host is alive "
                            "(--ready: loaded and serving); for container health checks")
    health.add_argument("--ready", action="store_true", help="ask /ready instead of /health")
    health.add_argument("--port", type=int, help="default: $LONGSERVE_PORT or 8000")
    health.add_argument("--timeout", type=float, default=5.0)

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from loadtests.cli import main as bench_main

        return bench_main(argv[1:])
    args, extra = parser.parse_known_args(argv)
    if args.command == "serve":
        return _serve(args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "train":
        from server.rag.train import run as train

        return train(args)
    if args.command == "calibrate":
        return _calibrate(args)
    if args.command == "health":
        return _health(args)
    if args.command == "afd-ffn":
        return _afd_ffn(args)
    return _models(args)


if __name__ == "__main__":
    sys.exit(main())
