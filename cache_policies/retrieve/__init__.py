"""Retrieval policies: every entry stays; each decode step attends to the blocks that matter."""
