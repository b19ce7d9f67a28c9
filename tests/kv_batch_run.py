"""One engine, one batch of four long requests run several times (`python -m
tests.kv_batch_run SPEC.json` prints JSON token ids per run).

Offline (vLLM's `LLM`, every request added before the first step), so each run's steps
have the same shapes: a `full` request's tokens can only change between runs if its
neighbours' policies changed what it computes. Over HTTP the batch's step-by-step shape
depends on arrival times, and on CPU vLLM's greedy outputs follow the batch's shape.
SPEC: {"prompts": [[token ids], ...], "runs": [[policy spec or null per prompt], ...],
"max_tokens": N}; prints one list per run of {"tokens", "logprobs"} per prompt.
"""

from __future__ import annotations

import json
import sys


def main(spec_path: str) -> None:
    from vllm import LLM, SamplingParams
    from vllm.platforms import current_platform

    from cache_policies.registry import SCHEDULER, WORKERS
    from server.model_store import prepare

    spec = json.loads(open(spec_path).read())
    llm = LLM(model=str(prepare()[0]), enforce_eager=True, max_model_len=2048,
              kv_cache_memory_bytes=512 * 2**20, scheduler_cls=SCHEDULER, dtype=spec["dtype"],
              worker_cls=WORKERS[current_platform.device_type], enable_prefix_caching=True)
    results = []
    for index, policies in enumerate(spec["runs"]):
        prompts = [{"prompt_token_ids": ids, "cache_salt": f"run-{index}"}  # cold each run
                   for ids in spec["prompts"]]
        params = [SamplingParams(temperature=0, max_tokens=spec["max_tokens"], ignore_eos=True,
                                 logprobs=0,
                                 extra_args={"longserve": {"kv_policy": p}} if p else None)
                  for p in policies]
        outputs = llm.generate(prompts, params, use_tqdm=False)
        results.append([{"tokens": list(o.outputs[0].token_ids),
                         "logprobs": [d[t].logprob for t, d in zip(o.outputs[0].token_ids,
                                                                   o.outputs[0].logprobs)]}
                        for o in outputs])
    print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
