"""Quotas: token buckets, local and shared between processes."""
