"""kvpress side by side: the corresponding kvpress presses on the Hugging Face model, on
the prompts of a `bench policies` run (rebuilt from the same generator and seed), scored
the same way.

Runs in its own environment (kvpress pins its own transformers), e.g.:
    python -m venv kvp && kvp/bin/pip install kvpress==0.5.5 torch
    kvp/bin/python -m loadtests.kvpress_side --tasks niah_single --lengths 2048 \\
        --model ~/.cache/longserve/models/SmolLM2-135M-Instruct --budget 0.35 --out DIR
Each prompt is the chat prompt exactly as the server rendered it (template applied, the
assistant's answer prefix continued); the press compresses the whole prompt, question
included, during prefill; decoding is greedy. This module imports no vLLM or server code.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from loadtests.scoring import score

# our policy -> the kvpress press implementing the same paper
PRESSES = {"snapkv": "SnapKVPress", "streaming": "StreamingLLMPress", "tova": "TOVAPress",
           "knorm": "KnormPress"}


def make_press(name: str, budget: float):
    import kvpress

    cls = getattr(kvpress, PRESSES[name])
    return cls(compression_ratio=1 - budget)


def generate(model, tokenizer, prompt: str, press, max_new_tokens: int) -> list[int]:
    import torch
    from transformers import DynamicCache

    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    cache = DynamicCache()
    with torch.inference_mode():
        if press is None:
            out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        else:
            with press(model):
                out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        token = out.logits[0, -1].argmax()
        generated = [int(token)]
        position = ids.shape[1]
        while len(generated) < max_new_tokens and int(token) != tokenizer.eos_token_id:
            out = model(input_ids=token.view(1, 1), past_key_values=cache, use_cache=True,
                        position_ids=torch.tensor([[position]]),
                        cache_position=torch.tensor([position]))
            token = out.logits[0, -1].argmax()
            generated.append(int(token))
            position += 1
    if generated[-1] == tokenizer.eos_token_id:
        generated.pop()
    return generated


def side_by_side(kvpress: dict, policies: dict) -> str:
    """Markdown: per (task, length), the HF full cache and each press beside longserve's
    full cache and the policy of the same paper at the same budget (matched by sample id)."""
    budget = kvpress["config"]["budget"]
    ours = policies["records"]
    ids = {r["id"] for r in kvpress["records"]["hf-full"]}

    def mean(records):
        chosen = [r["score"] for r in records if r["id"] in ids]
        return 100 * sum(chosen) / len(chosen) if chosen else float("nan")

    lines = [f"| method (budget {budget}) | kvpress on HF | longserve on vLLM |",
             "| --- | ---: | ---: |",
             f"| full cache | {mean(kvpress['records']['hf-full']):.1f} | "
             f"{mean(ours['full']):.1f} |"]
    for name in PRESSES:
        label = f"kvpress-{name}@{budget}"
        if label not in kvpress["records"]:
            continue
        mine = ours.get(f"{name}@{budget}")
        lines.append(f"| {name} | {mean(kvpress['records'][label]):.1f} | "
                     f"{mean(mine):.1f} |" if mine else
                     f"| {name} | {mean(kvpress['records'][label]):.1f} | — |")
    return "\n".join(lines) + f"\n\n({len(ids)} samples)\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.kvpress_side", description=__doc__)
    p.add_argument("--tasks", default="niah_single,niah_multikey,niah_multivalue")
    p.add_argument("--lengths", default="2048,4096")
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="as given to `bench policies`")
    p.add_argument("--model", help="Hugging Face model directory (required to run)")
    p.add_argument("--presses", default="snapkv,streaming,tova,knorm")
    p.add_argument("--budget", type=float, default=0.35)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--report", type=Path, metavar="POLICIES_JSON",
                   help="print the side-by-side table of OUT/kvpress.json and this "
                   "`bench policies` result, and exit")
    args = p.parse_args(argv)
    if args.report:
        print(side_by_side(json.loads((args.out / "kvpress.json").read_text()),
                           json.loads(args.report.read_text())))
        return 0
    if not args.model:
        p.error("--model is required to run the presses")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loadtests.tasks import build_samples

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32).eval()
    # the same generator, seed and tokenizer as `bench policies`: the same prompts
    prompts = [vars(s) for s in build_samples(
        args.tasks.split(","), [int(x) for x in args.lengths.split(",")], args.samples,
        args.seed, tokenizer)]
    records: dict[str, list[dict]] = {}
    for label, press_name in [("hf-full", None)] + [
            (f"kvpress-{n}@{args.budget}", n) for n in args.presses.split(",")]:
        press = None if press_name is None else make_press(press_name, args.budget)
        recs = records[label] = []
        started = time.perf_counter()
        for s in prompts:
            text = tokenizer.apply_chat_template(
                s["messages"], tokenize=False, continue_final_message=True)
            tokens = generate(model, tokenizer, text, press, s["max_tokens"])
            prediction = tokenizer.decode(tokens, skip_special_tokens=True)
            recs.append({"id": s["id"], "task": s["task"], "length": s["length"],
                         "tokens": tokens, "prediction": prediction,
                         "score": score(prediction, s["answers"], s["metric"]), "error": None})
        print(f"{label}: {len(recs)} samples in {time.perf_counter() - started:.0f}s, "
              f"score {100 * sum(r['score'] for r in recs) / len(recs):.1f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kvpress.json").write_text(json.dumps(
        {"config": vars(args) | {"out": str(args.out)}, "records": records}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
