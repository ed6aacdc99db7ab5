"""The HTTP gateway service."""
