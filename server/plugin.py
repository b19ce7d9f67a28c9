"""The vLLM general plugin (entry point `vllm.general_plugins`: longserve).

vLLM calls `register()` in every process it starts (API server, engine core, workers),
before any model is built. It must stay idempotent and import lazily.
"""

from __future__ import annotations


def register() -> None:
    from vllm import ModelRegistry

    from attention_backends.registry import register as register_attention

    register_attention()
    # Hugging Face's MiniMax format (lightning + softmax layers); vLLM dropped its own
    ModelRegistry.register_model("MiniMaxForCausalLM",
                                 "attention_backends.lightning.model:MiniMaxForCausalLM")
    # attention-FFN disaggregation: the attention side of a served architecture
    ModelRegistry.register_model("LongserveAFDLlamaForCausalLM",
                                 "server.afd.model:AFDLlamaForCausalLM")
