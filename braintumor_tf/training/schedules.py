"""Learning-rate schedules, serialisable so a saved ``.keras`` model reloads with its schedule."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from braintumor_tf.config import ScheduleConfig


@keras.saving.register_keras_serializable(package="braintumor_tf")
class WarmupCosineFloor(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup, cosine decay, then a flat floor (the study's schedule).

    Warmup avoids large early steps while batch-norm statistics settle; the floor keeps
    learning going after the decay instead of stalling at zero.
    With ``W = warmup_fraction * total_steps`` and ``D = decay_fraction * total_steps``:
    ``[0, W)`` linear from ``warmup_start_factor * base`` to ``base``; ``[W, W + D)`` cosine
    from ``base`` to ``floor_factor * base``; afterwards ``floor_factor * base``.
    """

    def __init__(
        self,
        base_learning_rate: float,
        total_steps: int,
        warmup_start_factor: float = ScheduleConfig.warmup_start_factor,
        warmup_fraction: float = ScheduleConfig.warmup_fraction,
        decay_fraction: float = ScheduleConfig.decay_fraction,
        floor_factor: float = ScheduleConfig.floor_factor,
    ):
        _validate(base_learning_rate, total_steps, warmup_start_factor, warmup_fraction,
                  decay_fraction, floor_factor)
        self.base_learning_rate = float(base_learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_start_factor = float(warmup_start_factor)
        self.warmup_fraction = float(warmup_fraction)
        self.decay_fraction = float(decay_fraction)
        self.floor_factor = float(floor_factor)

    @property
    def warmup_steps(self) -> float:
        return self.warmup_fraction * self.total_steps

    @property
    def decay_steps(self) -> float:
        return self.decay_fraction * self.total_steps

    def __call__(self, step):
        # Elementwise (ops.where, no Python branching on the step) so it traces inside
        # tf.function and also evaluates a whole vector of steps at once for plots.
        step = ops.cast(step, "float32")
        base = self.base_learning_rate
        start = self.warmup_start_factor * base
        floor = self.floor_factor * base
        warmup_end = self.warmup_steps
        decay_end = warmup_end + self.decay_steps

        # Python-level guards: a zero-length phase is never selected, so only avoid 0/0.
        if warmup_end > 0:
            warm = start + (base - start) * (step / warmup_end)
        else:
            warm = ops.full_like(step, base)
        if self.decay_steps > 0:
            progress = ops.clip((step - warmup_end) / self.decay_steps, 0.0, 1.0)
            decay = floor + (base - floor) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        else:
            decay = ops.full_like(step, floor)
        flat = ops.full_like(step, floor)
        value = ops.where(step < warmup_end, warm, ops.where(step < decay_end, decay, flat))
        return ops.cast(value, "float32")

    def get_config(self) -> dict:
        return {
            "base_learning_rate": self.base_learning_rate,
            "total_steps": self.total_steps,
            "warmup_start_factor": self.warmup_start_factor,
            "warmup_fraction": self.warmup_fraction,
            "decay_fraction": self.decay_fraction,
            "floor_factor": self.floor_factor,
        }


def _validate(base_learning_rate, total_steps, warmup_start_factor, warmup_fraction,
              decay_fraction, floor_factor) -> None:
    if not base_learning_rate > 0:
        raise ValueError(f"base_learning_rate must be > 0, got {base_learning_rate!r}")
    if isinstance(total_steps, bool) or int(total_steps) != total_steps or total_steps < 1:
        raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
    for name, value in (("warmup_fraction", warmup_fraction), ("decay_fraction", decay_fraction)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    if warmup_fraction + decay_fraction > 1.0 + 1e-9:
        raise ValueError("warmup_fraction + decay_fraction must be <= 1, got "
                         f"{warmup_fraction!r} + {decay_fraction!r}")
    for name, value in (("warmup_start_factor", warmup_start_factor),
                        ("floor_factor", floor_factor)):
        if not value >= 0.0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")


def make_schedule(schedule_config: ScheduleConfig, base_learning_rate: float, total_steps: int):
    """The optimizer's ``learning_rate``: a schedule, or a plain float for 'constant'."""
    name = schedule_config.name
    if name == "constant":
        return float(base_learning_rate)
    if name == "warmup_cosine_floor":
        return WarmupCosineFloor(
            base_learning_rate,
            total_steps,
            warmup_start_factor=schedule_config.warmup_start_factor,
            warmup_fraction=schedule_config.warmup_fraction,
            decay_fraction=schedule_config.decay_fraction,
            floor_factor=schedule_config.floor_factor,
        )
    raise ValueError(
        f"unknown schedule name {name!r}; expected 'warmup_cosine_floor' or 'constant'"
    )


def schedule_values(schedule, total_steps: int) -> np.ndarray:
    """Learning rate at steps ``0 .. total_steps - 1`` as float32, for plots and reports."""
    steps = np.arange(int(total_steps))
    if isinstance(schedule, (int, float)):
        return np.full(steps.shape, schedule, dtype=np.float32)
    if isinstance(schedule, WarmupCosineFloor):
        return np.asarray(ops.convert_to_numpy(schedule(steps)), dtype=np.float32)
    # Other schedules may not be elementwise, so evaluate one step at a time.
    return np.array([float(ops.convert_to_numpy(schedule(int(s)))) for s in steps],
                    dtype=np.float32)
