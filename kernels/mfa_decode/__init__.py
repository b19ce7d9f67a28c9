"""Decode attention for MFA (Step-3's Multi-Matrix Factorization Attention): many query
heads over one shared KV head, so each request's K and V are read once for all heads."""
