"""The RAG path and the context strategies without the engine: the real served-model
tokenizer, the real chunk encoder, the in-process store and a real Redis server."""

from __future__ import annotations

import asyncio
import random

import pytest
import torch

from loadtests.haystack import sentences
from server.context.base import Context, message_text
from server.context.rag import Rag
from server.context.truncate_middle import TruncateMiddle
from server.errors import ContextLengthExceeded, LongserveError
from server.rag.chunking import chunk_document, split_sentences
from server.rag.config import RagConfig
from server.rag.encoder import Encoder
from server.rag.pipeline import Document, compress_sense_expand
from server.rag.store import CachedEncoder, MemoryStore, RedisStore

NEEDLE = "The archive code of the Golden Falcon Works is 731904."
QUESTION = "What is the archive code of the Golden Falcon Works?"


@pytest.fixture(scope="module")
def encoder():
    return Encoder()


def haystack(seed: int, n: int, needle_at: int | None = None) -> str:
    units = sentences(random.Random(seed), n)
    if needle_at is not None:
        units.insert(needle_at, NEEDLE)
    return " ".join(units)


def documents() -> list[Document]:
    return [Document(f"doc-{i}", haystack(i, 30, needle_at=17 if i == 5 else None))
            for i in range(8)]


def test_sentences_and_chunks_keep_the_text(tokenizer):
    text = haystack(1, 40) + "\n\nA heading without a stop\n" + "word " * 400
    assert "".join(split_sentences(text)) == text
    chunks = chunk_document(0, text, tokenizer, 64)
    assert "".join(c.text for c in chunks) == text
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(c.tokens <= 64 for c in chunks)
    assert all(len(tokenizer.encode(c.text)) <= 64 + 4 for c in chunks)  # seams re-tokenize


@pytest.mark.parametrize("options, message", [
    ({"mode": "summarize"}, "unknown rag mode 'summarize'"),
    ({"expand": 0}, "expand is a share"),
    ({"expand": 1.5}, "expand is a share"),
    ({"chunk_tokens": 8}, "chunk_tokens must be in"),
    ({"expand_tokens": 0}, "expand_tokens must be at least 1"),
    ({"chunk_tokens": "big"}, "wrong type"),
    ({"top_k": 3}, "unknown rag option"),
    ({"cache": "no"}, "wrong type"),
])
def test_rag_options_are_validated(options, message):
    with pytest.raises(ValueError, match=message):
        RagConfig.from_dict(options)


def test_the_chunk_the_question_needs_is_expanded(tokenizer, encoder):
    docs = documents()
    cached = CachedEncoder(encoder, MemoryStore())
    plan = compress_sense_expand(docs, QUESTION, RagConfig(expand=0.1, mode="drop"),
                                 tokenizer, cached)
    p = plan.provenance
    assert p["documents"] == 8 and p["chunks"] > 16
    assert "doc-5" in {e["document"] for e in p["expanded"]}
    best = max(p["expanded"], key=lambda e: e["score"])
    assert best["document"] == "doc-5"
    assert NEEDLE in plan.context
    assert p["expanded_tokens"] <= 0.1 * p["document_tokens"] + 128
    assert len(tokenizer.encode(plan.context)) < 0.2 * p["document_tokens"]
    assert p["dropped_chunks"] == p["chunks"] - len(p["expanded"]) and "left out" in plan.context
    # expanded chunks keep the documents' order
    order = [(int(e["document"].split("-")[1]), e["chunk"]) for e in p["expanded"]]
    assert order == sorted(order)


def test_extractive_mode_keeps_the_closest_sentence_of_every_other_chunk(tokenizer, encoder):
    docs = documents()
    cached = CachedEncoder(encoder, MemoryStore())
    drop = compress_sense_expand(docs, QUESTION, RagConfig(expand=0.1, mode="drop"),
                                 tokenizer, cached)
    extractive = compress_sense_expand(docs, QUESTION, RagConfig(expand=0.1, mode="extractive"),
                                       tokenizer, cached)
    p = extractive.provenance
    assert p["expanded"] == drop.provenance["expanded"]
    assert p["compressed_chunks"] == p["chunks"] - len(p["expanded"]) and p["dropped_chunks"] == 0
    full = sum(len(tokenizer.encode(d.text)) for d in docs)
    assert len(tokenizer.encode(drop.context)) < len(tokenizer.encode(extractive.context)) < full
    assert all(f"Document doc-{i}:" in extractive.context for i in range(8))


def test_refrag_plan_keeps_every_document_and_marks_every_left_out_run(tokenizer, encoder):
    from server.rag.splice import Markers

    docs = documents()
    cached = CachedEncoder(encoder, MemoryStore())
    drop = compress_sense_expand(docs, QUESTION, RagConfig(expand=0.1), tokenizer, cached)
    markers = Markers()
    plan = compress_sense_expand(docs, QUESTION, RagConfig(expand=0.1, mode="refrag"),
                                 tokenizer, cached, marker=markers)
    p = plan.provenance
    assert p["expanded"] == drop.provenance["expanded"] and NEEDLE in plan.context
    assert p["compressed_chunks"] == p["chunks"] - len(p["expanded"]) and p["dropped_chunks"] == 0
    assert all(f"Document doc-{i}:" in plan.context for i in range(8))  # none left out whole
    expanded = {(e["document"], e["chunk"]) for e in p["expanded"]}
    assert sorted(i for run in plan.runs for i in run) == [
        i for i, c in enumerate(_chunks(docs, tokenizer))
        if (docs[c.document].id, c.index) not in expanded]
    assert all(b == a + 1 for run in plan.runs for a, b in zip(run, run[1:]))  # consecutive
    at = [plan.context.index(markers.text(j)) for j in range(len(plan.runs))]
    assert at == sorted(at) and markers.count == len(plan.runs)
    assert plan.vectors.shape == (p["chunks"], encoder.dim)
    assert "left out" not in plan.context


def _chunks(docs, tokenizer):
    from server.rag.pipeline import chunk_documents

    return chunk_documents(docs, tokenizer, RagConfig().chunk_tokens)


def test_splice_puts_the_rows_where_the_markers_were_rendered(tokenizer):
    from vllm.renderers.chat_utils import PROMPT_EMBEDS_PLACEHOLDER_TOKEN

    from server.rag.splice import Markers, Splice, splice

    tokenizer.add_special_tokens({"additional_special_tokens": [PROMPT_EMBEDS_PLACEHOLDER_TOKEN]})
    placeholder = tokenizer.convert_tokens_to_ids(PROMPT_EMBEDS_PLACEHOLDER_TOKEN)
    markers = Markers()
    first, second = markers.text(0), markers.text(1)
    rows = [torch.randn(4, 576), torch.randn(6, 576)]
    text = f"Documents:\n\nDocument a:\nOne.\n{first}\nTwo.\n\nDocument b:\n{second}\n\nQ?"
    plain = text.replace(f"\n{first}", "").replace(f"\n{second}", "")
    render = lambda t: tokenizer.apply_chat_template(  # noqa: E731
        [{"role": "user", "content": t}], tokenize=True, return_dict=False,
        add_generation_prompt=True)
    out = splice({"type": "token", "prompt_token_ids": render(text), "cache_salt": "s"},
                 [Splice(first, rows[0]), Splice(second, rows[1])], tokenizer, torch.bfloat16)
    ids, mask = out["prompt_token_ids"], torch.tensor(out["is_token_ids"])
    assert out["type"] == "embeds" and out["cache_salt"] == "s"
    assert len(ids) == len(mask) == len(out["prompt_embeds"]) == len(render(plain)) + 2 + 10
    spans = [i for i, tok in enumerate(ids) if tok == placeholder]
    assert spans == [i for i, keep in enumerate(mask.tolist()) if not keep] and len(spans) == 10
    assert torch.equal(out["prompt_embeds"][spans[:4]], rows[0].to(torch.bfloat16))
    assert torch.equal(out["prompt_embeds"][spans[4:]], rows[1].to(torch.bfloat16))
    assert not out["prompt_embeds"][mask].any()  # token positions: the model embeds them
    # the text around the rows is the rendered text, each marker gone
    decoded = tokenizer.decode([t for t in ids if t != placeholder])
    assert decoded == tokenizer.decode(render(text)).replace(first, "").replace(second, "")
    with pytest.raises(RuntimeError, match="not in the rendered prompt"):
        splice({"type": "token", "prompt_token_ids": render(plain)},
               [Splice(first, rows[0])], tokenizer, torch.bfloat16)


def small_projection(directory):
    """An untrained projection for the default model's width (576), saved in `directory`."""
    from server.rag.projection import ChunkProjection, ProjectionMeta

    meta = ProjectionMeta(encoder="all-MiniLM-L6-v2", encoder_dim=384, model="m",
                          hidden_size=576, vectors=2, width=32, chunk_tokens=64)
    projection = ChunkProjection(meta, embedding_rms=0.05)
    projection.save(directory)
    return projection


def test_projection_artifact_round_trips_and_is_checked(tmp_path):
    from server.rag.projection import META, load_projection, read_meta

    projection = small_projection(tmp_path / "p")
    loaded = load_projection(tmp_path / "p", "all-MiniLM-L6-v2", 576)
    x = torch.nn.functional.normalize(torch.randn(3, 384), dim=-1)
    assert torch.equal(loaded.rows(x), projection.rows(x)) and loaded.rows(x).shape == (6, 576)
    assert 0.001 < float(projection.rows(x).std()) < 0.2  # the scale of token embeddings
    with pytest.raises(ValueError, match="hidden size 576"):
        load_projection(tmp_path / "p", "all-MiniLM-L6-v2", 960)
    with pytest.raises(ValueError, match="longserve train refrag"):
        read_meta(tmp_path / "missing")
    (tmp_path / "p" / META).write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="is not a longserve-refrag-projection"):
        read_meta(tmp_path / "p")


def test_training_examples_are_what_the_server_renders(tokenizer, encoder):
    import re

    from server.rag.train import Examples, documents, parse_mix

    examples = Examples(documents(2, 5), tokenizer, encoder, 64, target=48)
    rng = random.Random(1)
    recon = examples.draw(rng, "reconstruct")
    assert recon.segments[0] == examples.prefix and recon.segments[1][0].shape == (1, 384)
    assert recon.target == recon.segments[1][1][:48]
    qa = examples.draw(rng, "qa")
    answer = tokenizer.decode(qa.target)
    assert re.fullmatch(r" \d{6}\.", answer)
    text_only = tokenizer.decode([t for s in qa.segments if isinstance(s, list) for t in s])
    everything = tokenizer.decode([t for s in qa.segments
                                   for t in (s if isinstance(s, list) else s[1])])
    assert answer.strip(" .") in text_only  # the answer's chunk is text, not rows
    assert any(not isinstance(s, list) for s in qa.segments)
    assert text_only.startswith("<|im_start|>") and "Documents:\n\nDocument record-0:" in text_only
    assert everything.rstrip().endswith("The archive code of " + re.search(
        r"archive code of (.+?)\?", everything)[1] + " is")
    assert parse_mix("reconstruct=1,qa=2") == {"reconstruct": 1.0, "qa": 2.0}
    with pytest.raises(ValueError, match="unknown objective"):
        parse_mix("summarize")


def test_train_refrag_writes_a_projection_the_server_loads(tmp_path):
    """Tiny runs of the real command (decoder, encoder, generated text): a first stage,
    then a second one started from it with the question-answering objective."""
    import json
    import subprocess
    import sys

    from server.rag.projection import load_projection

    def train(out, *args):
        proc = subprocess.run(
            [sys.executable, "-m", "server.cli", "train", "refrag", "--out", str(out),
             "--steps", "2", "--documents", "3", "--batch", "2", "--held-out", "4", *args],
            capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads((out / "projection.json").read_text())["training"]

    first = train(tmp_path / "one", "--width", "64", "--objectives", "reconstruct")
    losses = first["held_out_loss"]["after"]["reconstruct"]
    assert set(losses) == {"none", "projection", "raw"}
    assert losses["raw"] < losses["none"]  # the chunks as text help the decoder
    second = train(tmp_path / "two", "--init", str(tmp_path / "one"), "--objectives",
                   "continue,qa=2")
    assert second["objectives"] == {"continue": 1.0, "qa": 2.0}
    assert second["init"]["training"] == first
    assert set(second["held_out_loss"]["before"]) == {"continue", "qa"}
    projection = load_projection(tmp_path / "two", "all-MiniLM-L6-v2", 576)
    assert projection.meta.vectors == 2 and projection.meta.width == 64


def test_everything_fits_means_no_encoding(tokenizer):
    class NoEncoder:
        name = "none"

        def encode(self, texts):
            raise AssertionError("nothing to sense when every chunk is expanded")

    docs = documents()
    plan = compress_sense_expand(docs, QUESTION, RagConfig(expand=1.0), tokenizer, NoEncoder())
    assert plan.provenance["expanded_tokens"] == plan.provenance["document_tokens"]
    assert all(split_sentences(d.text)[0].strip() in plan.context for d in docs)
    assert plan.context.count("Document doc-") == 8 and "left out" not in plan.context


def test_encodings_are_cached_by_content(encoder):
    lookups = []
    cached = CachedEncoder(encoder, MemoryStore(), on_lookup=lambda h, m: lookups.append((h, m)))
    texts = ["alpha beta", "gamma delta", "alpha beta"]
    first, hits, encoded = cached.encode(texts)
    assert (hits, encoded) == (0, 2)
    assert torch.equal(first[0], first[2])
    again, hits, encoded = cached.encode(texts[::-1])
    assert (hits, encoded) == (2, 0) and torch.equal(again, first.flip(0))
    torch.testing.assert_close(first, encoder.encode(texts))
    assert lookups == [(0, 2), (2, 0)]
    _, hits, encoded = cached.encode(["alpha beta", "epsilon"], cache=False)
    assert (hits, encoded) == (0, 2) and cached.store.get(["epsilon"]) == [None]


def test_memory_store_forgets_least_recently_used():
    store = MemoryStore(capacity=2)
    store.put({"a": b"1", "b": b"2"})
    store.get(["a"])
    store.put({"c": b"3"})
    assert store.get(["a", "b", "c"]) == [b"1", None, b"3"]


def test_redis_store_shares_encodings_between_servers(encoder, redis_url):
    import redis

    first, _, encoded = CachedEncoder(encoder, RedisStore(redis_url)).encode(["one", "two"])
    assert encoded == 2
    keys = redis.Redis.from_url(redis_url).keys("longserve:chunk:all-MiniLM-L6-v2:*")
    assert len(keys) == 2
    other = CachedEncoder(encoder, RedisStore(redis_url))  # another replica, same Redis
    second, hits, encoded = other.encode(["two", "one"])
    assert (hits, encoded) == (2, 0) and torch.equal(second, first.flip(0))


def context(tokenizer, encoder, window: int, max_tokens: int | None = 32) -> Context:
    return Context(tokenizer=tokenizer, max_model_len=window, requested_tokens=max_tokens,
                   template_kwargs={"add_generation_prompt": True},
                   encoder=CachedEncoder(encoder, MemoryStore()))


class Chat:
    def __init__(self, messages):
        self.messages, self.rag = messages, None


def long_chat(needle_at: int) -> list[dict]:
    return [{"role": "system", "content": "You answer from the text."},
            {"role": "user", "content": f"Read the records.\n\n{haystack(3, 150, needle_at)}"
                                        f"\n\nQuestion: {QUESTION}"}]


def test_truncate_middle_keeps_head_tail_and_room(tokenizer, encoder):
    ctx = context(tokenizer, encoder, 512)
    chat = Chat(long_chat(needle_at=2))
    before = ctx.count(chat.messages)
    applied = asyncio.run(TruncateMiddle().apply(chat, ctx))
    text = message_text(chat.messages[1])
    assert applied["changed"] and applied["message"] == 1
    assert ctx.count(chat.messages) == applied["fitted_tokens"] <= 512 - 32
    assert applied["dropped_tokens"] >= before - (512 - 32)
    assert chat.messages[0]["content"] == "You answer from the text."
    assert text.startswith("Read the records.") and text.endswith(QUESTION)
    assert f"[... {applied['dropped_tokens']} tokens left out ...]" in text
    assert NEEDLE in text  # near the head: kept


def test_truncate_middle_leaves_a_fitting_prompt_alone(tokenizer, encoder):
    chat = Chat([{"role": "user", "content": "hi"}])
    applied = asyncio.run(TruncateMiddle().apply(chat, context(tokenizer, encoder, 512)))
    assert applied == {"name": "truncate_middle", "changed": False,
                       "prompt_tokens": applied["prompt_tokens"]}
    assert chat.messages == [{"role": "user", "content": "hi"}]


def test_truncate_middle_says_when_it_cannot(tokenizer, encoder):
    chat = Chat([{"role": "system", "content": haystack(4, 60)},
                 {"role": "user", "content": haystack(5, 100)}])
    with pytest.raises(ContextLengthExceeded, match="without the longest message"):
        asyncio.run(TruncateMiddle().apply(chat, context(tokenizer, encoder, 512)))


def test_rag_strategy_reads_the_input_as_a_document(tokenizer, encoder):
    ctx = context(tokenizer, encoder, 512)
    chat = Chat(long_chat(needle_at=80))  # the middle: truncate_middle would lose it
    applied = asyncio.run(Rag().apply(chat, ctx))
    text = message_text(chat.messages[1])
    assert applied["changed"] and ctx.count(chat.messages) <= 512 - 32
    assert NEEDLE in text and text.startswith("Read the records.") and text.endswith(QUESTION)
    assert applied["rag"]["mode"] == "drop" and applied["rag"]["expanded"]
    lost = Chat(long_chat(needle_at=80))
    asyncio.run(TruncateMiddle().apply(lost, ctx))
    assert NEEDLE not in message_text(lost.messages[1])
    refrag = Chat(long_chat(needle_at=80))
    refrag.rag = {"mode": "refrag"}
    with pytest.raises(LongserveError, match="refrag applies to `documents`"):
        asyncio.run(Rag().apply(refrag, ctx))


@pytest.mark.parametrize("documents, message", [
    ([], "at least one document"),
    (["fine", "  "], r"documents\[1\] is empty"),
    ([{"id": "a"}], "text"),
])
def test_documents_are_validated(documents, message):
    from pydantic import ValidationError

    from server.openai.protocol import LongserveChatCompletionRequest

    with pytest.raises(ValidationError, match=message):
        LongserveChatCompletionRequest(messages=[{"role": "user", "content": "q"}],
                                       documents=documents)
