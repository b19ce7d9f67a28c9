"""The error table: each client mistake gets the OpenAI error envelope with the right
status, and none gets a 500."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import MAX_REQUEST_BYTES

pytestmark = pytest.mark.engine

HI = [{"role": "user", "content": "Hi"}]


def post(server, auth, body, path="/v1/chat/completions", headers=None):
    kw = {"content": body} if isinstance(body, (str, bytes)) else {"json": body}
    return httpx.post(server.url + path, headers={**auth, **(headers or {})}, timeout=120, **kw)


def assert_error(resp, status: int, *fragments: str, param: str | None = "<any>") -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == status
    for fragment in fragments:
        assert fragment in err["message"], err["message"]
    if param != "<any>":
        assert err["param"] == param
    return err


def test_malformed_json_is_400(server, auth):
    resp = post(server, auth, '{"messages": [', headers={"content-type": "application/json"})
    assert_error(resp, 400, "not valid JSON")


@pytest.mark.parametrize("body, param", [
    ({"messages": "hello"}, "messages"),
    ({"messages": HI, "max_tokens": "many"}, "max_tokens"),
    ({"messages": HI, "temperature": {"x": 1}}, "temperature"),
    ({"messages": [{"role": "user"}]}, None),
], ids=["messages-string", "max_tokens-string", "temperature-object", "message-without-content"])
def test_wrong_types_are_400(server, auth, body, param):
    err = assert_error(post(server, auth, body), 400)
    if param:
        assert err["param"] == param


def test_empty_messages_is_400(server, auth):
    assert_error(post(server, auth, {"messages": []}), 400, "at least one message",
                 param="messages")


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [0, -5])
def test_nonpositive_max_tokens_is_400(server, auth, field, value):
    assert_error(post(server, auth, {"messages": HI, field: value}), 400, "at least 1",
                 param=field)


def test_completion_max_tokens_zero_is_400(server, auth):
    assert_error(post(server, auth, {"prompt": "x", "max_tokens": 0}, "/v1/completions"),
                 400, "at least 1", param="max_tokens")


def test_prompt_longer_than_context_states_counts_and_limit(server, auth):
    words = " ".join(["longserve"] * 9000)
    err = assert_error(post(server, auth, {"messages": [{"role": "user", "content": words}]}),
                       400, "maximum context length is 8192 tokens", param="messages")
    # both token counts: the prompt's (exact, not capped at the limit) and the completion's
    message = err["message"]
    prompt_tokens = int(message.split("(")[1].split(" in the messages")[0])
    assert prompt_tokens > 9000
    assert "1 in the completion" in message


def test_prompt_plus_max_tokens_over_context_is_400_not_clamped(server, auth):
    words = " ".join(["longserve"] * 4000)
    err = assert_error(
        post(server, auth, {"messages": [{"role": "user", "content": words}], "max_tokens": 5000}),
        400, "maximum context length is 8192 tokens", "5000 in the completion")
    assert "in the messages" in err["message"]


def test_completion_prompt_too_long_names_prompt(server, auth):
    err = assert_error(post(server, auth, {"prompt": "word " * 9000, "max_tokens": 4},
                            "/v1/completions"), 400, "8192", param="prompt")
    assert "4 in the completion" in err["message"]


@pytest.mark.parametrize("body, fragment, param", [
    ({"kv_policy": {"name": "snapkvv"}},
     "valid names: actqkv, chunkkv, chunkkv_kivi8, cskv, cskv4, cskv8, d2o", "kv_policy"),
    ({"kv_policy": {"name": "snapkv", "budget": 1.5}}, "not a valid ratio", "kv_policy"),
    ({"kv_policy": {"name": "full", "budget": 0.5}}, "takes no budget", "kv_policy"),
    ({"kv_policy": {"name": "full", "extra": 1}}, "Extra inputs", "kv_policy.extra"),
    ({"context_strategy": "truncate_everything"},
     "valid names: chain_of_agents, rag, reject, truncate_middle", "context_strategy"),
], ids=["unknown-policy", "bad-ratio", "budget-for-full", "unknown-field", "unknown-strategy"])
def test_unknown_policy_or_strategy_is_400_listing_valid(server, auth, body, fragment, param):
    assert_error(post(server, auth, {"messages": HI, **body}), 400, fragment, param=param)


def test_unknown_model_is_404(server, auth):
    assert_error(post(server, auth, {"model": "gpt-9", "messages": HI}), 404, "gpt-9",
                 param="model")


@pytest.mark.parametrize("path, method", [
    ("/v1/chat/completions", "POST"), ("/v1/completions", "POST"), ("/v1/models", "GET"),
    ("/metrics", "GET"), ("/info", "GET"), ("/openapi.json", "GET"),
])
@pytest.mark.parametrize("value", [None, "Bearer wrong-key", "Bearer test-key-7c1", "Basic dGVzdA=="],
                         ids=["missing", "wrong", "prefix-of-key", "wrong-scheme"])
def test_missing_or_wrong_api_key_is_401(server, path, method, value):
    headers = {} if value is None else {"Authorization": value}
    resp = httpx.request(method, server.url + path, headers=headers, json={"messages": HI})
    assert_error(resp, 401, "API key")
    assert resp.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("path", ["/health", "/ready"])
def test_health_and_ready_need_no_key(server, path):
    assert httpx.get(server.url + path).status_code == 200


def test_openai_client_sees_authentication_error(server):
    from openai import OpenAI

    bad = OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="x", messages=HI)


def test_body_over_limit_is_413(server, auth):
    big = {"messages": [{"role": "user", "content": "x" * (MAX_REQUEST_BYTES + 10)}]}
    assert_error(post(server, auth, big), 413, str(MAX_REQUEST_BYTES))


def test_chunked_body_over_limit_is_413(server, auth):
    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(MAX_REQUEST_BYTES // 65536 + 2):
            yield b"x" * 65536
        yield b'"}]}'

    resp = httpx.post(server.url + "/v1/chat/completions", content=chunks(),
                      headers={**auth, "content-type": "application/json"}, timeout=60)
    assert_error(resp, 413, "--max-request-bytes")


@pytest.mark.parametrize("body", [
    "null", "[]", '"text"', "123", '{"messages": null}', '{"messages": [null]}',
    '{"messages": [{"role": 5, "content": "x"}]}', '{"messages": [{"role": "user", "content": 5}]}',
    '{"messages": [{"role": "user", "content": "hi"}], "n": 0}',
    '{"messages": [{"role": "user", "content": "hi"}], "stream": "maybe"}',
    '{"messages": [{"role": "user", "content": "hi"}], "stream_options": {"include_usage": true}}',
    '{"messages": [{"role": "user", "content": "hi"}], "kv_policy": "full"}',
    '{"messages": [{"role": "user", "content": "hi"}], "kv_policy": {"name": "full", "budget": true}}',
    '{"messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 99}',
    '\xff\xfe',
    # found by loadtests/fuzz.sh: vLLM's own validators indexing a non-object
    '{"messages": [{"role": "user", "content": "hi"}], "structured_outputs": 3.5}',
    # a Harmony message object among chat messages, with documents
    '{"messages": [{"role": "user", "content": "q"}, {"author": {"role": "user"}, "content": [],'
    ' "channel": null, "recipient": "x", "content_type": "t"}], "documents": ["text"]}',
])
def test_no_client_mistake_yields_500(server, auth, body):
    resp = post(server, auth, body.encode("latin-1"), headers={"content-type": "application/json"})
    assert 400 <= resp.status_code < 500, resp.text
    assert resp.json()["error"]["code"] == resp.status_code


@pytest.mark.parametrize("body", [
    '{"prompt": "hi", "structured_outputs": 3.5}',
    '{"prompt": "hi", "structured_outputs": "json"}',
])
def test_no_client_mistake_on_completions_yields_500(server, auth, body):
    resp = httpx.post(server.url + "/v1/completions", content=body.encode(), timeout=60,
                      headers={**auth, "content-type": "application/json"})
    assert 400 <= resp.status_code < 500, resp.text


def test_non_json_content_type_is_415(server, auth):
    resp = post(server, auth, "messages=hi", headers={"content-type": "text/plain"})
    assert_error(resp, 415, "application/json")
