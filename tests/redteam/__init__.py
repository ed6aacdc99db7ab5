"""Red-team tests: hostile input against one running node (a package, so that the node
is stopped as soon as the last red-team test is done)."""
