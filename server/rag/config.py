"""`rag` request options: typed and validated once, for the request body and the server."""

from __future__ import annotations

import dataclasses
from typing import Any

MODES = ("drop", "extractive", "refrag")


@dataclasses.dataclass(frozen=True)
class RagConfig:
    """chunk_tokens: chunk size in the served model's tokens; expand: share of the
    documents' tokens expanded as raw text, in (0, 1]; expand_tokens: a token budget
    instead (wins over `expand`); mode: what becomes of the other chunks — `drop` (a
    marker says how many passages were left out), `extractive` (each keeps its
    `sentences` sentences closest to the question) or `refrag` (each becomes a few
    embedding rows through the server's trained projection, `--rag-projection`);
    cache: read and write the chunk store (false: encode afresh and keep nothing).
    Defaults: the best measured on the default model (BENCHMARKS.md, issue 7)."""

    chunk_tokens: int = 64
    expand: float = 0.1
    expand_tokens: int | None = None
    mode: str = "drop"
    sentences: int = 1
    cache: bool = True

    def __post_init__(self) -> None:
        for name, kind in (("chunk_tokens", int), ("expand", (int, float)),
                           ("expand_tokens", (int, type(None))), ("mode", str),
                           ("sentences", int), ("cache", bool)):
            value = getattr(self, name)
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
                raise ValueError(f"rag option {name} has the wrong type: {value!r}")
        if not 16 <= self.chunk_tokens <= 1024:
            raise ValueError(f"chunk_tokens must be in [16, 1024], got {self.chunk_tokens}")
        if not 0 < self.expand <= 1:
            raise ValueError(f"expand is a share of the documents' tokens in (0, 1], got "
                             f"{self.expand}; for a token budget use expand_tokens")
        if self.expand_tokens is not None and self.expand_tokens < 1:
            raise ValueError(f"expand_tokens must be at least 1, got {self.expand_tokens}")
        if self.mode not in MODES:
            raise ValueError(f"unknown rag mode {self.mode!r}; valid modes: {', '.join(MODES)}")
        if not 1 <= self.sentences <= 8:
            raise ValueError(f"sentences must be in [1, 8], got {self.sentences}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RagConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown rag option(s) {unknown}; valid: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
