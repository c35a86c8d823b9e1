"""Fixtures that write tiny image folders for the tests (owned by the data tests)."""
