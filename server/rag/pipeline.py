"""Sense and expand: score each chunk against the question, expand the best ones within
the budget as raw text in their original order, compress the rest (see `RagConfig`)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch

from server.rag.chunking import Chunk, chunk_document
from server.rag.config import RagConfig


@dataclass
class Document:
    id: str
    text: str


@dataclass
class RagPlan:
    context: str  # what replaces the documents in the prompt
    provenance: dict = field(default_factory=dict)


def _select(chunks: list[Chunk], scores: torch.Tensor, budget: int) -> set[int]:
    """Highest scores first while they fit in `budget` tokens; the best chunk always."""
    chosen, used = set(), 0
    for i in torch.argsort(scores, descending=True).tolist():
        if not chosen or used + chunks[i].tokens <= budget:
            chosen.add(i)
            used += chunks[i].tokens
    return chosen


def _extract(chunk: Chunk, vectors: torch.Tensor, query: torch.Tensor, keep: int) -> str:
    """The chunk's `keep` sentences closest to the question, in their order."""
    best = torch.topk(vectors @ query, min(keep, len(chunk.sentences))).indices
    return " ".join(chunk.sentences[i].strip() for i in sorted(best.tolist()))


def _left_out(n: int) -> str:
    return f"[... {n} passage{'s' * (n > 1)} left out ...]"


def _render(documents: list[Document], chunks: list[Chunk], expanded: set[int],
            extracts: dict[int, str]) -> str:
    """Each document with a kept chunk: its kept chunks in order, a marker for each run of
    left-out ones; a document with nothing kept is left out whole. `chunks` are grouped by
    document, in order (chunk_documents)."""
    parts: list[str] = []
    by_document = itertools.groupby(enumerate(chunks), key=lambda item: item[1].document)
    for d, group in by_document:
        pieces, left_out, kept = [], 0, False
        for i, chunk in group:
            if i not in expanded and i not in extracts:
                left_out += 1
                continue
            if left_out:
                pieces.append(_left_out(left_out))
                left_out = 0
            pieces.append(chunk.text.strip() if i in expanded else f"... {extracts[i]} ...")
            kept = True
        if kept:
            if left_out:
                pieces.append(_left_out(left_out))
            parts.append(f"Document {documents[d].id}:\n" + "\n".join(pieces))
    return "\n\n".join(parts)


def chunk_documents(documents: list[Document], tokenizer, chunk_tokens: int) -> list[Chunk]:
    return [c for d, doc in enumerate(documents)
            for c in chunk_document(d, doc.text, tokenizer, chunk_tokens)]


def compress_sense_expand(documents: list[Document], question: str, config: RagConfig,
                          tokenizer, encoder, chunks: list[Chunk] | None = None) -> RagPlan:
    """`encoder.encode(texts) -> ((n, dim) unit vectors, hits, encoded)` (CachedEncoder);
    `chunks`: the documents already chunked with `config.chunk_tokens`."""
    if chunks is None:
        chunks = chunk_documents(documents, tokenizer, config.chunk_tokens)
    total = sum(c.tokens for c in chunks)
    budget = config.expand_tokens or math.ceil(config.expand * total)
    hits = encoded = 0
    if budget >= total:  # everything fits: nothing to sense
        expanded, extracts, scores = set(range(len(chunks))), {}, torch.ones(len(chunks))
    else:
        vectors, hits, encoded = encoder.encode([c.text for c in chunks] + [question],
                                                  config.cache)
        query, scores = vectors[-1], vectors[:-1] @ vectors[-1]
        expanded = _select(chunks, scores, budget)
        extracts = {}
        if config.mode == "extractive":
            rest = [i for i in range(len(chunks)) if i not in expanded]
            texts = [s for i in rest for s in chunks[i].sentences]
            sentence_vectors, more_hits, more_encoded = encoder.encode(texts, config.cache)
            hits, encoded = hits + more_hits, encoded + more_encoded
            start = 0
            for i in rest:
                n = len(chunks[i].sentences)
                extracts[i] = _extract(chunks[i], sentence_vectors[start:start + n], query,
                                       config.sentences)
                start += n
    context = _render(documents, chunks, expanded, extracts)
    return RagPlan(context=context, provenance={
        "encoder": encoder.name,
        "mode": config.mode,
        "documents": len(documents),
        "chunks": len(chunks),
        "document_tokens": total,
        "expanded_tokens": sum(chunks[i].tokens for i in expanded),
        "expanded": [{"document": documents[chunks[i].document].id, "chunk": chunks[i].index,
                      "score": round(float(scores[i]), 4)} for i in sorted(expanded)],
        "compressed_chunks": len(extracts),
        "dropped_chunks": len(chunks) - len(expanded) - len(extracts),
        "encoder_cache": {"hits": hits, "encoded": encoded},
    })
