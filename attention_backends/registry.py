"""The one place longserve's attention backends are made known to vLLM.

vLLM on CPU ignores `--attention-backend` and always asks the registry for `CPU_ATTN`
(`platforms/cpu.py:get_attn_backend_cls`), so longserve takes over the platform
kernel's slot with a subclass that delegates to it (policy-aware, with sparse prefill and
the shared-KV-head decode route); on CUDA it takes the FLASH_ATTN slot the same way.
Class paths are strings: nothing is imported until vLLM builds a layer.
"""

from __future__ import annotations

# platform (vllm.platforms.current_platform.device_type) -> (enum member, our class)
PLATFORM_BACKENDS: dict[str, tuple[str, str]] = {
    "cpu": ("CPU_ATTN", "attention_backends.sparse.cpu.SparseCPUBackend"),
    "cuda": ("FLASH_ATTN", "attention_backends.sparse.cuda.SparseFlashAttnBackend"),
}


def backend_for(device_type: str) -> tuple[str, str] | None:
    return PLATFORM_BACKENDS.get(device_type)


def register() -> str | None:
    """Point the platform's attention slot at longserve's wrapper. Idempotent.

    Returns the class path now in force, or None on a platform longserve has no
    wrapper for (vLLM then runs its own backend unchanged).
    """
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    entry = backend_for(current_platform.device_type)
    if entry is None:
        return None
    slot, class_path = entry
    register_backend(AttentionBackendEnum[slot], class_path)
    return class_path
