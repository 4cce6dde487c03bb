"""Command line: parse, load the config, call one pipeline function, print."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click

from braintumor_tf import __version__

# TensorFlow's C++ info and warning lines (CPU features, oneDNN) are noise to a user; errors stay.
# --verbose shows them all, unless the user set the variable.
_TF_LOG_LEVEL_OURS = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# `predict` exit status when some inputs failed and the rest were predicted (none predicted: 1).
PREDICT_SOME_FAILED = 3

# models.tta.TTA_MODES, spelled out so `--help` does not import Keras (a test keeps them equal).
TTA_CHOICES = ("none", "mirror", "flips", "dihedral")


def _friendly_errors(function):
    """User mistakes (bad path, bad config value) and an unreachable server end in one line, not a
    traceback."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (FileNotFoundError, FileExistsError, ValueError, ConnectionError) as error:
            raise click.ClickException(str(error).splitlines()[0] if str(error) else
                                       type(error).__name__) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="braintumor_tf",
                      message="%(prog)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="Also show debugging details.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors (and results).")
def main(verbose, quiet):
    """braintumor_tf: brain-tumour MRI models from a folder on disk to a served model."""
    from braintumor_tf.log import configure, quiet_tensorflow_import

    if verbose and _TF_LOG_LEVEL_OURS:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"  # before any command imports TensorFlow
    if not verbose:
        quiet_tensorflow_import()
    configure(-1 if quiet else 1 if verbose else 0)


def _deprecated(old: str, new: str, old_value, new_value):
    """An old flag still works for one release, with a message naming its replacement."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise click.UsageError(f"give {new} only ({old.split()[-1]} is its deprecated spelling)")
    click.echo(f"note: {old} is deprecated and will be removed in the next release; use {new}",
               err=True)
    return old_value


def _default_run_dir(config_path) -> Path:
    stem = Path(config_path).stem if config_path else "classification"
    return Path("runs") / stem


@main.command("train")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML config (default: configs/classification.yaml).")
@click.option("--data", "data_roots", multiple=True,
              help="Data folder (repeatable; comma-separated also works); overrides data.root. "
                   "Default: the built-in phantoms.")
@click.option("--run", "run_dir", default=None, type=click.Path(file_okay=False),
              help="Run directory (default: runs/<config name>). Re-running resumes.")
@click.option("--out", "old_run_dir", default=None, type=click.Path(file_okay=False), hidden=True,
              help="Deprecated spelling of --run.")
@click.option("--subjects", "subjects_path", default=None, type=click.Path(dir_okay=False),
              help="CSV with columns path,subject: split by patient (overrides data.subjects; "
                   "default: a subjects.csv in a data root or one of its parents).")
@click.option("--labels", "label_tables", multiple=True, metavar="CSV",
              help="Classifier: a table of labelled images (columns path,class; paths relative to "
                   "the table or a parent folder of it) that joins --data (repeatable; "
                   "overrides data.labels).")
@click.option("--folds", type=click.IntRange(min=0), default=None,
              help="Patient-level K-fold cross-validation (K >= 2; overrides data.folds): one "
                   "resumable run per fold, out-of-fold predictions of every image and a report "
                   "with patient-bootstrap intervals. 0: one train/val/test split.")
@click.option("--publish", "publish_dir", default=None, type=click.Path(file_okay=False),
              help="With --folds: copy each fold's out-of-fold predictions here as it finishes "
                   "(e.g. docs/cv/NAME, to commit).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set train.epochs=3 (repeatable).")
@_friendly_errors
def train_command(config_path, data_roots, run_dir, old_run_dir, subjects_path, label_tables,
                  folds, publish_dir, overrides):
    """Train a classifier or a segmenter (config task); everything lands in the run directory."""
    from braintumor_tf.config import load_config
    from braintumor_tf.data import filesystem

    run_dir = _deprecated("train --out", "--run", old_run_dir, run_dir)
    data_root = ",".join(part for root in data_roots for part in root.split(",") if part) or None

    overrides = list(overrides)
    for table in label_tables:
        if not filesystem.is_file(table):
            raise FileNotFoundError(f"labels file not found: {table}")
    if label_tables:
        overrides.append(f"data.labels=[{', '.join(json.dumps(t) for t in label_tables)}]")
    if folds is not None:
        if folds == 1:
            raise ValueError("--folds must be 0 (no cross-validation) or at least 2, got 1")
        overrides.append(f"data.folds={folds}")
    if data_root is not None:
        for root in data_root.split(","):
            if not filesystem.exists(root):
                raise FileNotFoundError(f"data folder not found: {root}")
        overrides.append(f"data.root={data_root}")
    if subjects_path is not None:
        if not filesystem.is_file(subjects_path):
            raise FileNotFoundError(f"subjects file not found: {subjects_path}")
        overrides.append(f"data.subjects={subjects_path}")
    config = load_config(config_path, overrides)
    run_dir = Path(run_dir) if run_dir else _default_run_dir(config_path)
    if config.data.folds:
        from braintumor_tf.commands.cross_validate import train_folds

        summary = train_folds(config, run_dir, publish_dir=publish_dir)
    else:
        if publish_dir is not None:
            raise ValueError("--publish needs --folds (or data.folds): it publishes out-of-fold "
                             "predictions")
        from braintumor_tf.commands.train import train

        summary = train(config, run_dir)
    click.echo(json.dumps(summary, indent=2))
    click.echo(f"run directory: {run_dir}")


@main.command("compare")
@click.argument("run_a", type=click.Path(exists=True))
@click.argument("run_b", type=click.Path(exists=True))
@click.option("--json", "json_path", default=None, help="Write the comparison as JSON.")
@click.option("--markdown", "markdown_path", default=None, help="Write the table as Markdown.")
@click.option("--seed", default=0, show_default=True, help="Bootstrap seed.")
@click.option("--tta-a", default="none", type=click.Choice(TTA_CHOICES), show_default=True,
              help="Use run A's out-of-fold predictions with this averaging (train.held_out_tta).")
@click.option("--tta-b", default="none", type=click.Choice(TTA_CHOICES), show_default=True,
              help="The same for run B.")
@_friendly_errors
def compare_command(run_a, run_b, json_path, markdown_path, seed, tta_a, tta_b):
    """Paired difference B - A of two cross-validation runs on the images both scored.

    RUN_A and RUN_B are CV run directories, folders of published fold*.csv files, or
    out-of-fold CSVs. Intervals resample subjects, the same ones for both runs; B is better on a
    metric only when its whole interval lies on the better side of 0."""
    from braintumor_tf.evaluation.cross_validation import (
        compare,
        format_compare_markdown,
        read_run_predictions,
    )

    result = compare(read_run_predictions(run_a, tta_a), read_run_predictions(run_b, tta_b),
                     seed=seed)
    result.update(a=str(run_a), b=str(run_b), tta_a=tta_a, tta_b=tta_b)
    name_a = run_a + ("" if tta_a == "none" else f" ({tta_a} averaging)")
    name_b = run_b + ("" if tta_b == "none" else f" ({tta_b} averaging)")
    table = format_compare_markdown(result, name_a, name_b)
    click.echo(table)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))
    if markdown_path:
        Path(markdown_path).write_text(table)


@main.command("evaluate")
@click.option("--model", "model_path", default=None,
              help=".keras file, SavedModel dir, TF Serving base dir or .tflite file.")
@click.option("--cv", "cv_run", default=None, type=click.Path(file_okay=False),
              help="Instead of --model and --data: a cross-validation run, each fold's model on "
                   "its held-out images (out of fold), with --shifts (and --tta).")
@click.option("--data", "data_paths", multiple=True,
              help="Classifier: labelled data root (folder-per-class) or a run's split_manifest.csv. "
                   "Segmenter: a COCO split folder or a folder of them (or images with --masks), or a "
                   "run's split_manifest.csv with --split. "
                   "Repeatable; folders may be gs:// (any tf.io.gfile scheme).")
@click.option("--masks", "masks_dir", default=None,
              help="Segmenter: expert mask folder (matched by file stem, searched recursively; "
                   "may be gs://).")
@click.option("--split", "split_name", default=None,
              help="With a split_manifest.csv: evaluate only this split (train, val or test).")
@click.option("--json", "json_path", default=None, help="Write the metrics JSON here.")
@click.option("--out", "out_dir", default=None,
              help="Write predictions and plots here (confusion matrix; segmenter: overlays).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per batch (default: 8 per usable core, capped by free memory).")
@click.option("--tta", type=click.Choice(TTA_CHOICES), default=None,
              help=".keras models: average over mirrored/turned views (classifier: use "
                   "mirror, the flip it trained with; segmenter: any, chosen on a validation "
                   "split). Default: the averaging the model's spec names (none for a run's "
                   "model; exports already contain theirs); with --cv: none.")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Segmenter: score masks at this probability instead of the model's own "
                   "threshold (choose it on a validation split).")
@click.option("--labels", "label_tables", multiple=True, metavar="CSV",
              help="Classifier: also score the images a table lists (columns path,class; paths "
                   "relative to the table or a parent folder of it). Repeatable; reported as its "
                   "own source.")
@click.option("--shifts", default=None, is_flag=False, flag_value="all", metavar="[all|NAMES]",
              help="Also score every image re-rendered as other tools export it (quarter turns, "
                   "flips, window, gamma, 16-bit, 640-px resample, JPEG 30-95, blur, noise). "
                   "Classifier: accuracy, agreement with the unshifted answer and OOD flags per "
                   "shift; segmenter: Dice per shift (the truth moves with geometric shifts). "
                   "--shifts alone means all; or comma-separated names.")
@_friendly_errors
def evaluate_command(model_path, cv_run, data_paths, masks_dir, split_name, json_path, out_dir,
                     batch_size, tta, threshold, label_tables, shifts):
    """Evaluate a saved classifier or segmenter on every image under --data (and --labels)."""
    from braintumor_tf.data import filesystem

    if cv_run is not None:
        if model_path or data_paths or label_tables:
            raise ValueError("--cv scores a CV run's own fold models on their held-out images; "
                             "give it without --model, --data and --labels")
        from braintumor_tf.commands.cross_validate import shifts_out_of_fold
        from braintumor_tf.evaluation.segmentation import format_segmentation_shifts
        from braintumor_tf.evaluation.shift_report import format_shift_report
        from braintumor_tf.export.runtimes import resolve_batch_size

        report = shifts_out_of_fold(cv_run, shifts or "all", tta or "none",
                                    resolve_batch_size(batch_size))
        click.echo(format_segmentation_shifts(report) if "truth" in report
                   else format_shift_report(report))
        if json_path:
            Path(json_path).write_text(json.dumps(report, indent=2))
        return
    if model_path is None:
        raise ValueError("give --model (or --cv RUN_DIR for a cross-validation run)")

    for table in label_tables:
        if not filesystem.is_file(table):
            raise FileNotFoundError(f"labels file not found: {table}")
    if shifts is not None:
        from braintumor_tf.evaluation.shifts import select_shifts

        select_shifts(shifts)  # an unknown name fails before the model loads
    # --data and --masks may be scheme:// (gs://, ...): a Path would drop a slash of the scheme.
    for path in data_paths:
        if not filesystem.exists(path):
            raise FileNotFoundError(f"data folder not found: {path}")
    if masks_dir is not None and not filesystem.is_dir(masks_dir):
        raise FileNotFoundError(f"mask folder not found: {masks_dir}")
    if not Path(model_path).exists():
        raise FileNotFoundError(f"model not found: {model_path}")
    from braintumor_tf.commands.evaluate import evaluate

    evaluate(model_path, data_paths, json_path=json_path, out_dir=out_dir, batch_size=batch_size,
             split=split_name, masks=masks_dir, tta=tta, threshold=threshold,
             labels=label_tables, shifts=shifts)


@main.group("data")
def data_group():
    """Inspect data sets."""


@data_group.command("audit")
@click.argument("paths", nargs=-1, required=True)
@click.option("--out", "out_dir", default="audit", show_default=True,
              help="Folder for the tables (CSV, JSON, Markdown) and charts (PNG).")
@click.option("--match-threshold", "threshold", default=None, type=float,
              help="Correlation at or above which two images are the same slice. [default: 0.85]")
@click.option("--threshold", "old_threshold", default=None, type=float, hidden=True,
              help="Deprecated spelling of --match-threshold.")
@click.option("--subjects", "subjects_path", default="auto", show_default=True,
              help="CSV with columns path,subject ('auto': a subjects.csv in a folder or one of its "
                   "parents; 'none': near-duplicate groups stand in for subjects).")
@_friendly_errors
def audit_command(paths, out_dir, threshold, old_threshold, subjects_path):
    """Count classes and find near-duplicate groups within and across folders."""
    threshold = _deprecated("audit --threshold", "--match-threshold", old_threshold, threshold)
    threshold = 0.85 if threshold is None else threshold
    for path in paths:
        if not Path(path).exists():
            raise FileNotFoundError(f"data folder not found: {path}")
    from braintumor_tf.commands.audit import audit

    audit(list(paths), out_dir, threshold=threshold, subjects=subjects_path)
    click.echo(f"audit written to {out_dir}")


def _class_weights(pairs) -> dict[str, float]:
    weights = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise click.BadParameter(f"expected CLASS=WEIGHT, got {pair!r}",
                                     param_hint="--class-weight") from None
    return weights


@main.command("calibrate")
@click.option("--run", "run_dir", required=True, help="Classifier run directory.")
@click.option("--quantile", default=0.975, show_default=True,
              help="Share of validation slices the OOD threshold lets through.")
@click.option("--class-weight", "class_weights", multiple=True, metavar="CLASS=WEIGHT",
              help="Multiply a class's calibrated probability by WEIGHT (renormalised) in every "
                   "runtime and export, e.g. notumor=0.4: call a slice tumour-free only when "
                   "surer. Choose it out of fold (scripts/decision_weights.py). Repeatable.")
@click.option("--tta", type=click.Choice(TTA_CHOICES), default="none", show_default=True,
              help="Cross-validation run: fit the temperature on its out-of-fold predictions "
                   "with this averaging (the one its export will use).")
@_friendly_errors
def calibrate_command(run_dir, quantile, class_weights, tta):
    """Fit the out-of-distribution guard and temperature of a classifier run (on its train and
    validation splits); exports and predictions made afterwards carry ood_score."""
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    from braintumor_tf.commands.calibrate import calibrate

    report = calibrate(run_dir, quantile, _class_weights(class_weights), tta)
    click.echo(f"validation flagged {report['val_flagged'] * 100:.1f} %, temperature "
               f"{report['temperature']:.2f}, ECE {report['val_ece_before']:.3f} -> "
               f"{report['val_ece_after']:.3f}")


@main.command("export")
@click.option("--model", "model_path", default=None, help="Trained .keras model.")
@click.option("--run", "run_dir", default=None,
              help="Run directory (uses its model.keras and split_manifest.csv).")
@click.option("--out", "out_base", required=True,
              help="TF Serving base directory, e.g. savedmodels/classifier.")
@click.option("--version", type=int, default=None,
              help="Version number (default: next free). Existing versions are never overwritten.")
@click.option("--tflite", "tflite_variants", default=None, metavar="VARIANTS",
              help="Comma-separated TFLite variants: float32,float16,dynamic,int8.")
@click.option("--representative-data", default=None,
              help="Data folder of training images for int8 calibration (with --model).")
@click.option("--validation-data", default=None,
              help="Labelled folder for the parity report (default with --model: the "
                   "representative data; with --run: the run's validation split). Segmenter: a "
                   "COCO split folder, or an image folder with --masks; without truth the Dice "
                   "is against the Keras model's own masks only.")
@click.option("--masks", "masks_dir", default=None,
              help="Segmenter: truth mask folder for --validation-data (matched by file stem).")
@click.option("--int8-io", type=click.Choice(["int8", "float32"]), default="int8", show_default=True,
              help="Input/output type of the int8 variant.")
@click.option("--tta", type=click.Choice(TTA_CHOICES), default="none", show_default=True,
              help="Build averaging over mirrored/turned views into the exports (2, 4 or 8 "
                   "forward passes per image; classifier: mirror).")
@click.option("--parity-split", type=click.Choice(["train", "val", "test"]), default="val",
              show_default=True, help="With --run: the split the parity report checks on.")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Segmenter: probability above which a pixel is tumour in the exported masks "
                   "(default: the run's segmentation.threshold, else 0.5).")
@_friendly_errors
def export_command(model_path, run_dir, out_base, version, tflite_variants, representative_data,
                   validation_data, masks_dir, int8_io, tta, parity_split, threshold):
    """Write a versioned SavedModel for TF Serving and, optionally, TFLite variants with a parity
    report (classifier: top-1 agreement; segmenter: Dice drop <= 0.01)."""
    from braintumor_tf.commands.export import export_model

    summary = export_model(out_base, model_path=model_path, run_dir=run_dir, version=version,
                           tflite_variants=tflite_variants, representative_data=representative_data,
                           validation_data=validation_data, int8_io=int8_io, masks=masks_dir,
                           tta=tta, parity_split=parity_split, threshold=threshold)
    if summary.get("parity_passed") is False:
        raise click.ClickException("a TFLite variant failed its agreement gate (see tflite_parity.md)")


@main.command("predict")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--model", "model_path", default=None,
              help=".keras file, SavedModel dir, TF Serving base dir or .tflite file.")
@click.option("--server", default=None, help="TF Serving REST address, e.g. http://localhost:8501.")
@click.option("--model-name", default=None, help="Model name on the server (with --server).")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="With --server: seconds allowed for each request, answer included.")
@click.option("--json", "json_path", default=None, help="Write the predictions as JSON.")
@click.option("--csv", "csv_path", default=None, help="Write the predictions as CSV.")
@click.option("--explain", "explain_dir", default=None,
              help="Classifier: write Grad-CAM overlays (PNG) here, .keras models only. "
                   "Segmenter: write the images with the predicted tumour tinted and outlined "
                   "(any model form).")
@click.option("--masks-out", "masks_dir", default=None,
              help="Segmenter: folder for the masks (<image stem>_mask.png, 0/255, at the "
                   "image's original size). Default: <stem>_masks/ beside the --json/--csv file, "
                   "else ./masks/.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per batch (default: 8 per usable core, capped by free memory).")
@click.option("--jsonl", "jsonl_path", default=None,
              help="Stream records to this JSON-lines file as they come (bounded memory); a "
                   "re-run with the same file skips the images it already holds.")
@click.option("--axis", type=click.IntRange(0, 2), default=None,
              help="NIfTI volumes: the array axis to slice along (default: the axial one).")
@click.option("--classifier", "classifier_path", default="auto", show_default=True,
              help="Segmenter: a classifier model whose view goes beside each mask (a warning "
                   "when it calls the slice notumor with confidence, or not MRI at all). "
                   "auto: the released classifier, when found; none: no check.")
@_friendly_errors
def predict_command(inputs, model_path, server, model_name, timeout, json_path, csv_path,
                    explain_dir, masks_dir, batch_size, jsonl_path, axis, classifier_path):
    """Classifier: class and probabilities. Segmenter: tumour area (pixels at the original size and
    fraction of the image) and a mask PNG per file. Unreadable files are reported, the rest predicted.
    INPUTS are image files or folders, local or gs:// (any tf.io.gfile scheme); outputs are local."""
    from braintumor_tf.commands.predict import predict

    records = predict(list(inputs), model_path=model_path, server=server, model_name=model_name,
                      json_path=json_path, csv_path=csv_path, explain_dir=explain_dir,
                      batch_size=batch_size, masks_dir=masks_dir, timeout=timeout,
                      classifier_path=None if classifier_path == "none" else classifier_path,
                      axis=axis, jsonl_path=jsonl_path)
    failed = sum(1 for record in records if record["error"])
    if failed == len(records):
        raise click.ClickException(f"nothing predicted: all {failed} input(s) failed (listed above)")
    if failed:
        sys.exit(PREDICT_SOME_FAILED)


@main.command("demo")
@click.option("--model", "model_path", default=None,
              help="Classifier (a .keras file gives Grad-CAM too). Default: the newest release in "
                   "savedmodels/classifier.")
@click.option("--segmenter", "segmenter_path", default=None, help="Segmenter model (optional).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@_friendly_errors
def demo_command(model_path, segmenter_path, host, port):
    """A local page: drop images, see class probabilities, Grad-CAM, tumour masks and warnings."""
    from braintumor_tf.demo.app import default_classifier, serve

    if model_path is None:
        try:
            model_path = default_classifier()
        except FileNotFoundError:
            if segmenter_path is None:
                raise
            # A segmenter alone still works; its inputs then go unguarded (/models: guarded false).
    for path in (model_path, segmenter_path):
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"model not found: {path}")
    serve(model_path, segmenter_path, host=host, port=port)


@main.group("models")
def models_group():
    """Released models by name: where they are looked up, and fetching them."""


@models_group.command("list")
@_friendly_errors
def models_list_command():
    """Release folders found ($BRAINTUMOR_TF_MODELS, else the user cache, else ./savedmodels)."""
    from braintumor_tf.export.released import list_models, models_folders

    found = list_models()
    click.echo("looked in: " + ", ".join(str(folder) for folder in models_folders()))
    if not found:
        click.echo("no released models; braintumor-tf models pull --from URL_OR_FOLDER")
    for entry in found:
        versions = ",".join(map(str, entry["versions"])) or "-"
        click.echo(f"{entry['name']}: {entry['task'] or '?'} in {entry['folder']}; SavedModel "
                   f"versions {versions}; files {', '.join(entry['files']) or '-'}"
                   + (" (shadowed by the one above)" if entry["shadowed"] else ""))


@models_group.command("pull")
@click.option("--from", "source", required=True,
              help="Where the release folders are: an http(s) URL or a folder (a clone's "
                   "savedmodels/).")
@click.option("--name", "names", multiple=True, help="Only this release (repeatable).")
@click.option("--to", "target", default=None, type=click.Path(file_okay=False),
              help="Models folder to fill (default: $BRAINTUMOR_TF_MODELS, else the user cache).")
@_friendly_errors
def models_pull_command(source, names, target):
    """Copy released models, each file checked against the sha256 manifest in the package."""
    from braintumor_tf.export.released import pull, pull_target

    target = Path(target) if target else pull_target()
    files = pull(source, list(names), target, progress=click.echo)
    click.echo(f"{len(files)} files checked and written to {target}")


@main.command("serve-local")
@click.option("--model", "models", multiple=True, required=True, metavar="NAME=PATH",
              help="A model to serve under NAME: a serving base (newest version) or a version "
                   "folder, e.g. classifier=savedmodels/classifier (repeatable).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8501, show_default=True, type=click.IntRange(1, 65535))
@_friendly_errors
def serve_local_command(models, host, port):
    """A development stand-in for TF Serving's REST API (not for production): try the curl and
    predict --server examples of docs/SERVING.md without Docker."""
    named = {}
    for item in models:
        name, separator, path = item.partition("=")
        if not separator or not name or not path:
            raise ValueError(f"--model takes NAME=PATH, got {item[:200]!r}")
        named[name] = path
    from braintumor_tf.serving.local import serve_forever

    serve_forever(named, host=host, port=port)


@main.command("benchmark")
@click.option("--model", "models", required=True, multiple=True,
              help="Model in any form (repeatable); a TF Serving base dir brings its .tflite files.")
@click.option("--tflite-dir", default=None, help="Folder whose .tflite files are benchmarked too.")
@click.option("--images", default=256, show_default=True, help="Images per backend and batch size.")
@click.option("--threads", "num_threads", type=int, default=None,
              help="LiteRT threads (default: every usable core).")
@click.option("--json", "json_path", default=None, help="Write the results as JSON.")
@_friendly_errors
def benchmark_command(models, tflite_dir, images, num_threads, json_path):
    """Images/s and latency p50/p95 at batch 1 and 32 for each backend."""
    from braintumor_tf.commands.benchmark import benchmark

    benchmark(list(models), tflite_dir=tflite_dir, images=images, num_threads=num_threads,
              json_path=json_path)


def train_main(argv=None):
    """``python -m braintumor_tf.train`` is ``braintumor-tf train`` (``-v``/``-q`` anywhere)."""
    args = list(sys.argv[1:] if argv is None else argv)
    flags = [a for a in args if a in ("-v", "--verbose", "-q", "--quiet")]
    # Usage lines and errors name the documented entry, not "python -m braintumor_tf.train train".
    return main([*flags, "train", *(a for a in args if a not in flags)],
                prog_name="braintumor-tf")


if __name__ == "__main__":
    main()
