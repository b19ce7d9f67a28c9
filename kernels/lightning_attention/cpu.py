"""Lightning attention over a batch as an engine holds it: packed tokens, and one
recurrent state per request in a state cache addressed by slot.

`prefill` runs each sequence's new tokens block-wise (naive.blockwise: matmuls, so the CPU
spends its time in BLAS) from the state its slot holds, or from zero for a request that
starts here, and writes the state back: a chunked prefill is a series of calls. `decode`
advances every request one token in a single batched update. States are float32.
"""

from __future__ import annotations

import torch

from kernels.lightning_attention.naive import blockwise


def prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor,
            query_start_loc: torch.Tensor, state_cache: torch.Tensor,
            state_indices: torch.Tensor, fresh: torch.Tensor, block: int = 256
            ) -> torch.Tensor:
    """q, k, v (T, H, D) packed; query_start_loc (B + 1,); state_cache (slots, H, D, D)
    float32, updated in place; state_indices (B,) slots; fresh (B,) bool: start from zero.
    Returns (T, H, D) in q's dtype."""
    out = torch.empty(q.shape[0], q.shape[1], v.shape[2], dtype=q.dtype, device=q.device)
    starts = query_start_loc.tolist()
    for b, (lo, hi) in enumerate(zip(starts[:-1], starts[1:])):
        slot = int(state_indices[b])
        state = None if bool(fresh[b]) else state_cache[slot]
        out[lo:hi], state_cache[slot] = blockwise(q[lo:hi], k[lo:hi], v[lo:hi], slopes,
                                                  state, block)
    return out


def decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor,
           state_cache: torch.Tensor, state_indices: torch.Tensor) -> torch.Tensor:
    """One token per request: q, k, v (B, H, D); the slots' states advance in place."""
    slots = state_indices.long()
    decay = torch.exp(-slopes.float())[None, :, None, None]
    state = decay * state_cache[slots] + k.float()[..., :, None] * v.float()[..., None, :]
    state_cache[slots] = state
    return torch.einsum("bhd,bhde->bhe", q.float(), state).to(q.dtype)
