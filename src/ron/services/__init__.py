"""ron.services."""
