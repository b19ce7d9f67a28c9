"""Compression policies: every entry kept, stored in fewer bytes."""
