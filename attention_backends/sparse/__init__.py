"""Sparse attention for long prefill: each chunk of a long prompt estimates, per layer and
KV head, which key blocks matter (vertical-slash, block top-k or LSH, `patterns/`) and
attends to those only; decode and short prompts stay dense. Chosen per request
(`"attention": {"name": "sparse", ...}`) or per deployment (`--attention sparse`)."""
