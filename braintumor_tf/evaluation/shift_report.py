"""``evaluate --shifts``: a classifier scored again on its images re-rendered by each shift.

Reports per shift: accuracy (overall and per source), agreement with the unshifted answer, how
often a tumour becomes "no tumour", and what the out-of-distribution guard does: how often it
flags the shifted images, and how many of the answers the shift made wrong it flags.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from braintumor_tf.data.decode import read_image
from braintumor_tf.evaluation.shifts import select_shifts, shifted_pixels
from braintumor_tf.log import logger


def _predict_rendered(runtime, paths, shift, batch_size: int):
    """Probabilities and OOD scores of every image after ``shift`` (None: unshifted)."""
    size, channels = runtime.image_size, runtime.channels

    def load(path):
        if shift is None:
            return read_image(path, channels, size)
        return shifted_pixels(read_image(path, channels), shift, channels, size, name=path)

    probabilities, scores = [], []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, len(paths), batch_size):
            batch = np.stack(list(pool.map(load, paths[start:start + batch_size])))
            batch_probabilities, batch_scores = runtime.predict_with_scores(batch)
            probabilities.append(np.asarray(batch_probabilities))
            scores.append(batch_scores)
    guarded = bool(scores) and scores[0] is not None
    return np.concatenate(probabilities), (np.concatenate(scores) if guarded else None)


def _summary(runtime, labels, sources, probabilities, scores, reference_predicted=None) -> dict:
    predicted = probabilities.argmax(axis=1)
    correct = predicted == labels
    class_names = list(runtime.class_names)
    notumor = class_names.index("notumor") if "notumor" in class_names else None
    entry = {"accuracy": float(correct.mean())}
    if reference_predicted is not None:
        entry["agreement"] = float(np.mean(predicted == reference_predicted))
    if notumor is not None and np.any(labels != notumor):
        entry["tumour_called_notumor"] = float(np.mean(predicted[labels != notumor] == notumor))
    entry["per_source"] = {name: float(correct[sources == name].mean())
                           for name in sorted(set(sources.tolist()))}
    inside = runtime.in_distribution(scores)
    if inside is not None:
        entry["ood_flagged"] = float(np.mean(~inside))
        wrong = ~correct
        entry["ood_flagged_among_wrong"] = float(np.mean(~inside[wrong])) if wrong.any() else None
    return entry


def shift_report(runtime, paths, labels, sources, names: str | None = "all",
                 batch_size: int = 32) -> dict:
    """One model on its images, unshifted and under each shift."""
    return shift_report_of_parts([(runtime, list(paths), labels, sources)], names, batch_size)


def shift_report_of_parts(parts, names: str | None = "all", batch_size: int = 32) -> dict:
    """``parts``: (runtime, paths, labels, sources) per model, e.g. each cross-validation fold's
    model with its held-out images; their predictions are pooled before scoring, so the report
    is out of fold."""
    shifts = select_shifts(names)
    started = time.perf_counter()
    labels = np.concatenate([np.asarray(part[2]) for part in parts])
    sources = np.concatenate([np.asarray(part[3]) for part in parts])
    runtime = parts[0][0]

    def pooled(shift):
        outputs = [_predict_rendered(part_runtime, paths, shift, batch_size)
                   for part_runtime, paths, _, _ in parts]
        probabilities = np.concatenate([o[0] for o in outputs])
        guarded = all(o[1] is not None for o in outputs)
        return probabilities, (np.concatenate([o[1] for o in outputs]) if guarded else None)

    probabilities, scores = pooled(None)
    reference = probabilities.argmax(axis=1)
    report = {"n": int(len(labels)), "models": len(parts),
              "unshifted": _summary(runtime, labels, sources, probabilities, scores)}
    report["shifts"] = {}
    for index, shift in enumerate(shifts):
        probabilities, scores = pooled(shift)
        report["shifts"][shift.name] = {"kind": shift.kind, **_summary(
            runtime, labels, sources, probabilities, scores, reference)}
        logger.info(f"shift {index + 1}/{len(shifts)} {shift.name}: accuracy "
                    f"{report['shifts'][shift.name]['accuracy']:.4f} "
                    f"({time.perf_counter() - started:.0f} s)")
    report["worst_shift"] = min(report["shifts"], key=lambda k: report["shifts"][k]["accuracy"])
    report["worst_accuracy"] = float(report["shifts"][report["worst_shift"]]["accuracy"])
    return report


def format_shift_report(report: dict) -> str:
    sources = list(report["unshifted"]["per_source"])
    guard = "ood_flagged" in report["unshifted"]
    header = ["shift", "accuracy", "agreement", "tumour→notumor", *sources]
    if guard:
        header += ["OOD flagged", "flagged among wrong"]
    lines = [f"Rendering shifts ({report['n']} images)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def percent(value):
        return "n/a" if value is None else f"{value * 100:.1f} %"

    for name, entry in [("none", report["unshifted"]), *report["shifts"].items()]:
        cells = [name, f"{entry['accuracy']:.3f}",
                 percent(entry.get("agreement", 1.0)), percent(entry.get("tumour_called_notumor")),
                 *(f"{entry['per_source'][s]:.3f}" for s in sources)]
        if guard:
            cells += [percent(entry.get("ood_flagged")), percent(entry.get("ood_flagged_among_wrong"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
