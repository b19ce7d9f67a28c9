"""Decode-attention cost on this machine's CPU, kernel level (no engine):

- lightning: one decode step of `kernels.lightning_attention.cpu.decode` (a state update,
  independent of the context) against softmax decode attention (torch SDPA over the
  cached keys, GQA) at the same head shapes, for growing context lengths;
- MFA: `kernels.mfa_decode.cpu.decode` (K/V of the one shared head read once for all
  query heads) against generic paths at the same shapes: torch SDPA with the KV head
  broadcast (`enable_gqa`), SDPA over K/V expanded to every query head (what an MHA
  kernel does with a replicated KV head), and the head-by-head reference.

    python -m loadtests.attention_kernels [--threads N] [--repeat R]

Times are medians of R runs; ratios are against the kernel measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def timed(fn, repeat: int) -> float:
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def lightning(contexts: list[int], repeat: int) -> None:
    from kernels.lightning_attention import cpu, naive

    heads, kv_heads, dim = 64, 8, 128  # MiniMax-Text-01's attention shape
    slopes = naive.slopes_for(heads)
    states = torch.zeros(4, heads, dim, dim)
    slots = torch.tensor([0])
    q, k, v = (torch.randn(1, heads, dim, dtype=torch.bfloat16) for _ in range(3))
    step = timed(lambda: cpu.decode(q, k, v, slopes, states, slots), repeat)
    print(f"\nlightning decode, {heads} heads x {dim}, bf16 inputs, fp32 state: one token")
    print(f"{'context':>8} {'lightning ms':>13} {'softmax ms':>11} {'softmax / lightning':>20}")
    for n in contexts:
        keys = torch.randn(1, kv_heads, n, dim, dtype=torch.bfloat16)
        values = torch.randn(1, kv_heads, n, dim, dtype=torch.bfloat16)
        query = q.view(1, heads, 1, dim)
        soft = timed(lambda: torch.nn.functional.scaled_dot_product_attention(
            query, keys, values, enable_gqa=True), repeat)
        again = timed(lambda: cpu.decode(q, k, v, slopes, states, slots), repeat)
        print(f"{n:>8} {again * 1e3:>13.3f} {soft * 1e3:>11.3f} {soft / again:>20.2f}")
    print(f"(lightning at the first context: {step * 1e3:.3f} ms)")


def mfa(contexts: list[int], repeat: int) -> None:
    from kernels.mfa_decode import cpu, naive
    from kernels.paged_gather.naive import paged_gather

    heads, dim, block = 64, 256, 128  # Step-3's attention: 64 query heads, one KV head
    print(f"\nMFA decode, {heads} query heads x {dim} over 1 shared KV head, bf16, batch 4")
    print(f"{'context':>8} {'mfa ms':>8} {'gqa sdpa ms':>12} {'expanded ms':>12} "
          f"{'reference ms':>13} {'gqa / mfa':>10} {'expanded / mfa':>15} {'ref / mfa':>10}")
    for n in contexts:
        blocks = -(-n // block)
        batch = 4
        k_cache = torch.randn(batch * blocks, block, 1, dim, dtype=torch.bfloat16)
        v_cache = torch.randn(batch * blocks, block, 1, dim, dtype=torch.bfloat16)
        tables = torch.arange(batch * blocks).view(batch, blocks)
        lens = torch.full((batch,), n)
        q = torch.randn(batch, heads, dim, dtype=torch.bfloat16)
        scale = dim ** -0.5

        def generic():
            out = []
            for b in range(batch):
                keys = paged_gather(k_cache, tables[b], n)[:, 0]
                values = paged_gather(v_cache, tables[b], n)[:, 0]
                keys = keys[None].expand(heads, n, dim).contiguous()  # one copy per head
                values = values[None].expand(heads, n, dim).contiguous()
                out.append(torch.nn.functional.scaled_dot_product_attention(
                    q[b][:, None], keys, values, scale=scale))
            return out

        def gqa():  # the KV head broadcast inside SDPA, nothing copied
            out = []
            for b in range(batch):
                keys = paged_gather(k_cache, tables[b], n)[:, 0]
                values = paged_gather(v_cache, tables[b], n)[:, 0]
                out.append(torch.nn.functional.scaled_dot_product_attention(
                    q[b][None, :, None], keys[None, None], values[None, None], scale=scale,
                    enable_gqa=True))
            return out

        fast = timed(lambda: cpu.decode(q, k_cache, v_cache, tables, lens, scale), repeat)
        shared = timed(gqa, repeat)
        gen = timed(generic, max(1, repeat // 4))
        ref = timed(lambda: naive.decode(q, k_cache, v_cache, tables, lens, scale),
                    max(1, repeat // 4))
        print(f"{n:>8} {fast * 1e3:>8.2f} {shared * 1e3:>12.2f} {gen * 1e3:>12.2f} "
              f"{ref * 1e3:>13.2f} {shared / fast:>10.2f} {gen / fast:>15.2f} "
              f"{ref / fast:>10.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.attention_kernels",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    lightning([1024, 4096, 16384, 65536], args.repeat)
    mfa([1024, 4096, 16384], args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
