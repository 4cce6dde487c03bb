"""CSV files that list image paths: UTF-8, and any file name survives the round trip.

A file name that is not valid UTF-8 reaches Python as a str with surrogate escapes; written with
``errors="surrogateescape"`` its original bytes go to the file and come back unchanged on reading.
"""

from __future__ import annotations

import os


def open_csv(path: str | os.PathLike, mode: str = "r"):
    return open(path, mode, newline="", encoding="utf-8", errors="surrogateescape")
