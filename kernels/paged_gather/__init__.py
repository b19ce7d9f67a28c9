"""Read one sequence's keys (or values) out of a paged KV cache into a contiguous tensor.

Cache layout: (num_blocks, block_size, kv_heads, head_dim), vLLM's layout for one of K or
V on GPUs; a sequence's block table lists its physical blocks in order. (vLLM's CPU cache
tiles each block in an ISA-specific order; the CPU backend reads it through its own
layout map, `attention_backends.policy_aware.cpu`.)"""
