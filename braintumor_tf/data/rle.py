"""COCO run-length encoding: the compressed string codec and runs to a mask."""

from __future__ import annotations

import numpy as np


def decode_rle_string(counts: str) -> np.ndarray:
    """COCO's compressed RLE: run lengths as 5-bit groups in characters offset by 48, bit 6
    meaning "more groups follow", sign taken from the last group's top bit, and from the third
    run on each value stored as a difference to the run two before."""
    runs: list[int] = []
    pos, n = 0, len(counts)
    while pos < n:
        value, shift, more = 0, 0, True
        while more:
            if pos >= n:
                raise ValueError("compressed RLE ends in the middle of a number")
            code = ord(counts[pos]) - 48
            if not 0 <= code < 64:
                raise ValueError(f"compressed RLE has an invalid character {counts[pos]!r}")
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            pos += 1
            shift += 5
            if not more and code & 0x10:
                value -= 1 << shift  # sign-extend
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return np.asarray(runs, np.int64)


def rle_to_mask(runs: np.ndarray, height: int, width: int) -> np.ndarray:
    """Runs alternate background/foreground starting with background, over column-major pixels."""
    values = np.zeros(len(runs), np.uint8)
    values[1::2] = 1
    flat = np.repeat(values, np.asarray(runs, np.int64))
    return flat.reshape((height, width), order="F")
