"""Documents -> chunks of at most about `chunk_tokens` tokens of the served model, cut at
sentence boundaries (a sentence longer than a chunk is cut by tokens). A chunk's text is
its slice of the document, whitespace included, so expanding every chunk gives the
document back."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SENTENCE = re.compile(r".+?(?:[.!?]+[\"')\]]*(?=\s)|\n\s*\n|$)\s*", re.S)


def split_sentences(text: str) -> list[str]:
    """Sentences with their trailing whitespace; "".join(result) == text."""
    return [m.group(0) for m in _SENTENCE.finditer(text) if m.group(0)]


@dataclass
class Chunk:
    document: int  # index in the request's `documents`
    index: int  # position in its document
    sentences: list[str]
    tokens: int

    @property
    def text(self) -> str:
        return "".join(self.sentences)


def _pieces(sentence: str, ids: list[int], limit: int, tokenizer) -> list[tuple[str, int]]:
    if len(ids) <= limit:
        return [(sentence, len(ids))]
    return [(tokenizer.decode(ids[i:i + limit]), len(ids[i:i + limit]))
            for i in range(0, len(ids), limit)]


def chunk_document(document: int, text: str, tokenizer, chunk_tokens: int) -> list[Chunk]:
    sentences = split_sentences(text)
    ids = tokenizer(sentences, add_special_tokens=False)["input_ids"] if sentences else []
    chunks: list[Chunk] = []
    current: list[str] = []
    size = 0
    for sentence, sentence_ids in zip(sentences, ids):
        for piece, n in _pieces(sentence, sentence_ids, chunk_tokens, tokenizer):
            if current and size + n > chunk_tokens:
                chunks.append(Chunk(document, len(chunks), current, size))
                current, size = [], 0
            current.append(piece)
            size += n
    if current:
        chunks.append(Chunk(document, len(chunks), current, size))
    return chunks
