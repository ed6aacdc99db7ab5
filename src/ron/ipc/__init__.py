"""ron.ipc."""
