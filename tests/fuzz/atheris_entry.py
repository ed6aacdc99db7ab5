"""The command line every fuzz harness shares.

atheris is imported only here, and only when a harness runs as a script (``make
fuzz``): the corpus replay in ``make test`` loads the harness modules without it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


def fuzz(one_input: Callable[[bytes], None]) -> None:
    """Run libFuzzer over ``one_input`` with the script's own arguments."""
    import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]

    atheris.instrument_all()
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
