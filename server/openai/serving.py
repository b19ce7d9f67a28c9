"""vLLM's OpenAI serving objects, reused; longserve adds one step after tokenization.

Chat templating, tokenization, sampling parameters, streaming and usage are vLLM's own
(`OpenAIServingChat`, `OpenAIServingCompletion`). The subclasses check the tokenized
prompt fits before anything reaches the engine, then charge its tokens to the request's
admission ticket (token queue, per-key tokens per minute: server.limits). Context
strategies other than `reject` rewrite chat messages (server.context); a
`/v1/completions` prompt that does not fit is rejected whatever the strategy. Their
engine is server.limits.AdmittedEngine: the ticket learns of the first output there.
"""

from __future__ import annotations

from argparse import Namespace
from dataclasses import dataclass

from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
from vllm.entrypoints.openai.models.protocol import BaseModelPath
from vllm.entrypoints.openai.models.serving import OpenAIServingModels
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.renderers.online_renderer import OnlineRenderer

from server.context.registry import get_strategy
from server.limits import CURRENT_TICKET, AdmittedEngine
from server.rag.splice import splice


class _PromptAdmission:
    async def _admit_prompts(self, request, engine_inputs, field: str) -> None:
        """The last word on length, after the strategy (server.context.prepare) ran on a
        chat request: what still does not fit is a 400, never cut here. Then the prompt
        tokens go to the admission ticket (429 when the queue or the key's tokens per
        minute cannot take them)."""
        strategy = get_strategy(request.context_strategy if field == "messages" else "reject")
        max_model_len = self.model_config.max_model_len  # type: ignore[attr-defined]
        lengths = [self._extract_prompt_len(e) for e in engine_inputs]  # type: ignore[attr-defined]
        for prompt_tokens in lengths:
            strategy.check(prompt_tokens=prompt_tokens,
                           requested_tokens=request.requested_tokens(),
                           max_model_len=max_model_len, field=field)
        ticket = CURRENT_TICKET.get()
        if ticket is not None:
            await ticket.enter_queue(lengths, max_model_len, request.requested_tokens(),
                                     getattr(request, "n", None) or 1)


class LongserveServingChat(_PromptAdmission, OpenAIServingChat):
    async def render_chat_request(self, request):
        result = await super().render_chat_request(request)
        if isinstance(result, ErrorResponse):
            return result
        if request._splices:  # refrag rows where their markers were rendered
            result = result[0], [splice(e, request._splices, self.renderer.tokenizer,
                                        self.model_config.dtype) for e in result[1]]
        await self._admit_prompts(request, result[1], "messages")
        return result


class LongserveServingCompletion(_PromptAdmission, OpenAIServingCompletion):
    async def render_completion_request(self, request):
        result = await super().render_completion_request(request)
        if not isinstance(result, ErrorResponse):
            await self._admit_prompts(request, result, "prompt")
        return result


@dataclass
class Serving:
    models: OpenAIServingModels
    chat: LongserveServingChat
    completion: LongserveServingCompletion


async def build_serving(engine, args: Namespace, admission) -> Serving:
    """The serving objects `vllm serve` builds in `init_app_state`, from the same argument
    namespace and with the same keyword arguments, so vLLM's chat-template, tool-parser
    and logging flags behave as they do there; chat and completions generate through
    `AdmittedEngine`."""
    from vllm.entrypoints.launchers.cli_args import resolve_default_chat_template_kwargs
    from vllm.entrypoints.serve.utils.api_utils import process_lora_modules
    from vllm.entrypoints.serve.utils.request_logger import RequestLogger
    from vllm.renderers.chat_utils import load_chat_template

    request_logger = (
        RequestLogger(max_log_len=args.max_log_len) if args.enable_log_requests else None
    )
    chat_template = load_chat_template(args.chat_template)
    template_kwargs = resolve_default_chat_template_kwargs(args)
    lora_config = engine.vllm_config.lora_config
    models = OpenAIServingModels(
        engine_client=engine,
        base_model_paths=[
            BaseModelPath(name=name, model_path=args.model)
            for name in (args.served_model_name or [args.model])
        ],
        lora_modules=process_lora_modules(
            args.lora_modules, lora_config.default_mm_loras if lora_config else {}
        ),
    )
    await models.init_static_loras()
    tools = dict(
        chat_template=chat_template,
        chat_template_content_format=args.chat_template_content_format,
        trust_request_chat_template=args.trust_request_chat_template,
        enable_auto_tools=args.enable_auto_tool_choice,
        exclude_tools_when_tool_choice_none=args.exclude_tools_when_tool_choice_none,
        tool_parser=args.tool_call_parser,
        tool_strict_level=args.tool_strict_level,
        reasoning_parser=args.structured_outputs_config.reasoning_parser,
        default_chat_template_kwargs=template_kwargs,
    )
    renderer = OnlineRenderer(
        engine.model_config,
        engine.renderer,
        request_logger=request_logger,
        trust_request_mm_kwargs=args.trust_request_mm_kwargs,
        log_error_stack=args.log_error_stack,
        **tools,
    )
    renderer.warmup()
    common = dict(
        online_renderer=renderer,
        request_logger=request_logger,
        return_tokens_as_token_ids=args.return_tokens_as_token_ids,
        enable_prompt_tokens_details=args.enable_prompt_tokens_details,
        enable_force_include_usage=args.enable_force_include_usage,
        enable_per_request_metrics=args.enable_per_request_metrics,
    )
    admitted = AdmittedEngine(engine, admission)
    chat = LongserveServingChat(
        admitted, models, args.response_role,
        enable_log_outputs=args.enable_log_outputs,
        enable_log_deltas=args.enable_log_deltas,
        **tools,
        **common,
    )
    completion = LongserveServingCompletion(admitted, models, **common)
    admission.default_max_tokens = default_max_tokens(chat, completion,
                                                      default=admission.default_max_tokens)
    return Serving(models=models, chat=chat, completion=completion)


def default_max_tokens(*servings, default: int) -> int:
    """Let a request that sets no `max_tokens` generate at most `default` tokens (vLLM's
    own default is the rest of the context: minutes of decoding) without capping the
    requests that do set one. vLLM takes a request's budget as the smallest of the rest of
    the context, its `max_tokens` (else the serving's default sampling parameter) and a
    cap; a generation-config override of `max_new_tokens` sets both the default and the
    cap, so longserve fills in the default only. A user's own `--override-generation-config
    '{"max_new_tokens": N}'` keeps vLLM's meaning (every request capped at N) and wins.
    Returns what a request without `max_tokens` may generate."""
    for serving in servings:
        if serving.override_max_tokens is not None:
            return serving.override_max_tokens
        serving.default_sampling_params["max_tokens"] = default
    return default
