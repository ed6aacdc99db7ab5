"""ron.sdk."""
