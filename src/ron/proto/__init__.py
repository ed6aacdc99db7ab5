"""ron.proto."""
