"""Image width and height read from the file header, before anything is decoded.

A 144 KB PNG can declare 12000 x 12000 pixels and cost gigabytes once decoded (a "pixel bomb").
Reading the size first lets every loader refuse such a file in microseconds. Formats whose
header is not understood here fall back on OpenCV's own limit (OPENCV_IO_MAX_IMAGE_PIXELS,
set to the same value in data.decode).
"""

from __future__ import annotations

import struct
import zlib

from braintumor_tf.machine import environment_limit

DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
ENVIRONMENT_VARIABLE = "BRAINTUMOR_TF_MAX_IMAGE_PIXELS"

# JPEG start-of-frame markers: every SOFn except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_FRAME_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def max_image_pixels() -> int:
    """The limit in force: $BRAINTUMOR_TF_MAX_IMAGE_PIXELS, else 50 megapixels."""
    return environment_limit(ENVIRONMENT_VARIABLE, DEFAULT_MAX_IMAGE_PIXELS, "pixels")


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) declared by a PNG, JPEG, BMP, GIF, TIFF or WebP header; None if unknown."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            # Only a header whose checksum holds is believed: garbage there is corruption,
            # for the decoder to report, not a size.
            if struct.unpack(">I", data[29:33])[0] != zlib.crc32(data[12:29]):
                return None
            return struct.unpack(">II", data[16:24])
        if data.startswith(b"\xff\xd8"):
            return _jpeg_size(data)
        if data.startswith(b"BM"):
            width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)
        if data.startswith((b"GIF87a", b"GIF89a")):
            return struct.unpack("<HH", data[6:10])
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(data)
        if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
            return _webp_size(data)
    except struct.error:  # a header cut short: the decoder will say what is wrong
        return None
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            position += 2
            continue
        length = struct.unpack(">H", data[position + 2:position + 4])[0]
        if marker in _JPEG_FRAME_MARKERS:
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            return width, height
        if marker == 0xDA:  # start of scan before any frame header
            return None
        position += 2 + length
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    order = "<" if data[:2] == b"II" else ">"
    offset = struct.unpack(order + "I", data[4:8])[0]
    count = struct.unpack(order + "H", data[offset:offset + 2])[0]
    found = {}
    for index in range(min(count, 512)):
        entry = data[offset + 2 + 12 * index: offset + 14 + 12 * index]
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):
            found[tag] = struct.unpack(order + ("H" if kind == 3 else "I"),
                                       entry[8:10] if kind == 3 else entry[8:12])[0]
    return (found[256], found[257]) if len(found) == 2 else None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def check_pixel_count(data: bytes, name: str, error_type=ValueError) -> None:
    """Refuse a file whose header declares more pixels than the limit, before decoding it."""
    size = header_size(data)
    if size is None:
        return
    width, height = size
    limit = max_image_pixels()
    if width * height > limit:
        raise error_type(f"{name}: {width} x {height} pixels declared in its header, more than "
                         f"the {limit:,}-pixel limit (a decompression bomb or a huge scan; "
                         f"raise {ENVIRONMENT_VARIABLE} to accept it)")
