"""ron.cli."""
