"""Decode attention for layers with one shared KV head: Step-3's Multi-Matrix
Factorization Attention (a low-rank query projection expanded to many heads over one KV
head), and MQA in general. vLLM serves Step-3 text models (`Step3TextForCausalLM`) with
its own layer code; what changes is the kernel under them: the shared head's keys and
values are read once per request for every query head (`kernels.mfa_decode`)."""

# worker counters (cache_policies.stats): decode tokens the shared-KV route attended
KIND = "mfa"
FIELDS = ("tokens",)
