"""REFRAG's compressed form of a chunk: a small network maps the chunk's encoder vector to
`vectors` rows in the served model's input-embedding space, and those rows take the
chunk's place in the prompt (vLLM's prompt embeddings). Trained with the decoder and the
encoder frozen by `longserve train refrag` (server/rag/train.py); a server loads it with
`--rag-projection DIR` and requests ask for it with `rag.mode = "refrag"`.

The artifact is a directory: `projection.safetensors` (the weights) and
`projection.json` (shapes, the encoder and model it was trained for, how it was trained).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

FORMAT = "longserve-refrag-projection/1"
WEIGHTS, META = "projection.safetensors", "projection.json"


@dataclass
class ProjectionMeta:
    encoder: str  # CachedEncoder.name of the encoder whose vectors it reads
    encoder_dim: int
    model: str  # served model it was trained against (its directory name)
    hidden_size: int
    vectors: int  # embedding rows per chunk
    width: int  # hidden layer of the MLP
    chunk_tokens: int  # chunk size it was trained on
    training: dict = field(default_factory=dict)  # steps, data, losses
    format: str = FORMAT


class ChunkProjection(nn.Module):
    """(n, encoder_dim) unit vectors -> (n, vectors, hidden_size) input embeddings."""

    def __init__(self, meta: ProjectionMeta, embedding_rms: float = 1.0):
        super().__init__()
        self.meta = meta
        self.net = nn.Sequential(nn.Linear(meta.encoder_dim, meta.width), nn.GELU(),
                                 nn.Linear(meta.width, meta.vectors * meta.hidden_size))
        with torch.no_grad():  # start at the scale of the model's own token embeddings
            self.net[2].weight.mul_(embedding_rms / max(float(self.net[2].weight.std()), 1e-6)
                                    / meta.width ** 0.5)
            self.net[2].bias.zero_()

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        # unit vectors scaled to unit-size components, what nn.Linear's init expects
        x = vectors.to(self.net[0].weight.dtype) * self.meta.encoder_dim ** 0.5
        out = self.net(x)
        return out.view(len(vectors), self.meta.vectors, self.meta.hidden_size)

    @torch.no_grad()
    def rows(self, vectors: torch.Tensor) -> torch.Tensor:
        """The prompt rows for consecutive chunks: (n * vectors, hidden_size)."""
        return self(vectors).reshape(-1, self.meta.hidden_size)

    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()},
                  str(directory / WEIGHTS))
        (directory / META).write_text(json.dumps(asdict(self.meta), indent=2) + "\n")


def read_meta(directory: str | Path) -> ProjectionMeta:
    """The artifact's description; ValueError saying what is wrong with it otherwise."""
    directory = Path(directory)
    try:
        raw = json.loads((directory / META).read_text())
    except (FileNotFoundError, NotADirectoryError):
        raise ValueError(f"{directory} holds no {META}: train one with "
                         "`longserve train refrag --out DIR`") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{directory / META} is not JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(f"{directory / META} is not a {FORMAT} artifact")
    try:
        return ProjectionMeta(**raw)
    except TypeError as exc:
        raise ValueError(f"{directory / META}: {exc}") from None


def load_projection(directory: str | Path, encoder: str, hidden_size: int) -> ChunkProjection:
    """The projection saved in `directory`, checked against the server's chunk encoder
    and served model; ValueError saying what is wrong otherwise."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = read_meta(directory)
    if meta.encoder != encoder or meta.hidden_size != hidden_size:
        raise ValueError(f"{directory} was trained for encoder {meta.encoder} and hidden size "
                         f"{meta.hidden_size} ({meta.model}); this server has {encoder} and "
                         f"hidden size {hidden_size}")
    projection = ChunkProjection(meta)
    try:
        projection.load_state_dict(load_file(str(directory / WEIGHTS)))
    except (FileNotFoundError, RuntimeError) as exc:
        raise ValueError(f"{directory / WEIGHTS}: {exc}") from None
    return projection.eval()
