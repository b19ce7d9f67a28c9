"""The RAG path and the context strategies on the real engine, with the official client:
documents in, provenance out, encodings reused; prompts longer than the window under
each strategy on a small-window server whose chunk store is a real Redis server."""

from __future__ import annotations

import random

import httpx
import openai
import pytest

from loadtests.haystack import sentences
from tests.conftest import API_KEY, FLOAT32, RAG_MAX_TOKENS, longserve_eager, metric_value

pytestmark = pytest.mark.engine

NEEDLE = "The archive code of the Golden Falcon Works is 731904."
QUESTION = "What is the archive code of the Golden Falcon Works?"
WINDOW = 1024


def documents(needle_doc: int = 4, n: int = 8, seed: int = 0) -> list:
    docs = []
    for i in range(n):
        units = sentences(random.Random(f"{seed}:{i}"), 24)
        if i == needle_doc:
            units.insert(11, NEEDLE)
        docs.append({"id": f"doc-{i}", "text": " ".join(units)} if i % 2 else " ".join(units))
    return docs


def ask(client, model, **extra):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=16,
        temperature=0, extra_body={"return_token_ids": True, **extra})


def prompt_text(client, resp) -> str:
    from transformers import AutoTokenizer

    from server.model_store import prepare

    tokenizer = AutoTokenizer.from_pretrained(str(prepare()[0]))
    return tokenizer.decode(resp.model_extra["prompt_token_ids"])


def test_documents_are_sensed_and_the_needed_one_expanded(client, model_name):
    docs = documents(seed=1)
    everything = ask(client, model_name, documents=docs, rag={"expand": 1.0})
    resp = ask(client, model_name, documents=docs, rag={"expand": 0.1, "mode": "drop"})
    rag = resp.model_extra["longserve"]["rag"]
    assert rag["documents"] == 8 and rag["encoder"] == "all-MiniLM-L6-v2"
    assert max(rag["expanded"], key=lambda e: e["score"])["document"] == "4"  # a plain string
    assert resp.usage.prompt_tokens < 0.3 * everything.usage.prompt_tokens
    text = prompt_text(client, resp)
    assert NEEDLE in text and QUESTION in text and "left out" in text
    assert everything.model_extra["longserve"]["rag"]["expanded_tokens"] == rag["document_tokens"]


def test_repeated_documents_skip_the_encoder(server, auth, client, model_name):
    docs = documents(seed=2)
    before = metric_value(httpx.get(server.url + "/metrics", headers=auth).text,
                          "longserve_rag_encoder_cache_total", result="hit")
    first = ask(client, model_name, documents=docs, rag={"expand": 0.2})
    second = ask(client, model_name, documents=docs, rag={"expand": 0.2})
    cold = first.model_extra["longserve"]["rag"]["encoder_cache"]
    warm = second.model_extra["longserve"]["rag"]["encoder_cache"]
    assert cold["encoded"] > 0 and warm["encoded"] == 0
    assert warm["hits"] == cold["hits"] + cold["encoded"]  # the question may be known already
    hits = metric_value(httpx.get(server.url + "/metrics", headers=auth).text,
                        "longserve_rag_encoder_cache_total", result="hit") - before
    assert hits >= warm["hits"]
    assert (second.model_extra["longserve"]["rag"]["expanded"]
            == first.model_extra["longserve"]["rag"]["expanded"])


def test_streamed_rag_answer_carries_provenance(client, model_name):
    stream = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": QUESTION}], max_tokens=8,
        stream=True, extra_body={"documents": documents(seed=3), "rag": {"expand": 0.1}})
    chunks = list(stream)
    assert chunks[0].model_extra["longserve"]["rag"]["expanded"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.mark.parametrize("extra, param, message", [
    ({"documents": []}, "documents", "at least one document"),
    ({"documents": ["text", ""]}, "documents", "documents[1] is empty"),
    ({"documents": ["text"], "rag": {"mode": "abstractive"}}, "rag", "unknown rag mode"),
    ({"documents": ["text"], "rag": {"expand": 2}}, "rag", "expand is a share"),
    ({"documents": ["text"], "rag": {"mode": "refrag"}}, "rag", "--rag-projection"),
    ({"rag": {"expand": 0.2}}, "rag", "apply to `documents`"),
    ({"context_strategy": "summarize"}, "context_strategy", "unknown context_strategy"),
])
def test_bad_rag_requests_get_400(client, model_name, extra, param, message):
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, model_name, **extra)
    body = err.value.body
    assert message in body["message"] and param in (body.get("param") or body["message"])


def test_documents_over_the_limit_get_400_and_over_the_body_limit_413(server, auth):
    from tests.conftest import MAX_REQUEST_BYTES

    words = " ".join(sentences(random.Random(9), 2000))  # ~40k tokens, ~200 KB
    payload = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4,
               "documents": [words]}
    resp = httpx.post(server.url + "/v1/chat/completions", headers=auth, json=payload,
                      timeout=120)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == "documents" and f"at most {RAG_MAX_TOKENS}" in error["message"]
    payload["documents"] = [words] * (MAX_REQUEST_BYTES // len(words) + 1)
    resp = httpx.post(server.url + "/v1/chat/completions", headers=auth, json=payload,
                      timeout=120)
    assert resp.status_code == 413
    assert httpx.get(server.url + "/ready").status_code == 200


# ---- a server with a 1024-token window, a Redis chunk store and a refrag projection ----

REFRAG_WORD = " skipped"  # what every left-out chunk reads as through the test projection


def word_projection(directory) -> list[int]:
    """A projection whose rows for any chunk are the model's own input embeddings of
    REFRAG_WORD's tokens (returned): a refrag prompt then equals a token prompt with the
    word's tokens in each left-out chunk's place, which the test can send as tokens."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from server.model_store import prepare
    from server.rag.projection import ChunkProjection, ProjectionMeta

    model_dir = prepare()[0]
    tokens = AutoTokenizer.from_pretrained(str(model_dir)).encode(REFRAG_WORD)
    table = load_file(str(model_dir / "model.safetensors"))["model.embed_tokens.weight"]
    projection = ChunkProjection(ProjectionMeta(
        encoder="all-MiniLM-L6-v2", encoder_dim=384, model=model_dir.name,
        hidden_size=table.shape[1], vectors=len(tokens), width=8, chunk_tokens=64))
    with torch.no_grad():
        projection.net[2].weight.zero_()
        projection.net[2].bias.copy_(table[tokens].float().flatten())
    projection.save(directory)
    return tokens


@pytest.fixture(scope="module")
def word_tokens(tmp_path_factory):
    directory = tmp_path_factory.mktemp("projection")
    return directory, word_projection(directory)


@pytest.fixture(scope="module")
def small(tmp_path_factory, redis_url, server, word_tokens):
    srv = longserve_eager(tmp_path_factory.mktemp("small") / "longserve.log",
                          *FLOAT32, "--api-key", API_KEY, "--max-model-len", str(WINDOW),
                          "--kv-cache-memory", "512MiB", "--chunk-store", redis_url,
                          "--rag-projection", str(word_tokens[0]),
                          "--default-max-tokens", "24").start()
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def small_client(small):
    return openai.OpenAI(base_url=small.url + "/v1", api_key=API_KEY, max_retries=0,
                         timeout=540)  # chain-of-agents makes many calls; pytest stops at 600


def long_messages(needle_at: int, count: int = 150) -> list[dict]:
    units = sentences(random.Random(5), count)  # 150: ~2.6k tokens, 2.5x the window
    units.insert(needle_at, NEEDLE)
    return [{"role": "system", "content": "Answer from the records."},
            {"role": "user", "content": f"Read the records.\n\n{' '.join(units)}\n\n"
                                        f"Question: {QUESTION}"}]


def long_ask(client, strategy: str | None, needle_at: int = 75, count: int = 150, **kwargs):
    extra = {"context_strategy": strategy} if strategy else {}
    return client.chat.completions.create(
        model=client.models.list().data[0].id, messages=long_messages(needle_at, count),
        max_tokens=24, temperature=0, extra_body={**extra, "return_token_ids": True}, **kwargs)


def test_reject_is_the_default_and_says_by_how_much(small_client):
    with pytest.raises(openai.BadRequestError) as err:
        long_ask(small_client, None)
    assert f"maximum context length is {WINDOW} tokens" in err.value.body["message"]


def test_truncate_middle_fits_the_window(small_client):
    resp = long_ask(small_client, "truncate_middle")
    context = resp.model_extra["longserve"]["context"]
    assert resp.model_extra["longserve"]["context_strategy"] == "truncate_middle"
    assert context["changed"] and context["dropped_tokens"] > 1500
    assert resp.usage.prompt_tokens == context["fitted_tokens"] <= WINDOW - 24
    text = prompt_text(small_client, resp)
    assert "Answer from the records." in text and QUESTION in text
    assert f"[... {context['dropped_tokens']} tokens left out ...]" in text


def test_rag_strategy_keeps_the_needle_the_middle_cut_loses(small_client, redis_url):
    import redis

    resp = long_ask(small_client, "rag")
    context = resp.model_extra["longserve"]["context"]
    assert context["changed"] and resp.usage.prompt_tokens <= WINDOW - 24
    text = prompt_text(small_client, resp)
    assert NEEDLE in text and QUESTION in text
    assert NEEDLE not in prompt_text(small_client, long_ask(small_client, "truncate_middle"))
    assert redis.Redis.from_url(redis_url).keys("longserve:chunk:*")  # the Redis store


def test_chain_of_agents_counts_every_call_and_streams(small_client, tokenizer):
    """On 80 sentences (~1.4k tokens, 4 workers: each writes up to 256 tokens of notes, so
    the 2.6k-token prompt of the other strategies' tests made this test take 320-460 s)."""
    resp = long_ask(small_client, "chain_of_agents", needle_at=40, count=80)
    context = resp.model_extra["longserve"]["context"]
    workers = context["worker_usage"]
    assert context["workers"] >= 3
    body = len(tokenizer(long_messages(40, 80)[1]["content"])["input_ids"])
    # every piece was read: pieces enough for the whole message, each in a worker's prompt
    assert context["workers"] * context["piece_tokens"] >= body
    assert workers["prompt_tokens"] > body
    assert resp.usage.prompt_tokens == workers["prompt_tokens"] + context["manager_prompt_tokens"]
    assert resp.usage.completion_tokens == (workers["completion_tokens"]
                                            + len(resp.choices[0].model_extra["token_ids"]))
    chunks = list(long_ask(small_client, "chain_of_agents", needle_at=40, count=80, stream=True,
                           stream_options={"include_usage": True}))
    assert chunks[0].model_extra["longserve"]["context"]["workers"] == context["workers"]
    usage = chunks[-1].usage
    assert usage.prompt_tokens > workers["prompt_tokens"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_completions_reject_what_does_not_fit_whatever_the_strategy(small, small_client):
    with pytest.raises(openai.BadRequestError) as err:
        small_client.completions.create(
            model=small_client.models.list().data[0].id, max_tokens=4,
            prompt=long_messages(10)[1]["content"],
            extra_body={"context_strategy": "truncate_middle"})
    assert f"maximum context length is {WINDOW}" in err.value.body["message"]


def test_refrag_rows_reach_the_model_where_their_chunks_were(small, small_client, word_tokens):
    """Through the word projection, a refrag request must answer exactly as the same prompt
    sent as token ids with the word's tokens in place of each left-out chunk's rows."""
    model = small_client.models.list().data[0].id
    resp = ask(small_client, model, documents=documents(seed=6),
               rag={"expand": 0.1, "mode": "refrag"})
    rag = resp.model_extra["longserve"]["rag"]
    tokens = word_tokens[1]
    assert rag["mode"] == "refrag" and rag["dropped_chunks"] == 0
    assert rag["compressed_chunks"] == rag["chunks"] - len(rag["expanded"]) > 10
    ids = resp.model_extra["prompt_token_ids"]
    placeholder = max(ids)  # vLLM's prompt-embeds token, registered past the vocabulary
    rows = [i for i, t in enumerate(ids) if t == placeholder]
    assert len(rows) == rag["compressed_chunks"] * len(tokens) == rag["compressed_rows"]
    assert resp.usage.prompt_tokens == len(ids)
    as_tokens = list(ids)
    for n, i in enumerate(rows):
        as_tokens[i] = tokens[n % len(tokens)]
    text = small_client.completions.create(
        model=model, prompt=as_tokens, max_tokens=16, temperature=0,
        extra_body={"return_token_ids": True})
    assert resp.choices[0].model_extra["token_ids"] == text.choices[0].model_extra["token_ids"]
    info = httpx.get(small.url + "/info", headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert info["rag_projection"]["vectors_per_chunk"] == len(tokens)


def test_refrag_prompt_over_the_window_is_a_400_not_a_cut(small_client):
    """A middle cut would cut through the rows' markers: refuse it, say what to change."""
    with pytest.raises(openai.BadRequestError) as err:
        ask(small_client, small_client.models.list().data[0].id, documents=documents(seed=7),
            rag={"expand": 0.9, "mode": "refrag"}, context_strategy="truncate_middle")
    assert err.value.body["param"] == "rag" and "lower rag.expand" in err.value.body["message"]


def test_the_default_max_tokens_is_a_default_not_a_cap(small, small_client):
    resp = small_client.chat.completions.create(
        model=small_client.models.list().data[0].id, temperature=0,
        messages=[{"role": "user", "content": "Tell me a very long story."}],
        extra_body={"ignore_eos": True})
    assert resp.usage.completion_tokens == 24 and resp.choices[0].finish_reason == "length"
    # a default, not a cap: a request asking for more gets it
    resp = small_client.chat.completions.create(
        model=small_client.models.list().data[0].id, temperature=0, max_tokens=40,
        messages=[{"role": "user", "content": "Tell me a very long story."}],
        extra_body={"ignore_eos": True})
    assert resp.usage.completion_tokens == 40
    info = httpx.get(small.url + "/info", headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert info["limits"]["default_max_tokens"] == 24
