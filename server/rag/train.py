"""`longserve train refrag`: fit the chunk projection (server/rag/projection.py) on
REFRAG's (arXiv:2509.01092) objectives, with the decoder and the encoder frozen (see
`Examples`: reconstruct, continue, and question answering over a prompt rendered as the
RAG path renders it); `--init` continues from an earlier stage, as REFRAG's curriculum.

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
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

PREFIX = "Document:\n"
OBJECTIVES = ("reconstruct", "continue", "qa")


def documents(n: int, seed: int) -> list[str]:
    """`n` generated company records (~1k tokens each), disjoint from the benchmarks'."""
    from loadtests.multidoc import companies, record

    rng = random.Random(f"{seed}:refrag-train")
    names = companies(rng, n)
    return [record(random.Random(rng.random()), name, str(rng.randint(100000, 999999)),
                   rng.randint(20, 60)) for name in names]


@dataclass
class Example:
    """The decoder's input as segments — token ids, or chunks (their encoder vectors and
    their raw token ids) that the projection turns into rows — and the target ids."""

    segments: list  # list[list[int] | tuple[torch.Tensor, list[int]]]
    target: list[int]


class Examples:
    """Chunks of the training documents with their encoder vectors; draws examples of
    each objective:

    - reconstruct: a chunk's rows, then the chunk's tokens;
    - continue: the rows of up to three chunks, then the next chunk's tokens;
    - qa: the RAG prompt as the server renders it (chat template, `Documents:`, the
      record holding the answer and one other chunk as text, every other chunk as rows,
      the question and the answer prefix), then the answer. The last objective is
      REFRAG's fine-tuning stage: rows in the prompt must not pull the decoder away from
      the question."""

    def __init__(self, texts: list[str], tokenizer, encoder, chunk_tokens: int, target: int):
        from server.rag.chunking import chunk_document

        self.tokenizer, self.encoder, self.target = tokenizer, encoder, target
        self.chunk_tokens = chunk_tokens
        self.docs = [chunk_document(d, text, tokenizer, chunk_tokens)
                     for d, text in enumerate(texts)]
        self.vectors = encoder.encode([c.text for doc in self.docs for c in doc])
        self.offset, start = [], 0
        for doc in self.docs:
            self.offset.append(start)
            start += len(doc)
        self.prefix = self.encode(PREFIX)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def chunks(self, d: int, indices: list[int]) -> tuple[torch.Tensor, list[int]]:
        return (self.vectors[[self.offset[d] + i for i in indices]],
                [t for i in indices for t in self.encode(self.docs[d][i].text)])

    def draw(self, rng: random.Random, objective: str) -> Example:
        if objective == "qa":
            return self.qa(rng)
        d = rng.randrange(len(self.docs))
        doc = self.docs[d]
        if objective == "reconstruct" or len(doc) < 2:
            i = rng.randrange(len(doc))
            context = [i]
        else:
            i = rng.randrange(1, len(doc))
            context = list(range(max(0, i - rng.randint(1, 3)), i))
        target = self.encode(doc[i].text)[:self.target]
        return Example([self.prefix, self.chunks(d, context)], target)

    def qa(self, rng: random.Random) -> Example:
        """A short multi-record question, rendered as the server renders it."""
        from loadtests.multidoc import INSTRUCTION, companies, record
        from server.rag.pipeline import Document, chunk_documents, documents_message, render
        from server.rag.splice import Markers, find

        names = companies(rng, rng.randint(3, 6))
        codes = [str(rng.randint(100000, 999999)) for _ in names]
        docs = [Document(f"record-{d}", record(random.Random(rng.random()), n, c,
                                               rng.randint(4, 12)))
                for d, (n, c) in enumerate(zip(names, codes))]
        asked = rng.randrange(len(names))
        chunks = chunk_documents(docs, self.tokenizer, self.chunk_tokens)
        answer = next(i for i, c in enumerate(chunks)
                      if c.document == asked and codes[asked] in c.text)
        expanded = {answer, rng.randrange(len(chunks))}  # and one other chunk, or none
        markers = Markers()
        context, runs = render(docs, chunks, expanded, {}, markers, every_document=True)
        vectors = self.encoder.encode([c.text for c in chunks])
        question = f"{INSTRUCTION}\n\nQuestion: What is the archive code of {names[asked]}?"
        messages = [{"role": "user", "content": documents_message(context, question)},
                    {"role": "assistant",
                     "content": f"Answer: The archive code of {names[asked]} is"}]
        ids = self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False,
                                                 continue_final_message=True)
        segments, start = [], 0
        for j, run in enumerate(runs):
            pattern = self.encode(markers.text(j))
            at = find(ids, pattern, start)
            segments.append(ids[start:at])
            segments.append((vectors[run], [t for i in run for t in self.encode(chunks[i].text)]))
            start = at + len(pattern)
        segments.append(ids[start:])
        return Example(segments, self.encode(f" {codes[asked]}."))


def _inputs(model, projection, example: Example, mode: str) -> tuple[torch.Tensor, int]:
    """(input embeddings, where the target starts): chunks as rows (`projection`), as
    their raw tokens (`raw`) or left out (`none`)."""
    embed = model.get_input_embeddings()
    parts = []
    for segment in example.segments:
        if isinstance(segment, list):
            ids = segment
        elif mode == "projection":
            parts.append(projection(segment[0]).reshape(-1, projection.meta.hidden_size))
            continue
        else:
            ids = segment[1] if mode == "raw" else []
        if ids:
            parts.append(embed(torch.tensor(ids)))
    context = sum(len(p) for p in parts)
    parts.append(embed(torch.tensor(example.target)))
    return torch.cat(parts), context


def _loss(model, projection, examples: list[Example], mode: str) -> torch.Tensor:
    """Mean over examples of each one's mean target-token loss (a 6-token answer weighs
    as much as a 48-token chunk)."""
    rows = [_inputs(model, projection, e, mode) for e in examples]
    width = max(len(r) for r, _ in rows)
    inputs = torch.zeros(len(rows), width, rows[0][0].shape[1])
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, (r, _) in enumerate(rows):
        inputs[b, :len(r)], mask[b, :len(r)] = r, 1
    logits = model(inputs_embeds=inputs, attention_mask=mask).logits
    losses = []
    for b, ((r, context), e) in enumerate(zip(rows, examples)):
        predicted = logits[b, context - 1:len(r) - 1]  # each position predicts the next
        losses.append(torch.nn.functional.cross_entropy(predicted, torch.tensor(e.target)))
    return torch.stack(losses).mean()


@torch.no_grad()
def evaluate(model, projection, held_out: dict[str, list[Example]],
             batch: int) -> dict[str, dict[str, float]]:
    out = {}
    for objective, examples in held_out.items():
        out[objective] = {}
        for mode in ("none", "projection", "raw"):
            losses = [float(_loss(model, projection, examples[i:i + batch], mode))
                      for i in range(0, len(examples), batch)]
            out[objective][mode] = round(sum(losses) / len(losses), 4)
    return out


def parse_mix(spec: str) -> dict[str, float]:
    """'reconstruct=1,continue=1,qa=2' -> the objectives' shares of the examples."""
    mix = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, weight = item.partition("=")
        if name not in OBJECTIVES:
            raise ValueError(f"unknown objective {name!r}; valid: {', '.join(OBJECTIVES)}")
        mix[name] = float(weight or 1)
    if not mix or min(mix.values()) < 0 or not sum(mix.values()):
        raise ValueError(f"give objectives with positive weights, e.g. {','.join(OBJECTIVES)}")
    return mix


def train(out: Path, steps: int, batch: int, vectors: int, width: int, lr: float,
          chunk_tokens: int, n_documents: int, seed: int, mix: dict[str, float],
          init: Path | None = None, threads: int | None = None,
          n_held_out: int = 24) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from server.model_store import prepare
    from server.rag.encoder import Encoder
    from server.rag.projection import ChunkProjection, ProjectionMeta, load_projection

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model_dir = prepare()[0]
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    model.requires_grad_(False)
    encoder = Encoder()
    embedding = model.get_input_embeddings().weight
    if init is not None:  # a later stage of the curriculum: start from an earlier one
        projection = load_projection(init, encoder.name, embedding.shape[1])
        meta, earlier = projection.meta, projection.meta.training
        chunk_tokens = meta.chunk_tokens
    else:
        meta = ProjectionMeta(encoder=encoder.name, encoder_dim=encoder.dim,
                              model=Path(model_dir).name, hidden_size=embedding.shape[1],
                              vectors=vectors, width=width, chunk_tokens=chunk_tokens)
        projection = ChunkProjection(meta, embedding_rms=float(embedding.pow(2).mean().sqrt()))
        earlier = None
    projection.train()
    started = time.monotonic()
    examples = Examples(documents(n_documents, seed), tokenizer, encoder, chunk_tokens,
                        target=48)
    # held out: other documents (the projection could learn the training chunks by heart)
    unseen = Examples(documents(max(4, n_documents // 10), seed + 1_000_003), tokenizer,
                      encoder, chunk_tokens, target=48)
    logger.info("%d chunks from %d documents encoded in %.0fs", len(examples.vectors),
                n_documents, time.monotonic() - started)
    rng = random.Random(seed)
    held_out = {name: [unseen.draw(rng, name) for _ in range(n_held_out)] for name in mix}
    names, weights = list(mix), list(mix.values())
    optimizer = torch.optim.AdamW(projection.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)  # linear warm-up, then cosine decay to zero
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        (step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * step / steps))))
    before = evaluate(model, projection, held_out, batch)
    logger.info("held-out loss before training: %s", before)
    started, history = time.monotonic(), []
    for step in range(1, steps + 1):
        drawn = [examples.draw(rng, rng.choices(names, weights)[0]) for _ in range(batch)]
        loss = _loss(model, projection, drawn, "projection")
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
        "steps": steps, "batch": batch, "lr": lr, "seed": seed, "objectives": mix,
        "data": f"{n_documents} generated company records (loadtests.multidoc, seed "
                f"namespace '{seed}:refrag-train'), {len(examples.vectors)} chunks; qa: "
                "3-6 short records per question, drawn from the same seeded generator; "
                f"held out: {n_held_out} examples per objective from other records",
        "held_out_loss": {"before": before, "after": after},
        "seconds": round(time.monotonic() - started, 1),
        **({"init": {"path": str(init), "training": earlier}} if init else {}),
    }
    projection.eval().save(out)
    return meta.training


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level="INFO", format="%(message)s")
    for name in ("steps", "batch", "vectors", "width", "documents", "held_out"):
        if getattr(args, name) < 1:
            raise SystemExit(f"longserve train refrag: --{name} must be at least 1")
    try:
        mix = parse_mix(args.objectives)
    except ValueError as exc:
        raise SystemExit(f"longserve train refrag: --objectives: {exc}") from None
    summary = train(args.out, args.steps, args.batch, args.vectors, args.width, args.lr,
                    args.chunk_tokens, args.documents, args.seed, mix, args.init,
                    args.threads, args.held_out)
    print(f"wrote {args.out}: held-out loss {summary['held_out_loss']}")
    return 0
