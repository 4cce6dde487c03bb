"""``braintumor-tf evaluate``: score a saved model (any form) with its task's evaluator."""

from __future__ import annotations

from braintumor_tf import writes
from braintumor_tf.export.released import resolve_model
from braintumor_tf.export.runtimes import checked_threshold, load_runtime, resolve_batch_size
from braintumor_tf.tasks import get_task


@writes.reports_writes_to("out_dir")
def evaluate(model_path, data_paths, json_path=None, out_dir=None, batch_size: int | None = None,
             split: str | None = None, masks=None, tta: str | None = None,
             threshold: float | None = None, labels=(), shifts: str | None = None) -> dict:
    """Every decodable image under ``data_paths`` is evaluated; broken files reported.

    A ``split_manifest.csv`` written by a training run may stand in for a folder, so the
    run's own test split can be re-scored by any exported form of the model. The task is read
    from the model itself (a segmenter outputs [N, S, S, 1]), so one command serves both.
    """
    model_path = resolve_model(model_path)  # a path, or a released model's name
    if not model_path.exists():
        raise FileNotFoundError(f"model not found: {model_path}")
    if out_dir is not None:
        writes.writable_dir(out_dir)  # a read-only or full --out: one line, before any scoring
    batch_size = resolve_batch_size(batch_size)
    runtime = load_runtime(model_path, batch_size=batch_size, tta=tta)
    # A threshold being chosen on validation, before it is exported: the segmenter's evaluator
    # takes it as it takes the run's own at the end of training.
    options = {} if threshold is None else {"threshold": checked_threshold(threshold, runtime.task)}
    if labels:
        runtime.expect_task("classification",
                            "--labels is for classifiers; for a segmenter give --data and --masks")
        options.update(labels=tuple(labels))
    if shifts is not None:
        options.update(shifts=shifts)
    if not data_paths and not labels:
        raise ValueError("give --data (a folder or a split manifest) or --labels (a table)")
    return get_task(runtime.task).evaluate(runtime, data_paths, json_path=json_path, out_dir=out_dir,
                                           batch_size=batch_size, split=split, masks=masks, **options)
