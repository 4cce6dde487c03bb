"""Reading user data from local disk or from any filesystem TensorFlow has registered.

A path with a URL scheme (``gs://``, ``s3://``, ``ram://``, ...) goes through ``tf.io.gfile``;
every other path keeps the plain stdlib calls, so local data pays neither TensorFlow's import
nor a behaviour change. Remote paths stay ``str``: ``pathlib`` collapses the ``//`` after the
scheme. Errors from TensorFlow become ``OSError`` (``FileNotFoundError`` for a missing file),
because that is what every caller already catches for unreadable local files.
"""

from __future__ import annotations

import errno
import io
import os
import posixpath
import re
import stat
from collections.abc import Iterator

from braintumor_tf.machine import environment_limit

# Two letters at least, so that a Windows drive ("C://data") is not taken for a scheme.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def shown(text) -> str:
    """``text`` (a path, or a report holding paths) fit to print or draw: a file name that is not
    valid UTF-8 (surrogate escapes in Python) shows its odd bytes as ``\\xff`` instead of
    failing the terminal's or a font's encoder."""
    return os.fspath(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_remote(path) -> bool:
    """True for ``scheme://...`` strings; a Path can never be one (it has lost the ``//``)."""
    return isinstance(path, str) and _SCHEME.match(path) is not None


def _gfile():
    import tensorflow as tf  # only here: listing and reading local data must not import TF

    return tf.io.gfile


def _as_os_error(error: Exception, path: str) -> OSError:
    """tf.errors.* are not OSError; callers report unreadable files by catching OSError."""
    import tensorflow as tf

    if isinstance(error, tf.errors.NotFoundError):
        return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    if isinstance(error, tf.errors.PermissionDeniedError):
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
    message = getattr(error, "message", "") or str(error) or type(error).__name__
    return OSError(errno.EIO, message, path)


def join(root, *parts) -> str:
    """os.path.join would use ``\\`` on Windows, which object stores do not understand."""
    if is_remote(root):
        return posixpath.join(root, *parts)
    return os.path.join(root, *parts)


def basename(path) -> str:
    """Last component; a remote folder given with a trailing ``/`` still has its name."""
    if is_remote(path):
        return posixpath.basename(path.rstrip("/"))
    return os.path.basename(path)


def parent_folders(path: str) -> list[str]:
    """A remote path's enclosing folders, nearest first, down to the bucket (not ``scheme://``)."""
    scheme = _SCHEME.match(path).group(0)
    rest = path[len(scheme):]
    lead = "/" if rest.startswith("/") else ""
    parts = [p for p in rest.split("/") if p]
    return [scheme + lead + "/".join(parts[:k]) for k in range(len(parts) - 1, 0, -1)]


def dirname(path) -> str:
    """The enclosing folder; for a file at the top of a remote store, ``scheme://`` itself."""
    if is_remote(path):
        folders = parent_folders(path)
        return folders[0] if folders else _SCHEME.match(path).group(0)
    return os.path.dirname(path)


def relative_parts(path: str, root: str) -> tuple[str, ...] | None:
    """Components of a remote ``path`` below ``root``; None when it is not below it."""
    prefix = root.rstrip("/") + "/"
    if not path.startswith(prefix):
        return None
    return tuple(p for p in path[len(prefix):].split("/") if p)


def exists(path) -> bool:
    if is_remote(path):
        gfile = _gfile()
        try:
            return bool(gfile.exists(path))
        except Exception as error:  # e.g. a scheme TensorFlow does not know, a store not reached
            raise _as_os_error(error, path) from error
    return os.path.exists(path)


def is_dir(path) -> bool:
    if is_remote(path):
        gfile = _gfile()
        try:
            return bool(gfile.isdir(path))
        except Exception as error:
            raise _as_os_error(error, path) from error
    return os.path.isdir(path)


def is_file(path) -> bool:
    """Object stores have files and folders only: no links, pipes or devices to tell apart."""
    if is_remote(path):
        import tensorflow as tf

        try:
            return not tf.io.gfile.stat(path).is_directory  # one request, not exists + isdir
        except tf.errors.NotFoundError:
            return False
        except Exception as error:
            raise _as_os_error(error, path) from error
    return os.path.isfile(path)


def walk(root) -> Iterator[tuple[str, list[str], list[str]]]:
    """Top-down like os.walk (edit ``dirnames`` in place to prune), errors ignored like os.walk.

    Remote listings are done here rather than with tf.io.gfile.walk because the GCS listing
    names folders with a trailing ``/`` (tensorflow/tensorflow#39167) and that walk keeps it.
    """
    if not is_remote(root):
        yield from os.walk(root)
        return
    gfile = _gfile()
    try:
        names = gfile.listdir(root)
    except Exception:
        return
    dirnames: list[str] = []
    filenames: list[str] = []
    for name in names:
        if name.endswith("/"):
            dirnames.append(name.rstrip("/"))
            continue
        try:
            folder = gfile.isdir(join(root, name))
        except Exception:
            folder = False
        (dirnames if folder else filenames).append(name)
    dirnames = [d for d in dirnames if d]
    yield root, dirnames, filenames
    for name in dirnames:
        yield from walk(join(root, name))


def file_kind(mode: int) -> str:
    """What a ``st_mode`` that is not a regular file is, in words."""
    return ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISBLK(mode) or stat.S_ISCHR(mode) else "not a regular file")


def _not_regular(path, mode: int) -> OSError:
    return OSError(errno.EINVAL, f"{file_kind(mode)}, not a regular file; not opened",
                   os.fspath(path))


def is_regular_file(path) -> bool:
    """A local regular file (links followed); never opens anything. Remote: is_file."""
    if is_remote(path):
        return is_file(path)
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def check_regular_file(path) -> None:
    """OSError unless ``path`` is a regular file (or remote): for readers that open by name
    (nibabel, pydicom), so a FIFO or a device is refused instead of blocking them."""
    if is_remote(path):
        return
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise _not_regular(path, mode)


MAX_FILE_BYTES_VARIABLE = "BRAINTUMOR_TF_MAX_FILE_BYTES"
DEFAULT_MAX_FILE_BYTES = 512 * 1024 * 1024


def max_file_bytes() -> int:
    """The largest file read whole: $BRAINTUMOR_TF_MAX_FILE_BYTES, else 512 MB (an MRI slice is
    well under 10 MB; a 3 GB sparse file named .jpg must not cost 3 GB before any check)."""
    return environment_limit(MAX_FILE_BYTES_VARIABLE, DEFAULT_MAX_FILE_BYTES, "bytes")


def _too_large(path, size: int | None, limit: int) -> OSError:
    what = f"{size} bytes" if size is not None else "larger than it said"
    return OSError(errno.EFBIG, f"{what}, over the {limit}-byte limit for one file; not read "
                                f"({MAX_FILE_BYTES_VARIABLE} raises it)", os.fspath(path))


def open_regular(path, capped: bool = True):
    """A local file opened for binary reading only if it is a regular file. The open itself
    does not block (O_NONBLOCK: a FIFO with no writer would hang a plain ``open`` forever), the
    opened file is checked with fstat (no window for a swap after a check), and only then is it
    made blocking again for ordinary reads. ``capped``: a file larger than ``max_file_bytes()``
    is refused before a byte is read (callers that read a bounded header pass False)."""
    limit = max_file_bytes() if capped else None
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        info = os.fstat(fd)
        mode = info.st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode)
        if limit is not None and info.st_size > limit:
            raise _too_large(path, info.st_size, limit)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path, limit: int | None = None) -> bytes:
    """The whole file, or its first ``limit`` bytes (headers, magic numbers). Local files must
    be regular files (open_regular): FIFOs, sockets and devices are refused, never read. A whole
    read of a file over ``max_file_bytes()`` is refused (OSError naming the file) before reading,
    local or remote."""
    if not is_remote(path):
        with open_regular(path, capped=limit is None) as handle:
            if limit is not None:
                return handle.read(limit)
            cap = max_file_bytes()
            data = handle.read(cap + 1)  # a file that grew after its size was checked
        if len(data) > cap:
            raise _too_large(path, None, cap)
        return data
    gfile = _gfile()
    cap = max_file_bytes()
    try:
        size = int(gfile.stat(path).length) if limit is None else 0
        if size > cap:
            raise _too_large(path, size, cap)
        with gfile.GFile(path, "rb") as handle:
            data = handle.read(cap + 1) if limit is None else handle.read(limit)
    except OSError:
        raise
    except Exception as error:
        raise _as_os_error(error, path) from error
    if limit is None and len(data) > cap:
        raise _too_large(path, None, cap)
    return data


def open_text(path, encoding: str = "utf-8", errors: str = "strict", newline: str | None = None):
    """A text file to read; a remote one is fetched whole (subjects CSVs, COCO JSON, manifests
    are small) so that decoding errors surface as they do for a local file."""
    if not is_remote(path):
        return io.TextIOWrapper(open_regular(path), encoding=encoding, errors=errors,
                                newline=newline)
    return io.StringIO(read_bytes(path).decode(encoding, errors), newline=newline)


def size_and_mtime(path) -> tuple[int, int]:
    """(bytes, modification time in ns): what caches key a file's content on."""
    if not is_remote(path):
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    gfile = _gfile()
    try:
        st = gfile.stat(path)
    except Exception as error:
        raise _as_os_error(error, path) from error
    return int(st.length), int(st.mtime_nsec)
