"""Writes that fail for the disk's sake (full, over quota, read-only, no permission) end in one
line naming the path, not a traceback.

``WriteFailed`` is an ``OSError`` (code that handles OSError still does) and a ``ValueError`` (the
CLI's one-line handler catches it), like ``io.UnsupportedOperation``.
"""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

DISK_ERRORS = {
    errno.ENOSPC: "the disk is full (no space left on device): free some space and run again",
    errno.EDQUOT: "the disk quota is exceeded: free some space and run again",
    errno.EROFS: "the file system is read-only: choose another place",
    errno.EACCES: "permission denied: choose a place you may write to",
    errno.EPERM: "operation not permitted: choose a place you may write to",
}


class WriteFailed(OSError, ValueError):
    """A write the disk refused; the message names the path and the reason."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.errno = code


def disk_error(error: BaseException) -> int | None:
    """The errno of a disk refusal, from an OSError or from TensorFlow's C++ errors (which carry
    only the strerror text, e.g. ``...: No space left on device``)."""
    if isinstance(error, OSError) and not isinstance(error, WriteFailed):
        return error.errno if error.errno in DISK_ERRORS else None
    if type(error).__module__.startswith("tensorflow"):
        text = str(error)
        for code in DISK_ERRORS:
            if os.strerror(code) in text:
                return code
    return None


def failure(path, error: BaseException, what: str = "") -> WriteFailed | None:
    """The one-line error for ``error`` while writing ``path``, or None if it is not the disk's."""
    code = disk_error(error)
    if code is None:
        return None
    where = f"{what} {os.fsdecode(os.fspath(path))}" if what else os.fsdecode(os.fspath(path))
    return WriteFailed(f"cannot write {where.strip()}: {DISK_ERRORS[code]}", code)


@contextmanager
def reported(path, what: str = "", name_the_file: bool = True):
    """Turn a disk refusal inside the block into ``WriteFailed`` naming the file the OS named
    (``name_the_file``) or ``path``; other errors pass through untouched."""
    try:
        yield
    except WriteFailed:
        raise
    except Exception as error:
        filename = getattr(error, "filename", None) if name_the_file else None
        converted = failure(filename or path, error, what)
        if converted is None:
            raise
        raise converted from error


def writable_dir(path, what: str = "--out") -> Path:
    """Create ``path`` and try a file in it, so a read-only or full ``--out`` is one line before
    any work is done."""
    path = Path(path)
    with reported(path, what, name_the_file=False):
        path.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-check-", dir=path)
        try:
            os.write(handle, b"x")
        finally:
            os.close(handle)
            os.unlink(probe)
    return path


def reports_writes_to(parameter: str):
    """Decorator: a disk refusal anywhere in the function is one line naming the file (or the
    folder given as ``parameter``)."""
    import functools
    import inspect

    def decorate(function):
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            where = signature.bind_partial(*args, **kwargs).arguments.get(parameter) or "."
            with reported(where):
                return function(*args, **kwargs)

        return wrapper

    return decorate
