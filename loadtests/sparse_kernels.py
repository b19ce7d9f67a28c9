"""Attention-level timing of sparse prefill on CPU: vLLM's dense CPU kernel against the
sparse path (pattern estimate + `paged_sparse_attention`) for one layer of the default
model's shape, at several lengths, in one process. Prints ratios.

    python -m loadtests.sparse_kernels --lengths 2048,4096,7168 --density 0.2
"""

from __future__ import annotations

import argparse
import time

import torch


def _timed(fn, repeat: int) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat


def main(argv: list[str] | None = None) -> None:
    from vllm import _custom_ops as ops
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    from attention_backends.sparse.config import METHODS, SparseConfig
    from attention_backends.sparse.cpu import paged_sparse_attention
    from attention_backends.sparse.patterns import make_estimator

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--lengths", default="2048,4096,7168")
    p.add_argument("--density", type=float, default=0.2)
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    block, dtype, scale = 128, torch.bfloat16, args.dim ** -0.5
    isa = _get_attn_isa(dtype, block, args.dim)
    print("| length | dense ms | method | real density | estimate ms | sparse kernel ms | "
          "attention speed-up |\n| ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for length in map(int, args.lengths.split(",")):
        gen = torch.Generator().manual_seed(length)
        q, k, v = (torch.randn(length, h, args.dim, generator=gen).to(dtype)
                   for h in (args.heads, args.kv_heads, args.kv_heads))
        blocks = -(-length // block)
        cache = torch.zeros(blocks, args.kv_heads, block, 2 * args.dim, dtype=dtype)
        key_cache, value_cache = cache.view(blocks, args.kv_heads, 2 * block, -1).chunk(2, dim=2)
        ops.cpu_attn_reshape_and_cache(k, v, key_cache, value_cache, torch.arange(length), isa)
        table = torch.arange(blocks, dtype=torch.int32)
        starts = torch.tensor([0, length], dtype=torch.int32)
        lens = torch.tensor([length], dtype=torch.int32)
        out = torch.empty_like(q)

        def dense():
            scheduler = ops.cpu_attn_get_scheduler_metadata(
                num_reqs=1, num_heads=args.heads, num_kv_heads=args.kv_heads,
                head_dim=args.dim, seq_lens=lens, dtype=dtype, query_start_loc=starts,
                causal=True, sliding_window_size=-1, isa=isa, enable_kv_split=False)
            ops.cpu_attention_with_kv_cache(
                query=q, key_cache=key_cache, value_cache=value_cache, output=out,
                query_start_loc=starts, seq_lens=lens, scale=scale, causal=True,
                alibi_slopes=None, sliding_window=-1, block_table=table[None], softcap=0,
                scheduler_metadata=scheduler, s_aux=None)

        t_dense = _timed(dense, args.repeat)
        for method in METHODS:
            estimator = make_estimator(SparseConfig(method=method, density=args.density,
                                                    block=block))
            pattern = estimator.estimate(q, k, 0, scale, per_kv_head=True)
            t_est = _timed(lambda: estimator.estimate(q, k, 0, scale, per_kv_head=True),
                           args.repeat)
            t_kernel = _timed(lambda: paged_sparse_attention(
                q, cache, table, pattern, scale, isa, out), args.repeat)
            print(f"| {length} | {1e3 * t_dense:.1f} | {method} | {pattern.density(length):.3f} "
                  f"| {1e3 * t_est:.1f} | {1e3 * t_kernel:.1f} | "
                  f"{t_dense / (t_est + t_kernel):.2f}x |")


if __name__ == "__main__":
    main()
