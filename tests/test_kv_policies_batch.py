"""`full` requests batched with compressed ones compute what they compute beside `full`
neighbours: the batch is run offline in one engine (tests/kv_batch_run.py), where each
run repeats the same step shapes, so a difference in a `full` request's output is the
neighbours' compaction reaching into its KV (a block freed too early, a copy into the
wrong block, a wrong live length in the batch metadata). A last all-`full` run must match
the first on every request: blocks the policies gave back (packed KIVI blocks among them)
serve later requests without leaving anything behind.

Compared: the first 24 tokens (answer and end of turn) and each token's logprob. Not the
whole generation: past its end of turn (`ignore_eos`) the model meets near-ties, and the
same batch run twice in one engine can flip one (seen at token 30 of a 64-token run,
with and without policies: vLLM's CPU kernels are not bit-reproducible run to run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine

REPO = Path(__file__).resolve().parents[1]
PAIRS = (("snapkv", "kvmerger"), ("h2o", "d2o"), ("chunkkv", "tova"), ("kivi4", "kivi2"),
         ("quest", "shadow4"))
TOKENS = 24
LOGPROB_TOLERANCE = 1e-3  # a corrupted KV moves logprobs by whole units


def policy(name: str) -> dict:
    return {"name": name} if name.startswith("kivi") else {"name": name, "budget": 0.3}


def test_full_requests_unchanged_beside_compressed_ones(tmp_path, tokenizer):
    from loadtests.tasks import build_sample

    prompts = [tokenizer.apply_chat_template(build_sample("niah_single", 1600, i, 13,
                                                          tokenizer).messages,
                                             add_generation_prompt=True, tokenize=True,
                                             return_dict=False)
               for i in range(4)]
    full = [None] * 4
    runs = [full] + [[None, policy(b), None, policy(d)] for b, d in PAIRS] + [full]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"prompts": prompts, "runs": runs, "max_tokens": 32, "dtype": "float32"}))
    proc = subprocess.run([sys.executable, "-m", "tests.kv_batch_run", str(spec)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    results = json.loads(lines[-1].removeprefix("RESULT "))
    baseline = results[0]
    for run, pair in zip(results[1:], PAIRS + (("full", "full"),)):
        for index in range(4):
            out, ref = run[index], baseline[index]
            if index in (0, 2) or pair == ("full", "full"):
                assert out["tokens"][:TOKENS] == ref["tokens"][:TOKENS], (pair, index)
                drift = max(abs(x - y) for x, y in zip(out["logprobs"][:TOKENS],
                                                       ref["logprobs"][:TOKENS]))
                assert drift < LOGPROB_TOLERANCE, (pair, index, drift)
        # the policies did act: a 70% cut or 2-bit KV changes one of the two compressed outputs
        if pair != ("full", "full"):
            assert [run[1]["tokens"], run[3]["tokens"]] != [baseline[1]["tokens"],
                                                            baseline[3]["tokens"]], pair
