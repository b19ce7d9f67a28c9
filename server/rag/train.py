"""`longserve train refrag`: fit the chunk projection (server/rag/projection.py) the way
REFRAG (arXiv:2509.01092) starts, with the decoder and the encoder frozen:

- reconstruction: from a chunk's projected rows alone the decoder reads the chunk back;
- continual pre-training: from the projected rows of the chunks before it, the decoder
  continues with the next chunk.

The text is generated (company records of loadtests/multidoc.py among seeded prose, under
a seed namespace the benchmarks do not use), chunked with the server's own chunker and
encoded with the server's encoder. Held-out loss is reported beside the loss with no
chunk rows at all (what the decoder knows without the context) and with the chunks as
raw tokens (what the rows stand in for), and written into the artifact.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import time
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

PREFIX = "Document:\n"


def documents(n: int, seed: int) -> list[str]:
    """`n` generated company records (~1k tokens each), disjoint from the benchmarks'."""
    from loadtests.multidoc import companies, record

    rng = random.Random(f"{seed}:refrag-train")
    names = companies(rng, n)
    return [record(random.Random(rng.random()), name, str(rng.randint(100000, 999999)),
                   rng.randint(20, 60)) for name in names]


class Examples:
    """Chunks of the training documents with their encoder vectors; draws examples."""

    def __init__(self, texts: list[str], tokenizer, encoder, chunk_tokens: int, target: int):
        from server.rag.chunking import chunk_document

        self.tokenizer, self.target = tokenizer, target
        self.docs = [chunk_document(d, text, tokenizer, chunk_tokens)
                     for d, text in enumerate(texts)]
        flat = [c.text for doc in self.docs for c in doc]
        self.vectors = encoder.encode(flat)
        self.offset, start = [], 0
        for doc in self.docs:
            self.offset.append(start)
            start += len(doc)
        self.prefix = tokenizer.encode(PREFIX, add_special_tokens=False)

    def ids(self, chunk) -> list[int]:
        return self.tokenizer.encode(chunk.text, add_special_tokens=False)[:self.target]

    def draw(self, rng: random.Random) -> tuple[torch.Tensor, list[int], list[int]]:
        """(context vectors (m, dim), the context as raw tokens, target token ids)."""
        d = rng.randrange(len(self.docs))
        doc = self.docs[d]
        if rng.random() < 0.5 or len(doc) < 2:  # reconstruction
            i = rng.randrange(len(doc))
            context = [i]
            target = self.ids(doc[i])
        else:  # continuation from up to three chunks before
            i = rng.randrange(1, len(doc))
            context = list(range(max(0, i - rng.randint(1, 3)), i))
            target = self.ids(doc[i])
        vectors = self.vectors[[self.offset[d] + c for c in context]]
        raw = [t for c in context for t in self.tokenizer.encode(
            doc[c].text, add_special_tokens=False)]
        return vectors, raw, target


def _batch(model, projection, items, mode: str):
    """Inputs for the decoder: PREFIX, the context (projected rows, raw tokens, or
    nothing), the target; loss on the target only."""
    embed = model.get_input_embeddings()
    rows, labels = [], []
    for prefix, vectors, raw, target in items:
        parts = [embed(torch.tensor(prefix))]
        if mode == "projection":
            parts.append(projection(vectors).reshape(-1, projection.meta.hidden_size))
        elif mode == "raw":
            parts.append(embed(torch.tensor(raw)))
        context = sum(len(p) for p in parts)
        parts.append(embed(torch.tensor(target)))
        rows.append(torch.cat(parts))
        labels.append([-100] * context + target)
    width = max(len(r) for r in rows)
    hidden = rows[0].shape[1]
    inputs = torch.zeros(len(rows), width, hidden)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    label = torch.full((len(rows), width), -100)
    for b, (r, lab) in enumerate(zip(rows, labels)):
        inputs[b, :len(r)], mask[b, :len(r)] = r, 1
        label[b, :len(lab)] = torch.tensor(lab)
    return inputs, mask, label


def _loss(model, projection, items, mode: str) -> torch.Tensor:
    inputs, mask, labels = _batch(model, projection, items, mode)
    return model(inputs_embeds=inputs, attention_mask=mask, labels=labels).loss


@torch.no_grad()
def evaluate(model, projection, held_out, batch: int) -> dict[str, float]:
    out = {}
    for mode in ("none", "projection", "raw"):
        losses = [float(_loss(model, projection, held_out[i:i + batch], mode))
                  for i in range(0, len(held_out), batch)]
        out[mode] = round(sum(losses) / len(losses), 4)
    return out


def train(out: Path, steps: int, batch: int, vectors: int, width: int, lr: float,
          chunk_tokens: int, n_documents: int, seed: int, threads: int | None) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from server.model_store import prepare
    from server.rag.encoder import Encoder
    from server.rag.projection import ChunkProjection, ProjectionMeta

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model_dir = prepare()[0]
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    model.requires_grad_(False)
    encoder = Encoder()
    started = time.monotonic()
    examples = Examples(documents(n_documents, seed), tokenizer, encoder, chunk_tokens,
                        target=48)
    logger.info("%d chunks from %d documents encoded in %.0fs", len(examples.vectors),
                n_documents, time.monotonic() - started)
    rng = random.Random(seed)
    draw = lambda: (examples.prefix, *examples.draw(rng))  # noqa: E731
    held_out = [draw() for _ in range(64)]
    embedding = model.get_input_embeddings().weight
    meta = ProjectionMeta(encoder=encoder.name, encoder_dim=encoder.dim,
                          model=Path(model_dir).name, hidden_size=embedding.shape[1],
                          vectors=vectors, width=width, chunk_tokens=chunk_tokens)
    projection = ChunkProjection(meta, embedding_rms=float(embedding.pow(2).mean().sqrt()))
    optimizer = torch.optim.AdamW(projection.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)  # linear warm-up, then cosine decay to zero
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        (step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * step / steps))))
    before = evaluate(model, projection, held_out, batch)
    logger.info("held-out loss before training: %s", before)
    started, history = time.monotonic(), []
    for step in range(1, steps + 1):
        loss = _loss(model, projection, [draw() for _ in range(batch)], "projection")
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(projection.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        history.append(loss.item())
        if step % 25 == 0 or step == steps:
            logger.info("step %d/%d loss %.3f (%.1fs/step)", step, steps,
                        sum(history[-25:]) / len(history[-25:]),
                        (time.monotonic() - started) / step)
    after = evaluate(model, projection, held_out, batch)
    logger.info("held-out loss after training: %s", after)
    meta.training = {
        "steps": steps, "batch": batch, "lr": lr, "seed": seed,
        "data": f"{n_documents} generated company records (loadtests.multidoc, seed "
                f"namespace '{seed}:refrag-train'), {len(examples.vectors)} chunks",
        "objectives": "reconstruction and next-chunk continuation, 50/50",
        "held_out_loss": {"before": before, "after": after},
        "seconds": round(time.monotonic() - started, 1),
    }
    projection.save(out)
    return meta.training


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level="INFO", format="%(message)s")
    for name in ("steps", "batch", "vectors", "width", "documents"):
        if getattr(args, name) < 1:
            raise SystemExit(f"longserve train refrag: --{name} must be at least 1")
    summary = train(args.out, args.steps, args.batch, args.vectors, args.width, args.lr,
                    args.chunk_tokens, args.documents, args.seed, args.threads)
    print(f"wrote {args.out}: held-out loss {summary['held_out_loss']}")
    return 0
