"""Server settings: one typed model for the CLI, `LONGSERVE_*` environment variables and
(later) Helm values. CLI flags win over the environment, which wins over the defaults."""

from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cache_policies.registry import make_config
from server.context.registry import check_name

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "t": 10**12,
          "tb": 10**12}


def parse_bytes(value: str | int) -> int:
    """'2GiB', '512MiB', '1.5GB', '1073741824' -> bytes."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"{value!r} is not a size; use e.g. 2GiB, 512MiB or a byte count")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_number(text: str) -> int | float:
    """'512' -> 512 (a token count), '0.3' -> 0.3 (a ratio): the KV budget's two kinds."""
    text = text.strip()
    return int(text) if text.isdigit() else float(text)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LONGSERVE_", extra="forbid")

    model: str | None = Field(
        None, description="local Hugging Face directory or hub id; default: the embedded "
        "SmolLM2-135M-Instruct prepared by `longserve models prepare`")
    served_model_name: str | None = Field(
        None, description="name clients use in `model`; default: the model's directory name")
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    max_model_len: int | None = Field(None, ge=16, description="context length; default: model's")
    kv_cache_memory: int | None = Field(
        None, description="bytes of KV cache (accepts 2GiB, 512MiB, ...); default: 2GiB on "
        "CPU, vLLM's gpu_memory_utilization share on GPU")
    max_num_seqs: int | None = Field(None, ge=1, description="requests running at once")
    enforce_eager: bool = Field(False, description="skip graph compilation (fast start)")
    api_key: SecretStr | None = Field(
        None, description="require `Authorization: Bearer <key>` on every route but "
        "/health and /ready; several keys comma-separated (rate limits count per key)")
    max_request_bytes: int = Field(16 * 2**20, ge=1024, description="largest request body")
    default_max_tokens: int = Field(
        2048, ge=1, description="completion tokens a request that sets no max_tokens may "
        "generate (vLLM's own default is the whole rest of the context)")
    max_queued_requests: int = Field(
        256, ge=0, description="requests waiting for the engine beyond which new ones get 429")
    max_queued_tokens: int = Field(
        0, ge=0, description="prompt tokens waiting for the engine (no output yet) beyond "
        "which new requests get 429; 0: no limit")
    queue_timeout: float = Field(
        0, ge=0, description="seconds a request may wait in the engine for its first output "
        "(queue and prefill) before it is aborted with 503; 0: no deadline")
    rate_limit_rpm: int = Field(0, ge=0, description="requests per minute per API key; 0: none")
    rate_limit_tpm: int = Field(
        0, ge=0, description="tokens per minute per API key (prompt plus the completion "
        "tokens a request may generate); 0: none")
    rate_limit_store: str = Field(
        "memory", description="where rate-limit buckets live: memory (per replica) or "
        "redis://HOST:PORT[/DB] (shared by every replica)")
    kv_policy: str = Field("full", description="default KV cache policy")
    kv_budget: float | int | None = Field(None, description="default KV policy budget")
    kv_recompress_every: int = Field(
        1024, ge=1, description="tokens generated past the budget before a policy runs again")
    kv_offload: str = Field(
        "host", description="where retrieval policies move blocks out of the KV memory: "
        "none, host, or redis://HOST:PORT[/DB]")
    cskv: str | None = Field(
        None, description="directory written by `longserve calibrate cskv`: the bases the "
        "cskv, cskv8 and cskv4 KV policies store keys and values in")
    attention: Literal["dense", "sparse"] = Field(
        "dense", description="default prefill attention: dense, or sparse for long prompts")
    sparse_config: dict = Field(
        default_factory=dict, description="sparse attention parameters as JSON, e.g. "
        '{"method": "vertical_slash", "density": 0.2, "min_len": 2048}; requests may '
        "override them")
    context_strategy: str = Field("reject", description="default long-context strategy")
    chunk_store: str = Field(
        "memory", description="where RAG chunk encodings are cached: memory (in-process "
        "LRU) or redis://HOST:PORT[/DB]")
    rag_max_tokens: int = Field(
        262144, ge=1, description="most document tokens one request may bring")
    rag_projection: str | None = Field(
        None, description="directory of a chunk projection trained by `longserve train "
        "refrag`: enables `rag.mode = refrag` (chunks as embedding rows, through vLLM's "
        "prompt embeddings)")
    afd_role: Literal["none", "attention"] = Field(
        "none", description="attention: run the engine with every layer's FFN on remote "
        "`longserve afd-ffn` workers (attention-FFN disaggregation)")
    afd_port: int = Field(29600, ge=1, le=65535, description="port of the store AFD workers "
                          "connect to (hosted by the attention server)")
    afd_ffn_workers: int = Field(1, ge=1, le=64, description="FFN workers (shards of every "
                                 "layer's FFN) the attention server expects")
    afd_micro_batches: int = Field(2, ge=1, le=16, description="micro-batches per layer in "
                                   "flight to the FFN workers at once")
    afd_timeout: float = Field(10.0, gt=0, description="seconds an FFN exchange (or a "
                               "restarted worker's rejoin) may take before requests fail")
    drain_seconds: float = Field(
        120, ge=0, description="on SIGTERM, how long requests in flight may run before the "
        "server stops; new requests get 503 meanwhile")
    log_level: str = "info"

    @field_validator("kv_cache_memory", "max_request_bytes", mode="before")
    @classmethod
    def _sizes(cls, value):
        return None if value in (None, "") else parse_bytes(value)

    @field_validator("kv_budget", mode="before")
    @classmethod
    def _budget(cls, value):  # from the environment: "512" is a count, not 512.0
        if isinstance(value, str):
            try:
                return parse_number(value) if value.strip() else None
            except ValueError:
                raise ValueError(f"{value!r} is not a number") from None
        return value

    @field_validator("kv_offload")
    @classmethod
    def _offload(cls, value: str) -> str:
        from cache_policies.offload import check_spec

        return check_spec(value)

    @field_validator("sparse_config", mode="before")
    @classmethod
    def _sparse(cls, value):
        import json

        from server.openai.protocol import AttentionSpec

        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError("give a JSON object of sparse attention parameters")
        AttentionSpec(name="sparse", **value)  # raises on unknown or invalid parameters
        return value

    @field_validator("chunk_store", "rate_limit_store")
    @classmethod
    def _store(cls, value: str) -> str:
        if value != "memory" and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"takes `memory` or redis://HOST:PORT[/DB], got {value!r}")
        return value

    @field_validator("cskv")
    @classmethod
    def _cskv(cls, value: str | None) -> str | None:
        if value:
            from cache_policies.compress.cskv import load

            load(value)  # raises saying what is wrong
        return value or None

    @field_validator("rag_projection")
    @classmethod
    def _projection(cls, value: str | None) -> str | None:
        if value:
            from server.rag.projection import read_meta

            read_meta(value)  # raises saying what is wrong
        return value or None

    @field_validator("context_strategy")
    @classmethod
    def _strategy(cls, value: str) -> str:
        return check_name(value)

    @field_validator("api_key")
    @classmethod
    def _keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not all(k.strip() for k in
                                         value.get_secret_value().split(",")):
            raise ValueError("an empty API key (check the commas)")
        return value

    def api_keys(self) -> list[str]:
        return [k.strip() for k in self.api_key.get_secret_value().split(",")]

    @model_validator(mode="after")
    def _policy(self) -> Settings:
        if self.cskv:  # the process serves this artifact (the cskv policies read it)
            from cache_policies.compress.cskv import ENV

            os.environ[ENV] = self.cskv
        make_config(self.kv_policy, self.kv_budget)  # raises with the valid names
        return self
