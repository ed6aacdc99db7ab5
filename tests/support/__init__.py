"""Helpers shared by the integration tests (importable by child processes via PYTHONPATH)."""
