"""Every place longserve relies on a vLLM internal that is not public API. vLLM is pinned
to one release (pyproject.toml); tests/test_vllm_compat.py checks each of these still
exists, so an upgrade fails there first, loudly, instead of somewhere at run time."""

from __future__ import annotations

VLLM_VERSION = "0.32.0"

# (module, attribute path) pairs the code below or elsewhere in longserve depends on.
INTERNALS: list[tuple[str, str]] = [
    ("vllm.v1.engine.async_llm", "AsyncLLM._run_output_handler"),
    ("vllm.v1.engine.async_llm", "AsyncLLM.errored"),
    ("vllm.entrypoints.serve.engine.serving", "BaseServing._extract_prompt_len"),
    ("vllm.entrypoints.openai.chat_completion.serving", "OpenAIServingChat.render_chat_request"),
    ("vllm.entrypoints.openai.completion.serving",
     "OpenAIServingCompletion.render_completion_request"),
    ("vllm.renderers.params", "TokenizeParams.max_input_tokens"),
    ("vllm.entrypoints.openai.chat_completion.protocol", "ChatCompletionRequest.build_tok_params"),
    ("vllm.entrypoints.openai.completion.protocol", "CompletionRequest.build_tok_params"),
    ("vllm.v1.attention.backends.registry", "register_backend"),
    ("vllm.v1.attention.backends.cpu_attn", "CPUAttentionBackendImpl.forward"),
    ("vllm.entrypoints.serve.utils.api_utils", "with_cancellation"),
    # --default-max-tokens (server/openai/serving.py) sets the serving objects' instance
    # attribute default_sampling_params["max_tokens"] and reads override_max_tokens; both
    # are checked against vLLM's own function here:
    ("vllm.entrypoints.serve.utils.api_utils", "get_max_tokens"),
    ("vllm.utils.gc_utils", "freeze_gc_heap"),
    # refrag rows into a rendered chat prompt (server/rag/splice.py): vLLM's mixed
    # token/embeds engine input and the placeholder token it registers for it
    ("vllm.inputs.engine", "embeds_input"),
    ("vllm.renderers.chat_utils", "PROMPT_EMBEDS_PLACEHOLDER_TOKEN"),
    # KV policies (cache_policies/scheduler.py, runtime.py, worker.py; the policy-aware
    # backend). Also relied on, as instance attributes the engine tests exercise:
    # KVCacheManager.coordinator.single_type_managers, SingleTypeKVCacheManager
    # .req_to_blocks/.num_cached_block/.block_pool, BlockPool.null_block,
    # GPUModelRunner.input_batch.req_ids, SchedulerOutput.preempted_req_ids,
    # CommonAttentionMetadata.block_table_tensor/.seq_lens/.num_reqs.
    ("vllm.v1.core.sched.scheduler", "Scheduler.schedule"),
    ("vllm.v1.core.sched.scheduler", "Scheduler.add_request"),
    ("vllm.v1.core.sched.scheduler", "Scheduler._preempt_request"),
    ("vllm.v1.core.sched.scheduler", "Scheduler._free_request"),
    ("vllm.v1.core.block_pool", "BlockPool.get_new_blocks"),
    ("vllm.v1.core.block_pool", "BlockPool.free_blocks"),
    ("vllm.v1.core.block_pool", "BlockPool.get_num_free_blocks"),
    ("vllm.v1.core.single_type_kv_cache_manager", "FullAttentionManager.cache_blocks"),
    ("vllm.v1.attention.backends.cpu_attn", "CPUAttentionBackendImpl.do_kv_cache_update"),
    ("vllm.v1.attention.backends.cpu_attn", "CPUAttentionMetadataBuilder.build"),
    ("vllm.v1.worker.cpu_worker", "CPUWorker.execute_model"),
]


def start_output_handler(engine) -> None:
    """AsyncLLM starts its output loop only when built inside a running event loop;
    longserve builds it in a worker thread (its constructor blocks), so start it here."""
    engine._run_output_handler()
