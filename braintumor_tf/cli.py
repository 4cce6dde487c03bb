"""Command line: parse, load the config, call one pipeline function, print."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _friendly_errors(function):
    """User mistakes (bad path, bad config value) end in one line, not a traceback."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (FileNotFoundError, FileExistsError, ValueError) as error:
            raise click.ClickException(str(error).splitlines()[0] if str(error) else
                                       type(error).__name__) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """braintumor_tf: brain-tumour MRI models from a folder on disk to a served model."""


def _default_run_dir(config_path) -> Path:
    stem = Path(config_path).stem if config_path else "classification"
    return Path("runs") / stem


@main.command("train")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML config (default: configs/classification.yaml).")
@click.option("--data", "data_root", default=None,
              help="Data root(s), comma-separated; overrides data.root. Default: phantoms.")
@click.option("--out", "run_dir", default=None, type=click.Path(file_okay=False),
              help="Run directory (default: runs/<config name>). Re-running resumes.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set train.epochs=3 (repeatable).")
@_friendly_errors
def train_command(config_path, data_root, run_dir, overrides):
    """Train a classifier; everything lands in the run directory."""
    from braintumor_tf.config import load_config

    overrides = list(overrides)
    if data_root is not None:
        for root in data_root.split(","):
            if not Path(root).exists():
                raise FileNotFoundError(f"data folder not found: {root}")
        overrides.append(f"data.root={data_root}")
    config = load_config(config_path, overrides)
    run_dir = Path(run_dir) if run_dir else _default_run_dir(config_path)
    from braintumor_tf.pipelines.train_classifier import train_classifier

    summary = train_classifier(config, run_dir)
    click.echo(json.dumps(summary, indent=2))
    click.echo(f"run directory: {run_dir}")


@main.command("evaluate")
@click.option("--model", "model_path", required=True,
              help=".keras file, SavedModel dir, TF Serving base dir or .tflite file.")
@click.option("--data", "data_paths", required=True, multiple=True,
              help="Labelled data root (folder-per-class); repeatable.")
@click.option("--json", "json_path", default=None, help="Write the metrics JSON here.")
@click.option("--out", "out_dir", default=None, help="Write confusion matrix and predictions here.")
@click.option("--batch-size", default=32, show_default=True)
@_friendly_errors
def evaluate_command(model_path, data_paths, json_path, out_dir, batch_size):
    """Evaluate a saved classifier on every labelled image under --data."""
    for path in data_paths:
        if not Path(path).exists():
            raise FileNotFoundError(f"data folder not found: {path}")
    if not Path(model_path).exists():
        raise FileNotFoundError(f"model not found: {model_path}")
    from braintumor_tf.pipelines.evaluate import evaluate

    evaluate(model_path, data_paths, json_path=json_path, out_dir=out_dir, batch_size=batch_size)


@main.group("data")
def data_group():
    """Inspect data sets."""


@data_group.command("audit")
@click.argument("paths", nargs=-1, required=True)
@click.option("--out", "out_dir", default="audit", show_default=True,
              help="Folder for the tables (CSV, JSON, Markdown) and charts (PNG).")
@click.option("--threshold", default=0.85, show_default=True,
              help="Correlation at or above which two images are the same slice.")
@_friendly_errors
def audit_command(paths, out_dir, threshold):
    """Count classes and find near-duplicate groups within and across folders."""
    for path in paths:
        if not Path(path).exists():
            raise FileNotFoundError(f"data folder not found: {path}")
    from braintumor_tf.pipelines.audit import audit

    audit(list(paths), out_dir, threshold=threshold)
    click.echo(f"audit written to {out_dir}")


def train_main(argv=None):
    """``python -m braintumor_tf.train`` is ``braintumor-tf train``."""
    return main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
