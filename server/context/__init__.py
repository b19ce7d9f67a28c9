"""Per-request long-context strategies: what to do with a prompt that does not fit."""
