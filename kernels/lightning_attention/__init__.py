"""Lightning attention (MiniMax-Text-01/M1): softmax-free linear attention with a per-head
exponential decay. `naive.py` is the token-by-token recurrence that defines it and the
block-wise form every fast path computes."""
