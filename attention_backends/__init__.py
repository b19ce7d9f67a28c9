"""vLLM attention backends added by longserve.

Each backend is a small package (metadata builder + impl); `registry.py` is the one place
that tells vLLM about them. Nothing here handles HTTP or makes scheduling decisions.
"""
