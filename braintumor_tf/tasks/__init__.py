"""One object per problem the package solves; ``get_task(config.task)`` picks it."""

from __future__ import annotations

from braintumor_tf.config import TASKS
from braintumor_tf.tasks.base import Task, TaskData


def get_task(name: str) -> Task:
    if name == "classification":
        from braintumor_tf.tasks.classification import ClassificationTask

        return ClassificationTask()
    if name == "segmentation":
        from braintumor_tf.tasks.segmentation import SegmentationTask

        return SegmentationTask()
    raise ValueError(f"task must be one of {TASKS}, got {name!r}")


__all__ = ["Task", "TaskData", "get_task"]
