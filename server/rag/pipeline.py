"""Sense and expand: score each chunk against the question, expand the best ones within
the budget as raw text in their original order, compress the rest (see `RagConfig`)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
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
    # refrag: the chunks of each left-out run, in the order of their markers in `context`,
    # and every chunk's encoder vector (the projection turns a run into prompt rows)
    runs: list[list[int]] = field(default_factory=list)
    vectors: torch.Tensor | None = None


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


def _left_out(run: list[int]) -> str:
    return f"[... {len(run)} passage{'s' * (len(run) > 1)} left out ...]"


def render(documents: list[Document], chunks: list[Chunk], expanded: set[int],
            extracts: dict[int, str], marker: Callable[[list[int]], str],
            every_document: bool) -> tuple[str, list[list[int]]]:
    """(text, runs): each document's kept chunks in order and `marker(run)` for each run
    of left-out ones; a document with nothing kept is left out whole unless
    `every_document`. `chunks` are grouped by document, in order (chunk_documents)."""
    parts: list[str] = []
    runs: list[list[int]] = []

    def close(run: list[int], pieces: list[str]) -> None:
        if run:
            pieces.append(marker(run))
            runs.append(run)

    for d, group in itertools.groupby(enumerate(chunks), key=lambda item: item[1].document):
        pieces, run, kept = [], [], False
        for i, chunk in group:
            if i not in expanded and i not in extracts:
                run.append(i)
                continue
            close(run, pieces)
            run = []
            pieces.append(chunk.text.strip() if i in expanded else f"... {extracts[i]} ...")
            kept = True
        if kept or every_document:
            close(run, pieces)
            parts.append(f"Document {documents[d].id}:\n" + "\n".join(pieces))
    return "\n\n".join(parts), runs


def documents_message(context: str, question: str) -> str:
    """The last user message once the documents are in it (served and trained alike)."""
    return f"Documents:\n\n{context}\n\n{question}"


def chunk_documents(documents: list[Document], tokenizer, chunk_tokens: int) -> list[Chunk]:
    return [c for d, doc in enumerate(documents)
            for c in chunk_document(d, doc.text, tokenizer, chunk_tokens)]


def compress_sense_expand(documents: list[Document], question: str, config: RagConfig,
                          tokenizer, encoder, chunks: list[Chunk] | None = None,
                          marker: Callable[[list[int]], str] | None = None) -> RagPlan:
    """`encoder.encode(texts) -> ((n, dim) unit vectors, hits, encoded)` (CachedEncoder);
    `chunks`: the documents already chunked with `config.chunk_tokens`; `marker(run)`:
    the text standing for a run of left-out chunks (refrag: where its rows go)."""
    if chunks is None:
        chunks = chunk_documents(documents, tokenizer, config.chunk_tokens)
    total = sum(c.tokens for c in chunks)
    budget = config.expand_tokens or math.ceil(config.expand * total)
    hits = encoded = 0
    if budget >= total:  # everything fits: nothing to sense
        expanded, extracts, scores = set(range(len(chunks))), {}, torch.ones(len(chunks))
        vectors = None
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
    refrag = config.mode == "refrag"
    context, runs = render(documents, chunks, expanded, extracts, marker or _left_out,
                            every_document=refrag)
    left_out = len(chunks) - len(expanded) - len(extracts)  # refrag: all in `runs`
    provenance = {
        "encoder": encoder.name,
        "mode": config.mode,
        "documents": len(documents),
        "chunks": len(chunks),
        "document_tokens": total,
        "expanded_tokens": sum(chunks[i].tokens for i in expanded),
        "expanded": [{"document": documents[chunks[i].document].id, "chunk": chunks[i].index,
                      "score": round(float(scores[i]), 4)} for i in sorted(expanded)],
        "compressed_chunks": len(extracts) + (left_out if refrag else 0),
        "dropped_chunks": 0 if refrag else left_out,
        "encoder_cache": {"hits": hits, "encoded": encoded},
    }
    return RagPlan(context=context, provenance=provenance, runs=runs,
                   vectors=vectors[:-1] if refrag and runs else None)
