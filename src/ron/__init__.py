"""RustyOnions: a microkernel-supervised node for a content-addressed web backbone."""

__version__ = "0.1.0"
