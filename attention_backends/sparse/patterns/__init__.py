"""Pattern estimators, one per file; `make_estimator` builds one from a config."""

from __future__ import annotations

import functools
import importlib

from attention_backends.sparse.config import METHODS, SparseConfig


@functools.lru_cache(maxsize=64)
def make_estimator(config: SparseConfig):
    module, _, name = METHODS[config.method].rpartition(".")
    return getattr(importlib.import_module(module), name)(config)
