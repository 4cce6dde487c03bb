"""`braintumor-tf data audit`: what is really in a set of image folders before training on it.

Counts alone hide the main problem of the public MRI sets: the same slice appears several
times (mirrored, rotated, re-encoded), inside a set, across its Training/Testing folders and
across sets. The audit groups copies once over all given folders and reports where they sit.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from braintumor_tf import writes
from braintumor_tf.data import filesystem
from braintumor_tf.data.csv_files import open_csv
from braintumor_tf.data.decode import DecodeError, read_image
from braintumor_tf.data.discover import CLASS_NAMES, class_counts, discover_images
from braintumor_tf.data.duplicates import TRANSFORM_NAMES, find_pairs, groups_from_pairs
from braintumor_tf.data.segmentation import SPLIT_FOLDER_NAMES
from braintumor_tf.data.signatures import compute_signatures
from braintumor_tf.data.subjects import resolve_subjects, split_units

NEAR_LOW = 0.75  # pairs in [NEAR_LOW, threshold) are reported as "near misses" to tune it
MAX_EXAMPLES = 20


def _source_names(roots: list[str]) -> list[str]:
    """Shortest distinct path tails, so two 'Training' folders still get different names."""
    parts = [Path(os.path.abspath(r)).parts for r in roots]
    depth = 1
    while True:
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names) or depth >= max(len(p) for p in parts):
            return names
        depth += 1


def _leaf_name(path: str, root: str, top: str) -> str:
    """First-level sub-folder (e.g. Training) when it sits above the class folders."""
    rel = Path(os.path.relpath(path, root)).parts
    return f"{top}/{rel[0]}" if len(rel) >= 3 else top


def _copy_matrix(groups: np.ndarray, src: np.ndarray, names: list[str]) -> dict:
    """M[a][b] = images of a whose duplicate group also holds an image (not itself) of b."""
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    presence = np.zeros((n_groups, len(names)), np.int64)
    np.add.at(presence, (groups, src), 1)
    matrix = {}
    for a, name_a in enumerate(names):
        in_a = src == a
        row = {}
        for b, name_b in enumerate(names):
            others = presence[groups[in_a], b] - (1 if a == b else 0)
            row[name_b] = int((others > 0).sum())
        matrix[name_a] = row
    return matrix


def _subject_stats(units, labels, leaf_src, leaves, top_src, top_list, record_subjects) -> dict:
    """Subjects (a listed patient joined with every copy of its images; without a subjects file,
    a near-duplicate group) per class and per folder, and how many subjects of each data set's
    test folder also sit in its training folder: the leak a published split carries."""

    def count(mask) -> int:
        return int(len(np.unique(units[mask])))

    per_class = {name: count(labels == c) for c, name in enumerate(CLASS_NAMES)}
    per_source = {leaf: count(leaf_src == k) for k, leaf in enumerate(leaves)}
    test_in_train = {}
    for t, top in enumerate(top_list):
        by_role: dict[str, set] = {}
        for k, leaf in enumerate(leaves):
            if not leaf.startswith(top + "/"):
                continue
            role = SPLIT_FOLDER_NAMES.get(leaf[len(top) + 1:].lower())
            if role in ("train", "test"):
                by_role.setdefault(role, set()).update(units[(leaf_src == k) & (top_src == t)].tolist())
        if {"train", "test"} <= set(by_role):
            test_in_train[top] = {"test_subjects": len(by_role["test"]),
                                  "also_in_training": len(by_role["test"] & by_role["train"])}
    return {"images_with_listed_subject": int(sum(bool(s) for s in record_subjects)),
            "subjects": int(len(np.unique(units))) if len(units) else 0,
            "per_class": per_class, "per_source": per_source, "test_in_training": test_in_train}


def _md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def _thumb(path: str, size: int) -> np.ndarray:
    try:
        return read_image(path, channels=1, image_size=size)[:, :, 0]
    except (DecodeError, OSError):
        return np.zeros((size, size), np.float32)


def _save(fig: Figure, path: Path, grey: bool = False) -> None:
    """Image grids are stored as 8-bit grey PNG: a third of the size of matplotlib's RGBA."""
    if not grey:
        fig.savefig(path, dpi=fig.dpi)
        return
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    cv2.imwrite(str(path), cv2.cvtColor(rgba, cv2.COLOR_RGBA2GRAY),
                [cv2.IMWRITE_PNG_COMPRESSION, 9])


def _plot_class_distribution(counts: dict, leaves: list[str], path: Path) -> None:
    fig = Figure(figsize=(7.5, 3.6), dpi=90, layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(leaves))
    x = np.arange(len(CLASS_NAMES))
    for k, leaf in enumerate(leaves):
        values = [counts[leaf][c] for c in CLASS_NAMES]
        ax.bar(x + (k - (len(leaves) - 1) / 2) * width, values, width, label=leaf)
    ax.set_xticks(x, CLASS_NAMES)
    ax.set_ylabel("images")
    ax.set_title("Images per class and source")
    fig.legend(loc="outside right upper", fontsize=7)
    _save(fig, path)


def _plot_sample_grid(paths: list[str], labels: np.ndarray, path: Path, per_class: int = 8,
                      size: int = 80) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for c in range(len(CLASS_NAMES)):
        idx = np.flatnonzero(labels == c)
        pick = np.sort(rng.choice(idx, min(per_class, len(idx)), replace=False)) if len(idx) else []
        tiles = [_thumb(paths[i], size) for i in pick]
        tiles += [np.zeros((size, size), np.float32)] * (per_class - len(tiles))
        rows.append(np.concatenate(tiles, axis=1))
    mosaic = np.concatenate(rows, axis=0)
    fig = Figure(figsize=(mosaic.shape[1] / 80 + 1.5, mosaic.shape[0] / 80 + 0.3), dpi=80,
                 layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks(np.arange(len(CLASS_NAMES)) * size + size / 2, CLASS_NAMES)
    ax.set_title("Random samples per class", fontsize=9)
    _save(fig, path, grey=True)


def _pick_example_pairs(pairs: _Pairs, leaf_index, top_index, groups, count: int = 8) -> list[int]:
    """Most telling first: a rotated/mirrored copy across Training/Testing of one set, then
    across sets, then identical copies across folders; one pair per group, mixed transforms."""
    same_set = top_index[pairs.first] == top_index[pairs.second]
    across_folders = leaf_index[pairs.first] != leaf_index[pairs.second]
    moved = pairs.transform != 0
    rank = np.select(
        [across_folders & same_set & moved, ~same_set & moved, across_folders & same_set, ~same_set,
         moved],
        [0, 1, 2, 3, 4], 5)
    order = np.lexsort((-pairs.correlation, rank))
    chosen, seen_groups, seen_kind = [], set(), Counter()
    for limit in (1, 2, count):  # spread over transforms before repeating one
        for p in order:
            if len(chosen) >= count:
                return chosen
            group = int(groups[pairs.first[p]])
            kind = (int(rank[p]), int(pairs.transform[p]))
            if group in seen_groups or seen_kind[kind] >= limit:
                continue
            chosen.append(int(p))
            seen_groups.add(group)
            seen_kind[kind] += 1
    return chosen


def _plot_pairs(pairs: list[tuple[str, str, str]], path: Path, title: str, size: int = 96) -> None:
    """pairs: (path_a, path_b, caption); two pairs per row."""
    if not pairs:
        pairs_rows = 1
    else:
        pairs_rows = (len(pairs) + 1) // 2
    fig = Figure(figsize=(8.0, 2.25 * pairs_rows + 0.3), dpi=80, layout="constrained")
    fig.suptitle(title, fontsize=9)
    axes = fig.subplots(pairs_rows, 4, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for n, (a, b, caption) in enumerate(pairs):
        r, c = divmod(n, 2)
        for k, p in enumerate((a, b)):
            ax = axes[r, 2 * c + k]
            ax.imshow(_thumb(p, size), cmap="gray", vmin=0, vmax=255)
            ax.set_title(caption if k == 0 else "", fontsize=6.5, loc="left")
    if not pairs:
        axes[0, 0].text(0, 0.5, "no duplicate pairs found", fontsize=9)
    _save(fig, path, grey=True)


def _caption(rec_a, rec_b, leaf_a, leaf_b, corr, transform) -> str:
    return (f"{leaf_a} {CLASS_NAMES[rec_a.label]}  vs  {leaf_b} {CLASS_NAMES[rec_b.label]}\n"
            f"{filesystem.shown(Path(rec_a.path).name)} | "
            f"{filesystem.shown(Path(rec_b.path).name)}\n"
            f"{TRANSFORM_NAMES[transform]}, r={corr:.3f}")


@dataclass
class _Pairs:
    """Pairs of images (indices into the readable records) at or above the near-miss level."""

    first: np.ndarray
    second: np.ndarray
    correlation: np.ndarray
    transform: np.ndarray

    def select(self, keep: np.ndarray) -> _Pairs:
        return _Pairs(self.first[keep], self.second[keep], self.correlation[keep], self.transform[keep])


@dataclass
class _Sources:
    """Where each image came from: its data set (``top``) and sub-folder (``leaf``)."""

    tops: list[str]  # data set names in the order given
    leaves: list[str]  # sub-folder names in the order found
    top_of_every_file: list[str]  # per discovered file, readable or not
    leaf_of_every_file: list[str]
    top_index: np.ndarray  # per readable record, index into tops
    leaf_index: np.ndarray  # per readable record, index into leaves


@writes.reports_writes_to("out_dir")
def audit(
    paths: list[str],
    out_dir,
    threshold: float = 0.85,
    workers: int = 2,
    progress: bool = True,
    subjects: str | None = "auto",
) -> dict:
    """Discover, group duplicates over all folders, write reports to out_dir, return summary.

    ``subjects``: a path,subject CSV, ``auto`` (a subjects.csv beside the folders) or ``none``."""
    if not paths:
        raise ValueError("give at least one data folder to audit")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    clock = {"start": time.perf_counter()}
    out = writes.writable_dir(out_dir)  # a read-only or full --out: one line, before any work
    roots = [os.fspath(p) for p in paths]
    all_records = discover_images(roots, require_label=True)
    clock["discover"] = time.perf_counter()

    signatures, bad, readable = compute_signatures(
        [r.path for r in all_records], workers=workers, progress=progress)
    records = [all_records[k] for k in readable]
    clock["signatures"] = time.perf_counter()
    pairs = _Pairs(*find_pairs(signatures, min(threshold, NEAR_LOW)))
    duplicate = pairs.correlation >= threshold
    groups = groups_from_pairs(len(records), pairs.first[duplicate], pairs.second[duplicate])
    subject_table, subjects_found = resolve_subjects(subjects, roots)
    record_subjects = (subject_table.lookup([r.path for r in records]) if subject_table is not None
                       else [""] * len(records))
    units = split_units(groups, record_subjects)
    clock["pairs"] = time.perf_counter()

    sources = _sources(roots, all_records, readable)
    labels = np.array([r.label for r in records], np.int64)
    leaf_of = [sources.leaf_of_every_file[k] for k in readable]
    bad_paths = {b["path"] for b in bad}
    bad_by_source = Counter(top for record, top in zip(all_records, sources.top_of_every_file,
                                                       strict=True) if record.path in bad_paths)
    subject_stats = _subject_stats(units, labels, sources.leaf_index, sources.leaves,
                                   sources.top_index, sources.tops, record_subjects)
    subject_stats.update(
        file=os.path.relpath(subject_table.csv_path) if subject_table else None,
        found_automatically=subjects_found)
    _write_duplicates_csv(out / "duplicates.csv", records, groups, leaf_of, labels)

    clock["plots_start"] = time.perf_counter()
    _plot_class_distribution(_counts_by_source(all_records, sources), sources.leaves,
                             out / "class_distribution.png")
    _plot_sample_grid([r.path for r in records], labels, out / "sample_grid.png")
    _plot_duplicate_examples(records, pairs.select(duplicate), groups, sources, leaf_of, threshold,
                             out / "duplicate_examples.png")
    clock["end"] = time.perf_counter()

    summary = {
        "paths": roots,
        "threshold": threshold,
        "counts": _counts_by_source(all_records, sources),
        "bad_files": {"count": len(bad), "by_source": dict(bad_by_source), "files": bad},
        "duplicates": _group_stats(groups, pairs, duplicate, len(records)),
        "within_source": _within_sources(groups, sources),
        "copies_across_sources": _copy_matrix(groups, sources.top_index, sources.tops),
        "copies_across_subfolders": _copy_matrix(groups, sources.leaf_index, sources.leaves),
        "label_conflicts": _label_conflicts(groups, labels, records, sources.leaf_index, leaf_of),
        "near_misses": _near_misses(pairs, groups, records, threshold),
        "subjects": subject_stats,
        "timings_s": {
            "discover": round(clock["discover"] - clock["start"], 2),
            "signatures": round(clock["signatures"] - clock["discover"], 2),
            "pairs_and_groups": round(clock["pairs"] - clock["signatures"], 2),
            "plots": round(clock["end"] - clock["plots_start"], 2),
            "total": round(clock["end"] - clock["start"], 2),
        },
    }
    with open(out / "summary.json", "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    markdown = summary_markdown(summary)
    # Non-UTF-8 file names keep their bytes in the file (as in the CSVs) and print escaped.
    (out / "summary.md").write_text(markdown, encoding="utf-8", errors="surrogateescape")
    print(filesystem.shown(markdown))
    return summary


def _sources(roots: list[str], all_records, readable: np.ndarray) -> _Sources:
    top_names = _source_names(roots)
    root_index = {root: k for k, root in enumerate(roots)}
    top_of_every_file = [top_names[root_index[r.source]] for r in all_records]
    leaf_of_every_file = [_leaf_name(r.path, r.source, top)
                          for r, top in zip(all_records, top_of_every_file, strict=True)]
    leaves = list(dict.fromkeys(leaf_of_every_file))
    present = set(top_of_every_file)
    tops = [top for top in top_names if top in present]
    return _Sources(
        tops=tops, leaves=leaves, top_of_every_file=top_of_every_file,
        leaf_of_every_file=leaf_of_every_file,
        top_index=np.array([tops.index(top_of_every_file[k]) for k in readable], np.int64),
        leaf_index=np.array([leaves.index(leaf_of_every_file[k]) for k in readable], np.int64))


def _counts_by_source(all_records, sources: _Sources) -> dict:
    """Class counts of every file found (readable or not), each data set then its sub-folders."""
    order = []
    for top in sources.tops:
        order.append(top)
        order += [leaf for leaf in sources.leaves if leaf != top and leaf.startswith(top + "/")]
    counts = {}
    for name in order:
        members = [record for record, top, leaf in zip(all_records, sources.top_of_every_file,
                                                        sources.leaf_of_every_file, strict=True)
                   if name in (top, leaf)]
        counts[name] = {**class_counts(members), "total": len(members)}
    return counts


def _group_stats(groups: np.ndarray, pairs: _Pairs, duplicate: np.ndarray, images: int) -> dict:
    sizes = np.bincount(groups) if len(groups) else np.zeros(0, np.int64)
    in_duplicate_group = sizes[groups] > 1 if len(groups) else np.zeros(0, bool)
    return {
        "images": images,
        "groups": int(len(sizes)),
        "groups_with_copies": int((sizes > 1).sum()),
        "images_in_duplicate_groups": int(in_duplicate_group.sum()),
        "redundant_images": int(images - len(sizes)),
        "largest_group": int(sizes.max()) if len(sizes) else 0,
        "duplicate_pairs": int(duplicate.sum()),
        "pair_transforms": {TRANSFORM_NAMES[t]: int(n)
                            for t, n in sorted(Counter(pairs.transform[duplicate].tolist()).items())},
    }


def _within_sources(groups: np.ndarray, sources: _Sources) -> dict:
    """Per data set and sub-folder: copies whose groups have another member in the same place."""
    group_count = int(groups.max()) + 1 if len(groups) else 0
    within = {}
    for names, index in ((sources.tops, sources.top_index), (sources.leaves, sources.leaf_index)):
        for k, name in enumerate(names):
            groups_here = groups[index == k]
            sizes_here = np.bincount(groups_here, minlength=group_count)
            within[name] = {"images": int(len(groups_here)),
                            "groups_with_copies": int((sizes_here > 1).sum()),
                            "images_with_copy": int((sizes_here[groups_here] > 1).sum()),
                            "redundant_images": int(len(groups_here) - (sizes_here > 0).sum())}
    return within


def _label_conflicts(groups, labels, records, leaf_index, leaf_of) -> dict:
    """Groups that hold one slice under different classes."""
    sizes = np.bincount(groups) if len(groups) else np.zeros(0, np.int64)
    members_of: dict[int, list[int]] = {}
    for index in np.flatnonzero(sizes[groups] > 1 if len(groups) else np.zeros(0, bool)):
        members_of.setdefault(int(groups[index]), []).append(int(index))
    conflicts, by_classes = [], Counter()
    for group, members in members_of.items():
        classes = sorted({int(labels[m]) for m in members})
        if len(classes) > 1:
            conflicts.append(group)
            by_classes[" / ".join(CLASS_NAMES[c] for c in classes)] += 1
    return {
        "groups": len(conflicts),
        "images": sum(len(members_of[g]) for g in conflicts),
        "groups_spanning_sources": int(sum(len({leaf_index[m] for m in members_of[g]}) > 1
                                           for g in conflicts)),
        "by_classes": dict(by_classes.most_common()),
        "examples": [
            [{"path": records[m].path, "source": leaf_of[m],
              "class_name": CLASS_NAMES[labels[m]]} for m in members_of[g]]
            for g in conflicts[:MAX_EXAMPLES]
        ],
    }


def _near_misses(pairs: _Pairs, groups, records, threshold: float) -> dict:
    """Pairs just below the threshold that ended in different groups: what to look at to tune it."""
    near = ((pairs.correlation < threshold) & (groups[pairs.first] != groups[pairs.second])
            if len(pairs.correlation) else np.zeros(0, bool))
    near_index = np.flatnonzero(near)
    strongest = near_index[np.argsort(-pairs.correlation[near_index], kind="stable")][:MAX_EXAMPLES]
    return {
        "range": [NEAR_LOW, threshold],
        "pairs_not_grouped": int(near.sum()),
        "examples": [{"a": records[pairs.first[p]].path, "b": records[pairs.second[p]].path,
                      "corr": round(float(pairs.correlation[p]), 4),
                      "transform": TRANSFORM_NAMES[pairs.transform[p]]}
                     for p in strongest],
    }


def _write_duplicates_csv(path: Path, records, groups, leaf_of, labels) -> None:
    """Every image that has a copy, grouped."""
    sizes = np.bincount(groups) if len(groups) else np.zeros(0, np.int64)
    with_copy = np.flatnonzero(sizes[groups] > 1) if len(groups) else np.zeros(0, np.int64)
    with open_csv(path, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "path", "source", "class_name"])
        for index in sorted(with_copy.tolist(), key=lambda m: (groups[m], m)):
            writer.writerow([int(groups[index]), records[index].path, leaf_of[index],
                             CLASS_NAMES[labels[index]]])


def _plot_duplicate_examples(records, duplicate_pairs: _Pairs, groups, sources: _Sources, leaf_of,
                             threshold: float, path: Path) -> None:
    picks = _pick_example_pairs(duplicate_pairs, sources.leaf_index, sources.top_index, groups)
    examples = []
    for p in picks:
        a, b = int(duplicate_pairs.first[p]), int(duplicate_pairs.second[p])
        examples.append((records[a].path, records[b].path, _caption(
            records[a], records[b], leaf_of[a], leaf_of[b], float(duplicate_pairs.correlation[p]),
            int(duplicate_pairs.transform[p]))))
    _plot_pairs(examples, path,
                f"Duplicate pairs (r >= {threshold}); transform turns the left into the right")


def _subjects_markdown(stats: dict | None) -> str:
    if not stats:
        return "## Subjects\n\nNot recorded."
    source = (f"patients from {stats['file']} ({stats['images_with_listed_subject']} images listed), "
              "each joined with every near-duplicate of its images" if stats["file"] else
              "no subjects file: near-duplicate groups stand in for subjects")
    lines = [f"## Subjects\n\n{stats['subjects']} subjects; {source}.\n",
             _md_table(["class", "subjects"], [[k, v] for k, v in stats["per_class"].items()]), "",
             _md_table(["folder", "subjects"], [[k, v] for k, v in stats["per_source"].items()])]
    if stats["test_in_training"]:
        lines += ["", "Subjects of a data set's test folder that also appear in its training folder:", "",
                  _md_table(["data set", "test subjects", "also in training"],
                            [[k, v["test_subjects"], v["also_in_training"]]
                             for k, v in stats["test_in_training"].items()])]
    return "\n".join(lines)


def summary_markdown(summary: dict) -> str:
    """Markdown report; kept separate so the CLI can re-render a saved summary.json."""
    counts = summary["counts"]
    sections = [f"# Data audit\n\nFolders: {', '.join(summary['paths'])}; duplicate threshold "
                f"r >= {summary['threshold']} (best of 8 flips/rotations).\n"]
    header = ["source", *CLASS_NAMES, "total"]
    sections.append("## Images per source and class\n\n" + _md_table(
        header, [[s, *[c.get(k, 0) for k in header[1:]]] for s, c in counts.items()]))
    duplicates = summary["duplicates"]
    sections.append("## Duplicate groups (all folders together)\n\n" + _md_table(
        ["measure", "value"],
        [["readable images", duplicates["images"]], ["groups (distinct slices)", duplicates["groups"]],
         ["groups with more than one image", duplicates["groups_with_copies"]],
         ["images in such groups", duplicates["images_in_duplicate_groups"]],
         ["redundant images (images - groups)", duplicates["redundant_images"]],
         ["largest group", duplicates["largest_group"]],
         ["duplicate pairs", duplicates["duplicate_pairs"]],
         ["pairs by transform",
          ", ".join(f"{k} {v}" for k, v in duplicates["pair_transforms"].items())],
         ]))
    within = summary["within_source"]
    sections.append("## Duplicates within each source\n\n" + _md_table(
        ["source", "images", "groups with copies", "images with a copy", "redundant images"],
        [[s, v["images"], v["groups_with_copies"], v["images_with_copy"], v["redundant_images"]]
         for s, v in within.items()]))
    for key, title in (("copies_across_subfolders", "sub-folders"),
                       ("copies_across_sources", "sources")):
        matrix = summary[key]
        names = list(matrix)
        sections.append(
            f"## Copies across {title}\n\nRow A, column B: images of A that have a copy in B "
            "(diagonal: a copy elsewhere in A).\n\n"
            + _md_table(["A \\ B", *names], [[a, *[matrix[a][b] for b in names]] for a in names]))
    conflicts = summary["label_conflicts"]
    rows = [[k, v] for k, v in conflicts["by_classes"].items()] or [["none", 0]]
    sections.append(
        f"## Label conflicts\n\n{conflicts['groups']} groups ({conflicts['images']} images) hold one "
        f"slice under different classes; {conflicts['groups_spanning_sources']} of them span "
        "sub-folders.\n\n"
        + _md_table(["classes in one group", "groups"], rows))
    near_misses = summary["near_misses"]
    sections.append(
        f"## Near misses\n\n{near_misses['pairs_not_grouped']} pairs have "
        f"{near_misses['range'][0]} <= r < {near_misses['range'][1]} and were not grouped "
        "(see summary.json for examples).")
    sections.append(_subjects_markdown(summary.get("subjects")))
    bad = summary["bad_files"]
    bad_rows = [[f["path"], f["reason"]] for f in bad["files"][:MAX_EXAMPLES]] or [["none", ""]]
    sections.append(f"## Unreadable files: {bad['count']}\n\n" + _md_table(["path", "reason"],
                                                                          bad_rows))
    timings = summary["timings_s"]
    sections.append("## Timings (s)\n\n" + _md_table(list(timings), [list(timings.values())]))
    return "\n\n".join(sections) + "\n"
