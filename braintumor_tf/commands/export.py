"""Export a trained classifier or segmenter for TF Serving (versioned SavedModel) and the edge (TFLite).

Layout of ``out_base`` (what TF Serving's ``base_path`` points at)::

    out_base/<version>/            SavedModel, one integer directory per export, never overwritten
    out_base/<name>_<variant>.tflite (+ .json with dtypes, scale, zero point)
    out_base/tflite_parity.json|md
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from braintumor_tf.custom_objects import load_model
from braintumor_tf.data.discover import CLASS_NAMES
from braintumor_tf.export.parity import write_parity_report
from braintumor_tf.export.runtimes import (
    checked_threshold,
    configured_threshold,
    load_runtime,
    task_of_output_rank,
)
from braintumor_tf.export.savedmodel import guard_metadata, model_geometry, next_version_dir
from braintumor_tf.export.tflite import (
    TFLITE_VARIANTS,
    convert_to_tflite,
    float32_model,
    tflite_file_name,
)
from braintumor_tf.export.validation_data import folder_rows, load_pixels, manifest_rows
from braintumor_tf.log import log
from braintumor_tf.models.guard import load_guard_of, with_guard
from braintumor_tf.models.layers import graph_intensity
from braintumor_tf.models.tta import with_test_time_augmentation
from braintumor_tf.spec import ModelSpec, read_spec, spec_for, task_facts, write_keras_spec
from braintumor_tf.tasks import get_task


def parse_variants(text: str | Sequence[str] | None) -> tuple[str, ...]:
    if not text:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    variants = tuple(dict.fromkeys(v.strip() for v in items if v.strip()))
    unknown = [v for v in variants if v not in TFLITE_VARIANTS]
    if unknown:
        raise ValueError(f"unknown TFLite variant(s) {unknown}: choose from {','.join(TFLITE_VARIANTS)}")
    return variants


def resolve_keras_model(model_path=None, run_dir=None) -> Path:
    """TFLite conversion and Grad-CAM need the Keras graph, so exports start from a .keras file."""
    if (model_path is None) == (run_dir is None):
        raise ValueError("give exactly one of --model PATH.keras or --run RUN_DIR")
    if run_dir is not None:
        run_dir = Path(run_dir)
        for name in ("model.keras", "best.keras"):
            if (run_dir / name).is_file():
                return run_dir / name
        raise FileNotFoundError(f"no model.keras or best.keras in run directory {run_dir}")
    path = Path(model_path)
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    if path.suffix != ".keras":
        raise ValueError(f"export needs a .keras model (SavedModels and .tflite files are already "
                         f"exports), got {path}")
    return path


INT8_WITHOUT_SCORE = ("not in the int8 file: its integer range is calibrated on MRI slices only, "
                      "so it ends below the threshold and would never flag; use the float16 or "
                      "dynamic file, or the SavedModel, where the guard matters")


def _tflite_source(model, variant: str):
    """(model to convert, guard metadata) for one LiteRT variant. The int8 file keeps the
    guard's decision weights and temperature but not its ``ood_score``: release 2's int8 file
    carried one whose int8 range topped out at 0.76 under a threshold of 0.97, and flagged none
    of 300 non-MRI probes."""
    guard_info = guard_metadata(model)
    if variant != "int8" or not guard_info:
        return model, guard_info
    import keras

    probabilities = keras.Model(model.inputs, model.get_layer("probabilities").output,
                                name=f"{model.name}_probabilities")
    kept = {key: value for key, value in guard_info.items()
            if key not in ("ood_threshold", "ood_method")}
    return probabilities, {**kept, "ood_score": INT8_WITHOUT_SCORE}


@contextlib.contextmanager
def _float32_reference(model, keras_path: Path, threshold: float, spec: ModelSpec):
    """The float32 model the files were converted from, as a runtime; named after the trained
    file in the reports. Its spec says what it is, and adds nothing: the averaging and guard are
    already inside ``model``."""
    with tempfile.TemporaryDirectory() as tmp:
        twin = Path(tmp) / keras_path.name
        model.save(twin)
        write_keras_spec(twin, spec.replace(averaging="none", temperature=None,
                                            ood_threshold=None, class_weights=None))
        runtime = load_runtime(twin)
        runtime.path, runtime.threshold = keras_path, threshold
        yield runtime


def _exported_spec(spec, task: str, model, image_size: int, channels: int, tta: str,
                   threshold: float, guard) -> ModelSpec:
    """The spec every exported form carries: the .keras file's own (or one read off its graph,
    for files written before specs), with the averaging, threshold and guard built in."""
    facts = task_facts(task)
    threshold = threshold if facts.thresholded else None
    if spec is None:
        spec = spec_for(task, facts.fixed_class_names or CLASS_NAMES, image_size, channels,
                        intensity=graph_intensity(model), threshold=threshold)
    return spec.replace(
        averaging=tta, threshold=threshold,
        temperature=None if guard is None else float(guard.temperature),
        ood_threshold=None if guard is None else float(guard.threshold),
        class_weights=None if guard is None else guard.class_weights)


def version_dir(out_base: Path, version: int | None) -> Path:
    if version is None:
        return next_version_dir(out_base)
    if version < 1:
        raise ValueError(f"--version must be a positive integer, got {version}")
    target = out_base / str(version)
    if target.exists():
        raise FileExistsError(
            f"version {version} already exists in {out_base}; versions are never overwritten "
            f"(omit --version to use the next free one, {next_version_dir(out_base).name})")
    return target


def export_model(
    out_base: str | os.PathLike,
    model_path=None,
    run_dir=None,
    version: int | None = None,
    tflite_variants: str | Sequence[str] | None = None,
    representative_data=None,
    validation_data=None,
    int8_io: str = "int8",
    masks=None,
    tta: str = "none",
    parity_split: str = "val",
    threshold: float | None = None,
) -> dict:
    """SavedModel version, then TFLite variants, then the parity report.

    Data for calibration and parity is read before anything is written, so a missing or
    empty folder fails without leaving a version behind. The model's task (read from its output)
    decides how many images calibrate and check parity, and how parity is judged. ``tta`` builds
    test-time augmentation into every exported file (``models.tta``). ``parity_split``: the
    part of ``run_dir``'s manifest the parity report uses. ``threshold`` (segmenters): where a
    probability becomes tumour in the exported masks, e.g. one chosen on validation; default the
    run's ``segmentation.threshold``.
    """
    if parity_split not in ("train", "val", "test"):
        raise ValueError(f"parity_split must be train, val or test, got {parity_split!r}")
    out_base = Path(out_base)
    variants = parse_variants(tflite_variants)
    keras_path = resolve_keras_model(model_path, run_dir)
    target = version_dir(out_base, version)
    # Exported in float32 even when trained in mixed precision: TFLite has no bfloat16 ops,
    # bfloat16 is only fast on CPUs with native support, and parity is against the float model.
    model = float32_model(load_model(keras_path, compile=False))
    image_size, channels = model_geometry(model)
    spec = read_spec(keras_path)
    task = get_task(spec.task if spec is not None
                    else task_of_output_rank(len(model.output_shape)))
    if threshold is None:
        threshold = (spec.threshold if spec is not None and spec.threshold is not None
                     else configured_threshold(keras_path))
    else:
        threshold = checked_threshold(threshold, task.name)
    guard = load_guard_of(keras_path) if task.name == "classification" else None
    if guard is not None:  # ood_score and calibrated probabilities inside every export
        model = with_guard(model, guard, tta)
        log(f"out-of-distribution guard of {keras_path.name} (threshold "
            f"{guard.threshold:.1f}, temperature {guard.temperature:.2f})")
    else:
        model = with_test_time_augmentation(model, tta)
    exported_spec = _exported_spec(spec, task.name, model, image_size, channels, tta, threshold,
                                   guard)

    calibration = None
    if "int8" in variants:
        if run_dir is not None:
            rows = manifest_rows(Path(run_dir), "train")
        elif representative_data is not None:
            rows = folder_rows(representative_data)
        else:
            raise ValueError("--tflite int8 needs --representative-data DATA_FOLDER (training "
                             "images) or --run RUN_DIR")
        calibration, _ = load_pixels(rows, image_size, channels, task.calibration_images)
    validation = task.parity_data(image_size, channels, run_dir, validation_data, masks,
                                  representative_data, split=parity_split) if variants else None

    saved, names = task.export_savedmodel(model, target, tta, threshold, exported_spec)
    log(f"SavedModel version {saved.name} written to {saved}")
    summary: dict = {"model": str(keras_path), "savedmodel": str(saved), "version": int(saved.name),
                     "tflite": {}, "parity": None, **names}
    # Converted into a staging folder and published beside the versions only when every gate
    # passes, so a failing variant never replaces a good file that apps already use.
    staging = Path(tempfile.mkdtemp(prefix=f".tflite.tmp-{os.getpid()}-", dir=out_base))
    try:
        staged = {}
        for variant in variants:
            variant_model, guard_info = _tflite_source(model, variant)
            path = convert_to_tflite(
                variant_model, staging / tflite_file_name(out_base.name, variant, int8_io),
                variant, representative_images=calibration, int8_io=int8_io, overwrite=True,
                metadata={"source_version": int(saved.name), **names, **guard_info,
                          "image_size": image_size, "channels": channels,
                          "spec": exported_spec.to_dict()})
            staged[variant] = path
            log(f"TFLite {variant}: {path.name} ({path.stat().st_size / 1024:.1f} KB)")
        if variants and validation is None:
            log("no validation images (give --validation-data or --representative-data): "
                "parity report skipped")
        report = None
        if variants and validation is not None:
            with _float32_reference(model, keras_path, threshold, exported_spec) as reference:
                report, summary["parity"], message = task.parity(
                    reference, {v: str(p) for v, p in staged.items()}, validation)
            summary["parity_passed"] = report["passed"]
            log(message)
        target_folder = out_base if summary.get("parity_passed", True) else out_base / "failed_parity"
        for variant, path in staged.items():
            target_folder.mkdir(parents=True, exist_ok=True)
            for file in (path, path.with_suffix(".json")):
                os.replace(file, target_folder / file.name)
            summary["tflite"][variant] = str(target_folder / path.name)
            if report is not None:
                report["variants"][variant]["file"] = summary["tflite"][variant]
        if report is not None:
            # Which images the agreement was measured on, for the report's header.
            report["image_source"] = (f"{parity_split}-split" if run_dir is not None
                                      and validation_data is None else "validation")
            write_parity_report(report, out_base)
            log(f"parity report: {out_base / 'tflite_parity.md'}")
        if target_folder != out_base and staged:
            log(f"a parity gate failed: the new TFLite files are in {target_folder}, the files "
                f"beside the versions were left as they were")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary
