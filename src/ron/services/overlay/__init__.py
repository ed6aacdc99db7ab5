"""The overlay: the only path from the gateways to index and storage."""
