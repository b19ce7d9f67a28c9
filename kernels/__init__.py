"""Attention kernels, one folder per op: `naive.py` is the readable PyTorch definition
(fp32), `cpu.py` the fast path on hosts without a GPU, `triton.py` the Triton kernel.
Every fast path is tested against `naive.py`. Nothing here imports vLLM."""
