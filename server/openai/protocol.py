"""Request schemas: vLLM's OpenAI requests plus longserve's extensions.

`kv_policy`, `attention` and `context_strategy` are validated here (a bad name is a 400 listing the
valid ones), filled with the server defaults by the route, carried to the engine in
`SamplingParams.extra_args["longserve"]`, and echoed in the response's `longserve` field.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.renderers.params import TokenizeParams

from attention_backends.sparse.config import SparseConfig
from cache_policies.registry import make_config, policy_names
from server.context.registry import check_name, strategy_names
from server.rag.config import RagConfig

# Prompts are tokenized up to this many times the context length, so a `reject` error can
# state the real prompt length; beyond it vLLM stops tokenizing (bounding the cost of
# absurd inputs) and its error says "at least N tokens".
TOKENIZE_HEADROOM = 8


class KVPolicySpec(BaseModel):
    """`{"name": "full", "budget": null}`: which KV cache policy a request runs under."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description=f"KV cache policy; one of: {', '.join(policy_names())}")
    budget: int | float | None = Field(
        None,
        description="KV kept per sequence: a ratio in (0, 1] of the prompt, or a token "
        "count; omitted = the policy's default",
    )

    @model_validator(mode="after")
    def _registered(self) -> KVPolicySpec:
        make_config(self.name, self.budget)
        return self


class AttentionSpec(BaseModel):
    """`"sparse"`, or `{"name": "sparse", "density": 0.2, ...}`: how prefill attends.

    `dense` is the platform kernel; `sparse` estimates, per layer and KV head, which KV
    blocks each query block needs and attends to those only, for sequences of at least
    `min_len` tokens (decode stays dense). Parameters a request leaves out come from the
    server's `--sparse-config`, then from the defaults."""

    model_config = ConfigDict(extra="allow")

    name: Literal["dense", "sparse"]

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _valid(self) -> AttentionSpec:
        if self.name == "dense" and self.params():
            raise ValueError(f"dense attention takes no parameters, got {sorted(self.params())}")
        if "block" in self.params():
            raise ValueError("block is the KV cache's block size (vLLM's --block-size), not a "
                             "request parameter")
        if self.name == "sparse":
            SparseConfig.from_dict(self.params())
        return self

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def applied(self) -> dict[str, Any]:
        if self.name == "dense":
            return {"name": "dense"}
        values = SparseConfig.from_dict(self.params()).to_dict()
        del values["block"]  # the engine's KV block size
        return {"name": "sparse", **values}


@dataclasses.dataclass(frozen=True)
class _CountingTokenizeParams(TokenizeParams):
    """vLLM's tokenize params with a higher tokenization ceiling (see TOKENIZE_HEADROOM).
    Length errors still quote the model's real `max_total_tokens`."""

    count_limit: int = 0

    @property
    def max_input_tokens(self) -> int | None:
        return self.count_limit


class LongserveFields(BaseModel):
    kv_policy: KVPolicySpec | None = Field(
        None, description="KV cache policy for this request; default: the server's")
    attention: AttentionSpec | None = Field(
        None, description="prefill attention: dense or sparse (with parameters); default: "
        "the server's")
    context_strategy: str | None = Field(
        None,
        description="what to do with a request longer than the context; one of: "
        f"{', '.join(strategy_names())}; default: the server's",
    )

    # What the RAG path and the context strategy did (server.context.prepare).
    _prepared: dict = PrivateAttr(default_factory=dict)
    _splices: list = PrivateAttr(default_factory=list)  # refrag rows (server.rag.splice)

    @model_validator(mode="wrap")
    @classmethod
    def _malformed(cls, data, handler):
        """vLLM's own `before` validators index into fields they assume are objects (e.g.
        `structured_outputs: 3.8`) and raise AttributeError/TypeError, which FastAPI would
        answer with a 500: a malformed body is the client's mistake, a 400."""
        try:
            return handler(data)
        except (AttributeError, TypeError, KeyError) as exc:
            raise ValueError(f"malformed request body: {exc}") from None

    @field_validator("context_strategy")
    @classmethod
    def _known_strategy(cls, value: str | None) -> str | None:
        return value if value is None else check_name(value)

    def engine_args(self) -> dict[str, Any]:
        """What the engine's scheduler and workers read (`extra_args["longserve"]`)."""
        return {
            "kv_policy": self.kv_policy.model_dump() if self.kv_policy else None,
            "attention": self.attention.applied() if self.attention else None,
        }

    def applied(self) -> dict[str, Any]:
        """What longserve applies to this request (after server defaults are filled in)."""
        return {**self.engine_args(), "context_strategy": self.context_strategy,
                **self._prepared}

    def requested_tokens(self) -> int | None:
        return getattr(self, "max_completion_tokens", None) or self.max_tokens  # type: ignore[attr-defined]

    def build_tok_params(self, model_config) -> TokenizeParams:
        params = super().build_tok_params(model_config)  # type: ignore[misc]
        if params.truncate_prompt_tokens is not None or params.max_total_tokens is None:
            return params  # the client asked vLLM to truncate: keep vLLM's rules
        fields = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
        return _CountingTokenizeParams(
            **fields, count_limit=params.max_total_tokens * TOKENIZE_HEADROOM)

    def to_sampling_params(self, *args, **kwargs):
        params = super().to_sampling_params(*args, **kwargs)  # type: ignore[misc]
        params.extra_args = {**(params.extra_args or {}), "longserve": self.engine_args()}
        return params


def _at_least_one(value: int | None, field: str) -> int | None:
    if value is not None and value < 1:
        raise ValueError(f"{field} must be at least 1, got {value}")
    return value


class DocumentSpec(BaseModel):
    """One document of a RAG request: `{"id": "manual-3", "text": "..."}`; vLLM's
    `{"title": ..., "text": ...}` form is read too (the title is the id)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, description="cited in the provenance; default: its index")
    title: str | None = Field(None, description="the id when `id` is not given")
    text: str

    @property
    def name(self) -> str | None:
        return self.id or self.title


class LongserveChatCompletionRequest(LongserveFields, ChatCompletionRequest):
    # vLLM hands `documents` to RAG-aware chat templates; longserve's RAG path takes them
    # instead (server.context.prepare) and the template sees none.
    documents: list[str | DocumentSpec] | None = Field(
        None, description="documents to answer from (plain strings or {id, text}): chunked, "
        "the chunks the question needs expanded, the rest compressed (see `rag`)")
    rag: dict[str, Any] | None = Field(
        None, description="RAG options: chunk_tokens, expand (share) or expand_tokens, mode "
        "(drop | extractive), sentences")

    @field_validator("documents")
    @classmethod
    def _documents(cls, value: list | None) -> list | None:
        if value is None:
            return value
        if not value:
            raise ValueError("documents must hold at least one document (or be left out)")
        for i, document in enumerate(value):
            text = document if isinstance(document, str) else document.text
            if not text.strip():
                raise ValueError(f"documents[{i}] is empty")
        return value

    @field_validator("rag")
    @classmethod
    def _rag(cls, value: dict | None) -> dict | None:
        if value is not None:
            RagConfig.from_dict(value)
        return value

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, value: list) -> list:
        if not value:
            raise ValueError("messages must contain at least one message")
        for i, message in enumerate(value):
            # vLLM's message types leave content optional for every role (assistant turns
            # may carry only tool calls); OpenAI requires it from the user and system.
            role = message.get("role") if isinstance(message, dict) else None
            if role in ("user", "system", "developer") and message.get("content") is None:
                raise ValueError(f"messages[{i}] ({role}) has no content")
        return value

    @field_validator("max_tokens", "max_completion_tokens")
    @classmethod
    def _positive(cls, value: int | None, info) -> int | None:
        return _at_least_one(value, info.field_name)


class LongserveCompletionRequest(LongserveFields, CompletionRequest):
    @field_validator("max_tokens")
    @classmethod
    def _positive(cls, value: int | None, info) -> int | None:
        if info.data.get("echo"):  # `echo` is validated first; max_tokens=0 echoes the prompt
            return value
        return _at_least_one(value, "max_tokens")
