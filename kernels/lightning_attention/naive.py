"""Lightning attention, defined by its recurrence, and the block-wise form.

For one head with decay rate `s` (lambda = exp(-s)), the output at position t is

    o_t = sum_{j <= t} lambda^(t - j) (q_t . k_j) v_j

which is the recurrence over a (D_k, D_v) state S:

    S_t = lambda * S_{t-1} + k_t^T v_t,        o_t = q_t S_t.

`recurrent` runs it token by token (the definition; also decode). `blockwise` computes
the same thing B tokens at a time, as MiniMax's lightning kernels do: inside a block a
masked product (q k^T * M) v with M[i, j] = lambda^(i - j) for i >= j; from the blocks before,
lambda^(i + 1) q_i S_prev; then S = lambda^B S_prev + sum_i lambda^(B - 1 - i) k_i^T v_i. A
chunk of chunked prefill is a call with the state the previous chunk returned.

Shapes: q, k, v (T, H, D) for one sequence; slopes (H,); state (H, D, D). The state and
the sums are float32 whatever the inputs' dtype; outputs come back in q's dtype.
"""

from __future__ import annotations

import torch


def _state(state: torch.Tensor | None, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    heads, dk, dv = q.shape[1], q.shape[2], v.shape[2]
    if state is None:
        return torch.zeros(heads, dk, dv, dtype=torch.float32, device=q.device)
    return state.float()


def recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor,
              state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(outputs (T, H, D), the state after the last token)."""
    s = _state(state, q, v).clone()
    decay = torch.exp(-slopes.float())[:, None, None]
    out = torch.empty(q.shape[0], q.shape[1], v.shape[2], dtype=torch.float32, device=q.device)
    for t in range(q.shape[0]):
        s = decay * s + k[t].float()[:, :, None] * v[t].float()[:, None, :]
        out[t] = torch.einsum("hd,hde->he", q[t].float(), s)
    return out.to(q.dtype), s


def blockwise(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor,
              state: torch.Tensor | None = None, block: int = 256
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same outputs and state as `recurrent`, `block` tokens per step."""
    s = _state(state, q, v)
    rate = slopes.float()[:, None]  # (H, 1)
    out = torch.empty(q.shape[0], q.shape[1], v.shape[2], dtype=torch.float32, device=q.device)
    for start in range(0, q.shape[0], block):
        qb, kb, vb = (x[start:start + block].float().transpose(0, 1) for x in (q, k, v))
        n = qb.shape[1]  # this block's length: the last may be short
        i = torch.arange(n, device=q.device, dtype=torch.float32)
        gap = i[:, None] - i[None, :]  # (n, n): i - j
        mask = torch.where(gap >= 0, torch.exp(-rate[:, :, None] * gap.clamp(min=0)),
                           torch.zeros((), device=q.device))  # (H, n, n)
        intra = (qb @ kb.transpose(1, 2) * mask) @ vb  # (H, n, D)
        inter = (qb * torch.exp(-rate * (i + 1))[:, :, None]) @ s
        out[start:start + n] = (intra + inter).transpose(0, 1)
        tail = torch.exp(-rate * (n - 1 - i))[:, :, None]  # lambda^(n - 1 - i)
        s = torch.exp(-rate * n)[:, :, None] * s + (kb * tail).transpose(1, 2) @ vb
    return out.to(q.dtype), s


def slopes_for(heads: int) -> torch.Tensor:
    """MiniMax's per-head decay rates: ALiBi's geometric slopes for `heads` heads (for a
    head count not a power of two, the nearest power's, then every other of the next)."""
    import math

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]

    if math.log2(heads).is_integer():
        rates = power_of_two(heads)
    else:
        closest = 2 ** math.floor(math.log2(heads))
        rates = power_of_two(closest) + power_of_two(2 * closest)[0::2][:heads - closest]
    return torch.tensor(rates, dtype=torch.float32)
