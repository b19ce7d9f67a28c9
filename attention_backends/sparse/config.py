"""The sparse prefill backend's settings: one typed config for the CLI (`--attention sparse
--sparse-config '{...}'`), the request body (`"attention": {"name": "sparse", ...}`) and Helm."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

DEFAULT_ENV = "LONGSERVE_ATTENTION"  # the deployment's default, as a request's applied JSON

METHODS = {
    "vertical_slash": "attention_backends.sparse.patterns.vertical_slash.VerticalSlash",
    "block_topk": "attention_backends.sparse.patterns.block_topk.BlockTopK",
    "lsh": "attention_backends.sparse.patterns.lsh.LSH",
}


@dataclass(frozen=True)
class SparseConfig:
    """How a long prefill chunk picks the keys it attends to.

    `density` is the share of each query block's causal key blocks attended (the sink and
    local blocks always are, and count toward it); at 1.0 every block is attended and the
    result is dense attention. With `mass` > 0 a head may attend more than that: per KV
    head and query block, the best blocks until they hold `mass` of the estimated attention
    (FlexPrefill's cumulative-attention cut-off, arXiv:2502.20766), so diffuse heads read
    more and concentrated ones stay at `density`. Chunks whose sequence is shorter than
    `min_len` run dense, and so do the first `dense_layers` decoder layers of every chunk.
    """

    method: str = "vertical_slash"
    density: float = 0.2
    mass: float = 0.0  # 0: off; else the estimated attention share each head must keep
    min_len: int = 3072  # tokens in the sequence (prefix + chunk); shorter runs dense
    # the first decoder layers attend densely: their attention is the least concentrated;
    # 2 keeps 4k prompts at dense quality (BENCHMARKS.md, issue 6, section 8)
    dense_layers: int = 2
    block: int = 128  # tokens per query and key block; engines use their KV cache block
    sink: int = 64  # first tokens every query attends to (attention sinks)
    local: int = 512  # tokens before a query block that it always attends to
    last_q: int = 64  # vertical_slash: queries whose attention estimates the pattern
    columns: int = 0  # vertical_slash: single key positions every later query attends (Triton)
    tables: int = 8  # lsh: hash tables
    bits: int = 6  # lsh: hyperplanes per table (2**bits buckets)

    def __post_init__(self) -> None:
        kinds = {"int": int, "float": (int, float), "str": str}
        for f in fields(self):
            value, kind = getattr(self, f.name), kinds[f.type]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"{f.name} must be {f.type}, got {value!r}")
            if f.type == "int" and value > 2**31 - 1:  # lengths: no context is longer
                raise ValueError(f"{f.name} must be at most {2**31 - 1}, got {value}")
        if self.method not in METHODS:
            raise ValueError(f"unknown sparse method {self.method!r}; one of: "
                             f"{', '.join(METHODS)}")
        if not 0 < self.density <= 1:
            raise ValueError(f"density must be in (0, 1], got {self.density}")
        if not 0 <= self.mass <= 1:
            raise ValueError(f"mass must be in [0, 1], got {self.mass}")
        if self.block < 16 or self.block & (self.block - 1):
            raise ValueError(f"block must be a power of two >= 16, got {self.block}")
        for name in ("min_len", "last_q", "tables", "bits"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("sink", "local", "columns", "dense_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.bits > 16:
            raise ValueError(f"bits must be at most 16, got {self.bits}")

    @classmethod
    def from_dict(cls, values: dict) -> SparseConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown sparse attention parameter(s) {sorted(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)
