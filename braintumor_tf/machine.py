"""Defaults read off the machine, so inference needs no tuning flags on a laptop or a server."""

from __future__ import annotations

import os

# Images per core in one inference batch: enough to keep each core's vector units busy between
# Python steps; more only adds latency and memory.
IMAGES_PER_CORE = 8
# Budget per image in a batch (input plus the widest activations of a 256-px UNet or ResNet in
# float32, with margin): the memory cap below keeps a small machine from swapping.
BYTES_PER_IMAGE = 96 * 2**20
MAX_BATCH = 128


def usable_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def available_memory_bytes(meminfo: str = "/proc/meminfo") -> int | None:
    """MemAvailable from /proc/meminfo, or None where there is no such file."""
    try:
        with open(meminfo, encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def default_batch_size(cores: int | None = None, memory: int | None = None) -> int:
    """``IMAGES_PER_CORE`` per usable core, capped so a quarter of the available memory holds the
    batch, at least 1 and at most ``MAX_BATCH``."""
    cores = usable_cores() if cores is None else cores
    memory = available_memory_bytes() if memory is None else memory
    batch = IMAGES_PER_CORE * cores
    if memory is not None:
        batch = min(batch, memory // 4 // BYTES_PER_IMAGE)
    return int(max(1, min(batch, MAX_BATCH)))


def environment_limit(variable: str, default: int, unit: str) -> int:
    """A positive whole-number limit from ``$variable`` (``default`` when unset); a bad value is
    one line naming the variable (the value echoed at most 40 characters long)."""
    value = os.environ.get(variable)
    if not value:
        return default
    try:
        limit = int(value)
    except ValueError:
        raise ValueError(f"{variable} must be a whole number of {unit}, "
                         f"got {value[:40]!r}") from None
    if limit < 1:
        raise ValueError(f"{variable} must be >= 1, got {value[:40]!r}")
    return limit
