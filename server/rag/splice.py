"""Put REFRAG rows where their chunks were, in the prompt vLLM rendered.

vLLM's own `prompt_embeds` chat parts cannot do it for a text-only model: it moves every
such part to the front of its message. So the RAG path writes a marker per run of
left-out chunks (a random nonce per request: no client text can forge one), vLLM renders
and tokenizes the chat as usual, and the rendered token ids are cut at each marker's
tokens and the run's rows put in their place: an `embeds` engine input in vLLM's mixed
form (token ids where the model embeds tokens, rows where it takes ours).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch


@dataclass
class Splice:
    marker: str  # text written into the message
    rows: torch.Tensor  # (n, hidden_size) what the marker's tokens become


class Markers:
    """Marker texts for one request: called once per run of left-out chunks, in order."""

    def __init__(self) -> None:
        self.nonce, self.count = secrets.token_hex(6), 0

    def text(self, index: int) -> str:
        return f"[[refrag {self.nonce} {index}]]"

    def __call__(self, run: list[int]) -> str:
        self.count += 1
        return self.text(self.count - 1)


def find(ids: list[int], pattern: list[int], start: int) -> int:
    first, n = pattern[0], len(pattern)
    for i in range(start, len(ids) - n + 1):
        if ids[i] == first and ids[i:i + n] == pattern:
            return i
    return -1


def splice(engine_input: dict, splices: list[Splice], tokenizer, dtype: torch.dtype) -> dict:
    """`engine_input` (vLLM's rendered tokens) with each marker replaced by its rows; in
    the token ids the rows show as vLLM's own prompt-embeds placeholder."""
    from vllm.inputs.engine import embeds_input
    from vllm.renderers.chat_utils import PROMPT_EMBEDS_PLACEHOLDER_TOKEN

    placeholder = tokenizer.convert_tokens_to_ids(PROMPT_EMBEDS_PLACEHOLDER_TOKEN)
    ids = list(engine_input["prompt_token_ids"])
    out_ids: list[int] = []
    spans: list[tuple[int, torch.Tensor]] = []  # (where in out_ids, the rows put there)
    start = 0
    for item in splices:
        pattern = tokenizer.encode(item.marker, add_special_tokens=False)
        at = find(ids, pattern, start)
        if at < 0:
            raise RuntimeError(f"refrag marker {item.marker!r} is not in the rendered prompt "
                               "(the chat template changed the message?)")
        out_ids += ids[start:at]
        spans.append((len(out_ids), item.rows))
        out_ids += [placeholder] * len(item.rows)
        start = at + len(pattern)
    out_ids += ids[start:]
    embeds = torch.zeros(len(out_ids), splices[0].rows.shape[1], dtype=dtype)
    is_token = torch.ones(len(out_ids), dtype=torch.bool)
    for at, rows in spans:
        embeds[at:at + len(rows)] = rows.to(dtype)
        is_token[at:at + len(rows)] = False
    return embeds_input(embeds, prompt=engine_input.get("prompt"),
                        cache_salt=engine_input.get("cache_salt"), prompt_token_ids=out_ids,
                        is_token_ids=is_token.tolist())
