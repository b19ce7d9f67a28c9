"""Merge policies: entries that do not survive are folded into ones that do."""
