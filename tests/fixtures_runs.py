"""Fixtures that train a tiny run once per session (owned by the training tests)."""
