"""Eviction policies: score every entry, keep the best within the budget."""
