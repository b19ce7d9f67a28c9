"""The policy-aware wrapper of the platform attention kernel.

It computes exactly what the platform kernel computes (it *is* that kernel, subclassed);
it is the seam where KV-cache policies and sparse prefill attention hook in. Every impl
counts its forward calls so a running engine can show that this backend is the one in use.
"""
