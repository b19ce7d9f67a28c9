"""Writing results: JSON (everything), Markdown (the table a person reads), PNG plots."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def quality_markdown(summary: dict, title: str) -> str:
    has_fid = "fidelity" in summary["overall"]
    head = "| task | length | samples | score |" + (" identical | token agreement |" if has_fid
                                                    else "") + " errors |"
    lines = [f"### {title}", "", head, "|" + " --- |" * (head.count("|") - 1)]
    rows = summary["rows"] + [{"task": "**all**", "length": "", **summary["overall"]}]
    for r in rows:
        cells = [r["task"], str(r["length"]), str(r["samples"]), f"{r['score']:.1f}"]
        if has_fid:
            cells += [_pct(r["fidelity"]["identical"]), _pct(r["fidelity"]["token_agreement"])]
        cells.append(str(r["errors"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


LOAD_ROWS = [
    ("TTFT mean / p50 / p90 / p99 (ms)", "ttft_ms"),
    ("TPOT mean / p50 / p90 / p99 (ms)", "tpot_ms"),
    ("ITL mean / p50 / p90 / p99 (ms)", "itl_ms"),
    ("E2E mean / p50 / p90 / p99 (ms)", "e2e_ms"),
]


def _dist(d: dict) -> str:
    return " / ".join(f"{d[k]:.1f}" for k in ("mean", "p50", "p90", "p99"))


def load_markdown(result: dict, title: str) -> str:
    lines = [f"### {title}", "", "| metric | value |", "| --- | --- |",
             f"| requests (completed) | {result['requests']} ({result['completed']}) |",
             f"| errors by status | {result['errors'] or 'none'} |",
             f"| duration (s) | {result['duration_s']:.1f} |",
             f"| request throughput (req/s) | {result['request_throughput']:.3f} |",
             f"| output token throughput (tok/s) | {result['output_token_throughput']:.1f} |",
             f"| total token throughput (tok/s) | {result['total_token_throughput']:.1f} |",
             f"| goodput (req/s, SLO {result['slo']}) | {result['goodput']:.3f} |"]
    lines += [f"| {label} | {_dist(result[key])} |" for label, key in LOAD_ROWS]
    server = result.get("server_metrics")
    if server and server.get("ttft_mean"):
        lines.append(f"| server TTFT / TPOT mean (ms) | {1000 * server['ttft_mean']:.1f} / "
                     f"{1000 * (server['tpot_mean'] or 0):.1f} |")
        lines.append(f"| client / server TTFT, TPOT | {server['ttft_client_over_server']:.3f}, "
                     f"{server['tpot_client_over_server'] or 0:.3f} |")
    return "\n".join(lines) + "\n"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_quality(runs: list[dict], x: str, path: Path) -> None:
    """Score (and fidelity, where measured) per task against `x`: 'length', or 'x_value'
    (e.g. the KV budget) across several runs."""
    plt = _plt()
    points: dict[str, list[tuple[float, float]]] = {}
    fid: list[tuple[float, float, float]] = []
    for run in runs:
        for row in run["summary"]["rows"]:
            xv = row["length"] if x == "length" else run["config"]["x_value"]
            points.setdefault(row["task"], []).append((xv, row["score"]))
        if "fidelity" in run["summary"]["overall"] and x != "length":
            f = run["summary"]["overall"]["fidelity"]
            fid.append((run["config"]["x_value"], 100 * (f["identical"] or 0),
                        100 * (f["token_agreement"] or 0)))
    if x == "length" and "fidelity" in runs[0]["summary"]["overall"]:
        by_len: dict = {}
        for row in runs[0]["summary"]["rows"]:
            by_len.setdefault(row["length"], []).append(row["fidelity"])
        for length, fs in sorted(by_len.items()):
            fid.append((length, 100 * sum(f["identical"] or 0 for f in fs) / len(fs),
                        100 * sum(f["token_agreement"] or 0 for f in fs) / len(fs)))
    ncols = 2 if fid else 1
    fig, axes = plt.subplots(1, ncols, figsize=(7 * ncols, 4.5), squeeze=False)
    ax = axes[0][0]
    for task, pts in sorted(points.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=task)
    ax.set(xlabel=x, ylabel="score (%)", title="score per task", ylim=(-2, 102))
    ax.legend(fontsize=7)
    if fid:
        fid.sort()
        ax = axes[0][1]
        ax.plot([f[0] for f in fid], [f[1] for f in fid], marker="o", label="identical outputs")
        ax.plot([f[0] for f in fid], [f[2] for f in fid], marker="s", label="token agreement")
        ax.set(xlabel=x, ylabel="%", title="fidelity vs reference", ylim=(-2, 102))
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_load(results: list[dict], path: Path) -> None:
    """TTFT and TPOT distributions per run (one run per concurrency level or rate)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    labels = [r["label"] for r in results]
    for ax, key, title in ((axes[0], "ttft_ms", "TTFT (ms)"), (axes[1], "tpot_ms", "TPOT (ms)")):
        for q, marker in (("p50", "o"), ("p90", "s"), ("p99", "^")):
            ax.plot(labels, [r[key][q] for r in results], marker=marker, label=q)
        ax.set(title=title, xlabel="run")
        ax.legend()
    axes[2].bar(labels, [r["output_token_throughput"] for r in results])
    axes[2].set(title="output tokens/s", xlabel="run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
