"""Methods mixed into vLLM's worker (`--worker-extension-cls`), called with
`AsyncLLM.collective_rpc(name)`. Names carry a `longserve_` prefix: vLLM refuses an
extension whose attribute names clash with the worker's."""

from __future__ import annotations

from collections import Counter


class LongserveWorkerExtension:
    def longserve_attention_report(self) -> dict:
        """Which backend and impl class each attention layer of this worker runs, and how
        many forward calls longserve's impls have served in this process."""
        from vllm.model_executor.layers.attention.attention import Attention

        from attention_backends.policy_aware.base import PolicyAwareImplMixin

        context = self.vllm_config.compilation_config.static_forward_context  # type: ignore[attr-defined]
        layers = [layer for layer in context.values() if isinstance(layer, Attention)]

        def path(cls: type) -> str:
            return f"{cls.__module__}.{cls.__qualname__}"

        return {
            "num_layers": len(layers),
            "backends": dict(Counter(path(layer.attn_backend) for layer in layers)),
            "impls": dict(Counter(path(type(layer.impl)) for layer in layers)),
            "forward_calls": PolicyAwareImplMixin.forward_calls,
        }
