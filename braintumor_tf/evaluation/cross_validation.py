"""Out-of-fold predictions, the cross-validation report and paired comparisons of two recipes.

Intervals come from a bootstrap over split units (a subject joined with every near-duplicate
group touching it): images of one patient are not independent, so resampling images would give
intervals several times too narrow. A paired comparison draws the same units for both recipes,
which cancels most of the between-patient variance that two separate intervals carry.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from braintumor_tf.data.csv_files import open_csv
from braintumor_tf.data.discover import CLASS_NAMES

OUT_OF_FOLD_NAME = "out_of_fold.csv"
BOOTSTRAP_SAMPLES = 2000
NOTUMOR = CLASS_NAMES.index("notumor")


def write_classification_out_of_fold(rows: Sequence[dict], predictions_csv: Path, out_path: Path):
    """Join evaluate's per-image predictions with the folds file's rows (by position: both are
    in the held-out rows' order) and write one out-of-fold CSV."""
    with open_csv(predictions_csv) as handle:
        predicted = list(csv.DictReader(handle))
    if len(predicted) != len(rows):
        raise ValueError(f"{predictions_csv} has {len(predicted)} rows for {len(rows)} held-out "
                         "images: some could not be read")
    columns = ["path", "source", "subject", "unit", "fold", "label", "predicted", *CLASS_NAMES]
    temporary = out_path.with_name(out_path.name + ".tmp")
    with open_csv(temporary, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row, scored in zip(rows, predicted, strict=True):
            if scored["path"] != row["path"]:
                raise ValueError(f"prediction order differs: {scored['path']} vs {row['path']}")
            writer.writerow([row["path"], row["source"], row["subject"], row["unit"], row["fold"],
                             CLASS_NAMES[int(row["label"])], scored["predicted"],
                             *(f"{float(scored[name]):.4f}" for name in CLASS_NAMES)])
    temporary.replace(out_path)


def read_out_of_fold(paths: Sequence[Path | str]) -> list[dict]:
    rows: list[dict] = []
    for path in paths:
        with open_csv(path) as handle:
            rows += list(csv.DictReader(handle))
    if not rows:
        raise ValueError("no out-of-fold predictions to report on")
    return rows


def read_run_predictions(run: Path | str, tta: str = "none") -> list[dict]:
    """A CV run directory's out-of-fold predictions, or a published folder of fold CSVs, or one
    CSV: what ``compare`` accepts. ``tta``: the predictions with that averaging
    (``train.held_out_tta``) instead of the plain ones."""
    run = Path(run)
    if run.is_file():
        return read_out_of_fold([run])
    suffix = "" if tta == "none" else f"_tta-{tta}"
    whole = run / OUT_OF_FOLD_NAME.replace(".csv", f"{suffix}.csv")
    if whole.is_file():
        return read_out_of_fold([whole])
    published = [p for p in sorted(run.glob(f"fold*{suffix}.csv"))
                 if re.fullmatch(rf"fold\d+{re.escape(suffix)}\.csv", p.name)]
    in_run = sorted(run.glob(f"folds/fold*/{whole.name}"))
    if not published and not in_run:
        kind = "" if tta == "none" else f" with {tta} averaging"
        raise FileNotFoundError(f"no out-of-fold predictions{kind} in {run}: expected "
                                f"{whole.name} (a finished CV run), "
                                f"fold<k>{suffix}.csv files, or folds/fold<k>/{whole.name}")
    return read_out_of_fold(published or in_run)


def out_of_fold_rows(run_dir: Path, tta: str = "none") -> list[dict] | None:
    """A finished CV run's out-of-fold predictions with that averaging; None for other runs."""
    if not (run_dir / "folds").is_dir():
        return None
    try:
        return read_run_predictions(run_dir, tta)
    except FileNotFoundError as error:
        from braintumor_tf.log import log

        log(f"warning: temperature from the ensemble's validation images, which trained most "
            f"of its members: {error}")
        return None


# ---- statistics per unit, metrics from summed statistics ------------------------------------

class ClassificationStats:
    """Per-unit confusion matrices, one per source: metrics of any resample are sums of them."""

    def __init__(self, rows: Sequence[dict], sources: Sequence[str] | None = None):
        self.sources = sorted({row["source"] for row in rows}) if sources is None else list(sources)
        units = sorted({row["unit"] for row in rows})
        self.units = units
        index = {unit: i for i, unit in enumerate(units)}
        k = len(CLASS_NAMES)
        stats = np.zeros((len(units), len(self.sources), k, k), np.float64)
        source_index = {name: i for i, name in enumerate(self.sources)}
        for row in rows:
            stats[index[row["unit"]], source_index[row["source"]],
                  CLASS_NAMES.index(row["label"]), CLASS_NAMES.index(row["predicted"])] += 1
        self.stats = stats.reshape(len(units), -1)

    def metrics(self, summed: np.ndarray) -> dict[str, np.ndarray]:
        """Metrics of summed statistics ``[..., F]`` (vectorised over leading axes)."""
        k = len(CLASS_NAMES)
        per_source = summed.reshape(*summed.shape[:-1], len(self.sources), k, k)
        overall = per_source.sum(axis=-3)
        found = {"accuracy": _accuracy(overall)}
        rows, columns = overall.sum(axis=-1), overall.sum(axis=-2)
        diagonal = np.diagonal(overall, axis1=-2, axis2=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = diagonal / rows
            f1 = 2 * diagonal / (rows + columns)
        present = self.stats.reshape(-1, len(self.sources), k, k).sum(axis=(0, 1, 3)) > 0
        found["macro_f1"] = np.nanmean(np.where(present, f1, np.nan), axis=-1) \
            if present.any() else np.full(summed.shape[:-1], np.nan)
        for index, name in enumerate(CLASS_NAMES):
            if present[index]:
                found[f"recall/{name}"] = recall[..., index]
        found["tumour_called_notumor"] = _tumour_called_notumor(overall)
        for index, source in enumerate(self.sources):
            matrix = per_source[..., index, :, :]
            found[f"accuracy/{source}"] = _accuracy(matrix)
            called = _tumour_called_notumor(matrix)
            if np.any(np.isfinite(called)):
                found[f"tumour_called_notumor/{source}"] = called
        return found

    def counts(self) -> dict[str, int]:
        k = len(CLASS_NAMES)
        per_source = self.stats.sum(axis=0).reshape(len(self.sources), k, k)
        return {"images": int(per_source.sum()),
                **{f"images/{s}": int(per_source[i].sum()) for i, s in enumerate(self.sources)}}


def _accuracy(matrix: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.trace(matrix, axis1=-2, axis2=-1) / matrix.sum(axis=(-2, -1))


def _tumour_called_notumor(matrix: np.ndarray) -> np.ndarray:
    tumour = [i for i in range(len(CLASS_NAMES)) if i != NOTUMOR]
    with np.errstate(invalid="ignore", divide="ignore"):
        return matrix[..., tumour, NOTUMOR].sum(axis=-1) / matrix[..., tumour, :].sum(axis=(-2, -1))


def unit_weights(units: int, samples: int, seed: int) -> np.ndarray:
    """[samples, units] counts of each unit in each bootstrap resample (units drawn with
    replacement, as many as there are)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(units, np.full(units, 1.0 / units), size=samples).astype(np.float64)


def bootstrap(stats: np.ndarray, metric_fn: Callable[[np.ndarray], dict], samples: int = BOOTSTRAP_SAMPLES,
              seed: int = 0, weights: np.ndarray | None = None) -> dict[str, dict]:
    """{metric: {value, low, high}}: the point estimate and the 95 % percentile interval."""
    point = metric_fn(stats.sum(axis=0))
    weights = unit_weights(len(stats), samples, seed) if weights is None else weights
    resampled = metric_fn(weights @ stats)
    return {name: _interval(point[name], resampled[name]) for name in point}


def _interval(value, draws) -> dict:
    draws = np.asarray(draws, np.float64)
    draws = draws[np.isfinite(draws)]
    value = float(value)
    if not np.isfinite(value) or draws.size == 0:
        return {"value": None, "low": None, "high": None}
    low, high = np.percentile(draws, [2.5, 97.5])
    return {"value": value, "low": float(low), "high": float(high)}


def stats_for(rows: Sequence[dict], task: str, **options):
    if task == "classification":
        return ClassificationStats(rows, **options)
    if task == "segmentation":
        from braintumor_tf.evaluation.segmentation_cv import SegmentationStats

        return SegmentationStats(rows, **options)
    raise ValueError(f"unknown task {task!r}")


def task_of(rows: Sequence[dict]) -> str:
    return "segmentation" if "dice" in rows[0] else "classification"


def cv_report(rows: Sequence[dict], task: str | None = None, seed: int = 0,
              samples: int = BOOTSTRAP_SAMPLES) -> dict:
    task = task or task_of(rows)
    stats = stats_for(rows, task)
    metrics = bootstrap(stats.stats, stats.metrics, samples, seed)
    headline_keys = [key for key in metrics if "/" not in key or key.startswith("accuracy/")
                     or key.startswith("dice/")]
    return {"task": task, "units": len(stats.units), **stats.counts(),
            "bootstrap": {"samples": samples, "seed": seed, "unit": "subject (with its "
                          "near-duplicate groups)"},
            "metrics": metrics,
            "headline": {key: metrics[key]["value"] for key in headline_keys}}


def compare(rows_a: Sequence[dict], rows_b: Sequence[dict], seed: int = 0,
            samples: int = BOOTSTRAP_SAMPLES) -> dict:
    """B minus A on the images both scored, resampling the same units for both."""
    by_path_b = {row["path"]: row for row in rows_b}
    common = [row for row in rows_a if row["path"] in by_path_b]
    if not common:
        raise ValueError("the two runs share no scored images: compare runs of the same data")
    task = task_of(rows_a)
    if task != task_of(rows_b):
        raise ValueError("cannot compare a classifier's predictions with a segmenter's")
    paired_b = []
    for row in common:
        other = dict(by_path_b[row["path"]])
        if task == "classification" and other["label"] != row["label"]:
            raise ValueError(f"{row['path']}: label {row['label']} in A but {other['label']} in B")
        other["unit"], other["source"] = row["unit"], row["source"]  # A's units for both
        paired_b.append(other)
    stats_a = stats_for(common, task)
    stats_b = stats_for(paired_b, task, sources=stats_a.sources)
    weights = unit_weights(len(stats_a.units), samples, seed)
    point_a = stats_a.metrics(stats_a.stats.sum(axis=0))
    point_b = stats_b.metrics(stats_b.stats.sum(axis=0))
    draws_a = stats_a.metrics(weights @ stats_a.stats)
    draws_b = stats_b.metrics(weights @ stats_b.stats)
    result = {}
    for name in point_a:
        if name not in point_b:
            continue
        delta = _interval(point_b[name] - point_a[name], draws_b[name] - draws_a[name])
        delta["a"], delta["b"] = _finite(point_a[name]), _finite(point_b[name])
        if delta["low"] is not None:
            delta["verdict"] = ("B higher" if delta["low"] > 0 else
                                "B lower" if delta["high"] < 0 else "no difference shown")
        result[name] = delta
    return {"task": task, "images": len(common), "only_in_a": len(rows_a) - len(common),
            "only_in_b": len(rows_b) - len(common), "units": len(stats_a.units),
            "bootstrap": {"samples": samples, "seed": seed, "paired": True},
            "difference_b_minus_a": result}


def _finite(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


# ---- writing -----------------------------------------------------------------------------------

LOWER_IS_BETTER = ("tumour_called_notumor", "below_0.1", "hd95")


def format_cv_markdown(report: dict, title: str = "Cross-validation") -> str:
    lines = [f"# {title}", "",
             f"{report.get('folds', '?')}-fold patient-level cross-validation, out-of-fold "
             f"predictions of {report['images']} images from {report['units']} subjects / "
             f"duplicate groups. 95 % intervals: bootstrap over subjects "
             f"({report['bootstrap']['samples']} resamples).", "",
             "| metric | value | 95 % interval |", "|---|---:|---|"]
    for name, entry in report["metrics"].items():
        if entry["value"] is None:
            continue
        lines.append(f"| {name} | {_number(name, entry['value'])} | "
                     f"{_number(name, entry['low'])} – {_number(name, entry['high'])} |")
    counts = [f"{key.split('/', 1)[1]} {value}" for key, value in report.items()
              if key.startswith("images/")]
    if counts:
        lines += ["", "Images per source: " + ", ".join(counts) + "."]
    return "\n".join(lines) + "\n"


def format_compare_markdown(result: dict, name_a: str, name_b: str) -> str:
    lines = [f"Paired comparison, B minus A, on {result['images']} images of {result['units']} "
             f"subjects (bootstrap over subjects, {result['bootstrap']['samples']} resamples).",
             f"A = {name_a}", f"B = {name_b}", "",
             "| metric | A | B | B − A | 95 % interval | verdict |", "|---|---:|---:|---:|---|---|"]
    for name, entry in result["difference_b_minus_a"].items():
        if entry["value"] is None:
            continue
        verdict = entry.get("verdict", "")
        if verdict != "no difference shown":
            better = (verdict == "B lower") == any(name.startswith(k) for k in LOWER_IS_BETTER)
            verdict += " (better)" if better else " (worse)"
        lines.append(f"| {name} | {_number(name, entry['a'])} | {_number(name, entry['b'])} | "
                     f"{_signed(name, entry['value'])} | {_signed(name, entry['low'])} – "
                     f"{_signed(name, entry['high'])} | {verdict} |")
    return "\n".join(lines) + "\n"


def _number(name: str, value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f}" if name.startswith("hd95") else f"{value:.3f}"


def _signed(name: str, value) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.1f}" if name.startswith("hd95") else f"{value:+.3f}"


def write_cv_report(report: dict, run_dir: Path, suffix: str = "") -> None:
    title = "Cross-validation" + (f" ({report['test_time_augmentation']} averaging)"
                                  if report.get("test_time_augmentation") else "")
    (run_dir / f"cv_report{suffix}.json").write_text(json.dumps(report, indent=2))
    (run_dir / f"cv_report{suffix}.md").write_text(format_cv_markdown(report, title))
