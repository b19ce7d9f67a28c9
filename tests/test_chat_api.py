"""The OpenAI surface on the real engine and the default model, through the official
`openai` client."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.engine

APPLIED_DEFAULT = {"kv_policy": {"name": "full", "budget": None}, "attention": {"name": "dense"},
                   "context_strategy": "reject"}


def test_chat_answers_a_factual_question(client, model_name):
    resp = client.chat.completions.create(
        model=model_name,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=30, temperature=0,
    )
    assert "Paris" in resp.choices[0].message.content
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    assert resp.model_extra["longserve"] == APPLIED_DEFAULT


def test_chat_streams_with_usage(client, model_name):
    stream = client.chat.completions.create(
        model=model_name,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=30, temperature=0, stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert chunks[0].model_extra["longserve"] == APPLIED_DEFAULT


def test_request_extensions_are_echoed(client, model_name):
    resp = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
        extra_body={"kv_policy": {"name": "full"}, "context_strategy": "reject"},
    )
    assert resp.model_extra["longserve"] == APPLIED_DEFAULT


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_completions(client, model_name, stream):
    kwargs = dict(model=model_name, prompt="The capital of France is", max_tokens=8,
                  temperature=0)
    if stream:
        chunks = list(client.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        assert chunks[-1].usage.completion_tokens == 8
    else:
        resp = client.completions.create(**kwargs)
        text = resp.choices[0].text
        assert resp.usage.completion_tokens == 8
        assert resp.model_extra["longserve"] == APPLIED_DEFAULT
    assert "Paris" in text


def test_models_lists_the_served_model(client, model_name):
    assert [m.id for m in client.models.list().data] == [model_name] == ["SmolLM2-135M-Instruct"]


def test_openapi_documents_the_extensions(server, auth):
    import httpx

    schema = httpx.get(server.url + "/openapi.json", headers=auth).json()
    chat = schema["components"]["schemas"]["LongserveChatCompletionRequest"]["properties"]
    assert "kv_policy" in chat and "context_strategy" in chat
    assert "full" in schema["components"]["schemas"]["KVPolicySpec"]["properties"]["name"][
        "description"]
