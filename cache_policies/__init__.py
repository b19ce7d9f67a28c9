"""KV cache policies: which KV entries a request keeps, merges, compresses or fetches back.

One small class per method on one base; `registry.py` maps the names a request or the
server default may use to those classes.
"""
