"""Progress and messages through the standard ``logging`` module (logger ``braintumor_tf``).

Libraries stay silent unless the application configures logging; the CLI calls ``configure`` so a
user sees ``[braintumor_tf] ...`` lines on stdout (``--quiet``: warnings only; ``--verbose``: debug).
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
    if not any(getattr(handler, "_braintumor_tf", False) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[braintumor_tf] %(message)s"))
        handler._braintumor_tf = True
        logger.addHandler(handler)
    logger.propagate = False
