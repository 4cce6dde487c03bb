"""Progress and messages through the standard ``logging`` module (logger ``braintumor_tf``).

Libraries stay silent unless the application configures logging; the CLI calls ``configure`` so a
user sees them on stdout (``--quiet``: warnings only; ``--verbose``: debug).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile

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


@contextlib.contextmanager
def native_stderr_without(*noise: str):
    """Run a block whose C++ libraries write to file descriptor 2, dropping lines that contain
    one of ``noise`` and passing every other line through afterwards.

    TensorFlow's converter logs known-harmless lines at error level (``E0000 ... NodeDef mentions
    attribute Truncate``), which TF_CPP_MIN_LOG_LEVEL cannot hide without hiding real errors.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr (embedded interpreters): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode("utf-8", "replace").splitlines(True)
                    if not any(pattern in line for pattern in noise)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


# What TensorFlow prints on import before its logging is configured (TF_CPP_MIN_LOG_LEVEL does
# not reach these): true for every run, so noise to a user; --verbose shows them.
TENSORFLOW_IMPORT_NOISE = ("absl::InitializeLog", "oneDNN custom operations are on")


def quiet_tensorflow_import() -> None:
    """Drop TensorFlow's import-time lines in this process (the CLI calls it unless --verbose);
    anything else it prints on import still shows."""
    from braintumor_tf.import_hooks import wrap_first_import

    def around(execute):
        with native_stderr_without(*TENSORFLOW_IMPORT_NOISE):
            execute()

    wrap_first_import("tensorflow", around)


def _printable(text: str) -> str:
    """Control characters (a newline in a file name) escaped, so one result stays one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def result(message: str) -> None:
    """A result (a prediction, a verdict): always on stdout, whatever --quiet says, one line per
    call even when a file name holds a newline."""
    sys.stdout.write(_printable(message) + "\n")
    sys.stdout.flush()
