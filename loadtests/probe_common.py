"""What the offline probes (`kv_quant_probe`, `retrieval_probe`) share: the default model
on the Hugging Face side in float32, the harness's samples rendered as the server renders
them, greedy decoding, and the tally of each variant against the full cache on the same
prompts (task score, identical outputs, token agreement)."""

from __future__ import annotations

import time
from typing import Callable


def load_model(**kwargs):
    """(tokenizer, model) of the default model, float32, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from server.model_store import prepare

    path = str(prepare()[0])
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)
    return AutoTokenizer.from_pretrained(path), model.eval()


def greedy(model, ids, tokens: int, edit_cache: Callable | None = None) -> list[int]:
    """`tokens` greedy tokens after the prompt `ids`; `edit_cache(cache)` runs once the
    prompt is prefilled, before the first decode step."""
    import torch

    with torch.no_grad():
        out = model(ids, use_cache=True)
        cache = out.past_key_values
        if edit_cache is not None:
            edit_cache(cache)
        produced = [out.logits[:, -1].argmax(-1, keepdim=True)]
        while len(produced) < tokens:
            out = model(produced[-1], past_key_values=cache, use_cache=True)
            produced.append(out.logits[:, -1].argmax(-1, keepdim=True))
    return [int(token) for token in produced]


def compare(tokenizer, tasks: list[str], length: int, samples: int, seed: int,
            variants: list[str], decode: Callable) -> dict[str, dict]:
    """For each sample (tasks in turn), `decode(name, ids, max_tokens)` for the full cache
    (name None) and each variant; per name the mean score (0-100), identical outputs and
    mean token agreement against the full cache's output."""
    from loadtests.scoring import score, token_agreement
    from loadtests.tasks import build_sample

    rows = {name: {"score": 0.0, "identical": 0, "agreement": 0.0}
            for name in ["full", *variants]}
    start = time.monotonic()
    for index in range(samples):
        sample = build_sample(tasks[index % len(tasks)], length, index // len(tasks), seed,
                              tokenizer)
        prefixed = sample.messages[-1]["role"] == "assistant"  # as the server renders it
        ids = tokenizer.apply_chat_template(
            sample.messages, add_generation_prompt=not prefixed,
            continue_final_message=prefixed, return_tensors="pt", return_dict=True)["input_ids"]
        full = decode(None, ids, sample.max_tokens)
        for name in ["full", *variants]:
            out = full if name == "full" else decode(name, ids, sample.max_tokens)
            row = rows[name]
            row["score"] += score(tokenizer.decode(out, skip_special_tokens=True),
                                  sample.answers, sample.metric)
            row["identical"] += out == full
            row["agreement"] += token_agreement(out, full)
        print(f"{index + 1}/{samples} samples, {time.monotonic() - start:.0f} s", flush=True)
    full_score = 100 * rows["full"]["score"] / samples
    for row in rows.values():
        row["score"] = 100 * row["score"] / samples
        row["of_full"] = f"{row['score'] / full_score:.1%}" if full_score else "-"
        row["identical"] = f"{row['identical']}/{samples}"
        row["agreement"] = f"{row['agreement'] / samples:.1%}"
    return rows
