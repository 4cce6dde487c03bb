"""Progress and messages through the standard ``logging`` module (logger ``braintumor_tf``).

Libraries stay silent unless the application configures logging; the CLI calls ``configure`` so a
user sees them on stdout (``--quiet``: warnings only; ``--verbose``: debug).
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("braintumor_tf")


def log(message: str) -> None:
    logger.info(message)


def configure(verbosity: int = 0) -> None:
    """verbosity < 0: warnings only, 0: progress, > 0: debug details."""
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    logger.setLevel(level)
    handler = next((h for h in logger.handlers if getattr(h, "_braintumor_tf", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._braintumor_tf = True
        logger.addHandler(handler)
    handler.setStream(sys.stdout)  # the current stdout (test runners swap it)
    logger.propagate = False
