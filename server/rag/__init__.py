"""Compress-sense-expand for requests that bring documents (REFRAG, arXiv:2509.01092,
training-free): chunk the documents, encode the chunks with a small sentence encoder,
sense which chunks the question needs, expand those as raw text in their original order
and compress the rest (dropped behind a marker, or cut to their most relevant sentences).
"""
