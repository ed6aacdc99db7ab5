"""ron.auth."""
