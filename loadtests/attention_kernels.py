"""Decode-attention cost on this machine's CPU, kernel level (no engine):

- lightning: one decode step of `kernels.lightning_attention.cpu.decode` (a state update,
  independent of the context) against softmax decode attention (torch SDPA over the
  cached keys, GQA) at the same head shapes, for growing context lengths;
- MFA: `kernels.mfa_decode.cpu.decode` (K/V of the one shared head read once for all
  query heads) against generic paths at the same shapes: torch SDPA with the KV head
  broadcast (`enable_gqa`), SDPA over K/V expanded to every query head (what an MHA
  kernel does with a replicated KV head), and the head-by-head reference.

- the shared-KV route as served: the same CPU path reading vLLM's paged CPU cache in
  place, against vLLM's own CPU decode kernel on that cache, for several query widths
  (where the route wins decides `attention_backends.mfa`'s threshold).

    python -m loadtests.attention_kernels [--threads N] [--repeat R] [--only PART]

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


def mfa_vs_vllm(shapes: list[tuple[int, int, str]], batches: list[int], contexts: list[int],
                repeat: int) -> None:
    """The shared-KV route as served (`keys_transposed`: reading vLLM's CPU cache in place)
    against vLLM's own CPU decode kernel on that cache: one KV head, `heads` x `dim`."""
    from vllm import _custom_ops as ops
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    from kernels.mfa_decode import cpu

    block = 128
    print("\nshared-KV route vs vLLM's CPU kernel, decode, one KV head, block 128, lengths "
          "uniform in [n/2, n]")
    print(f"{'heads x dim':>12} {'dtype':>6} {'batch':>6} {'context':>8} {'vllm ms':>9} "
          f"{'route ms':>9} {'vllm / route':>13}")
    for heads, dim, dtype_name in shapes:
        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
        isa = _get_attn_isa(dtype, block, dim)
        for batch in batches:
            for n in contexts:
                gen = torch.Generator().manual_seed(n + batch)
                blocks = batch * -(-n // block)
                kv_cache = torch.zeros(blocks, 1, block, 2 * dim, dtype=dtype)
                halves = kv_cache.view(blocks, 1, 2 * block, dim).chunk(2, dim=2)
                k = torch.randn(blocks * block, 1, dim, generator=gen).to(dtype)
                v = torch.randn(blocks * block, 1, dim, generator=gen).to(dtype)
                ops.cpu_attn_reshape_and_cache(k, v, *halves, torch.arange(blocks * block), isa,
                                               k_scale=1.0, v_scale=1.0, kv_cache_dtype="auto")
                tables = torch.randperm(blocks, generator=gen).int().view(batch, -1)
                lens = torch.randint(n // 2, n + 1, (batch,), generator=gen, dtype=torch.int32)
                starts = torch.arange(batch + 1, dtype=torch.int32)
                q = torch.randn(batch, heads, dim, generator=gen).to(dtype)
                out = torch.empty_like(q)
                scheduler = ops.cpu_attn_get_scheduler_metadata(
                    num_reqs=batch, num_heads=heads, num_kv_heads=1, head_dim=dim,
                    seq_lens=lens, dtype=dtype, query_start_loc=starts, causal=True,
                    sliding_window_size=-1, isa=isa, enable_kv_split=False,
                    kv_cache_dtype="auto")

                def vllm_kernel():
                    ops.cpu_attention_with_kv_cache(
                        query=q, key_cache=halves[0], value_cache=halves[1], output=out,
                        query_start_loc=starts, seq_lens=lens, scale=dim ** -0.5, causal=True,
                        alibi_slopes=None, sliding_window=-1, block_table=tables, softcap=0.0,
                        scheduler_metadata=scheduler, s_aux=None, dynamic_causal=None,
                        k_scale=1.0, v_scale=1.0, kv_cache_dtype="auto")

                storage = kv_cache.view(blocks, 2, block * dim)
                keys = storage[:, 0].view(blocks, 1, dim, block)
                values = storage[:, 1].view(blocks, block, 1, dim)
                slow = timed(vllm_kernel, repeat)
                fast = timed(lambda: cpu.decode(q, keys, values, tables, lens, dim ** -0.5,
                                                keys_transposed=True), repeat)
                print(f"{heads:>5} x {dim:<4} {dtype_name:>6} {batch:>6} {n:>8} "
                      f"{slow * 1e3:>9.2f} {fast * 1e3:>9.2f} {slow / fast:>13.2f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.attention_kernels",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--only", choices=["lightning", "mfa", "mfa-vs-vllm"], default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.only in (None, "lightning"):
        lightning([1024, 4096, 16384, 65536], args.repeat)
    if args.only in (None, "mfa"):
        mfa([1024, 4096, 16384], args.repeat)
    if args.only in (None, "mfa-vs-vllm"):
        mfa_vs_vllm([(64, 256, "bf16"), (64, 256, "fp32"), (64, 128, "bf16"),
                     (32, 128, "bf16"), (16, 128, "bf16")],
                    [1, 8], [1024, 4096, 16384], max(3, args.repeat // 4))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
