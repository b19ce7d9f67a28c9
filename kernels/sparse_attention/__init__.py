"""Causal attention of a chunk of queries over a chosen subset of its keys.

The subset is a `SparsePattern` (the form MInference's kernels take): per query head and
block of `block` queries, a list of key blocks attended in full; per query head, a list
of single key positions ("vertical" columns) attended by every later query. Any
estimator (vertical-slash, block top-k, LSH) produces this one form, so every kernel
serves every estimator.
"""

from kernels.sparse_attention.pattern import SparsePattern

__all__ = ["SparsePattern"]
