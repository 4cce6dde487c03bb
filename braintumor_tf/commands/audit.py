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
from pathlib import Path

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

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


def _pick_example_pairs(pi, pj, pc, pt, leaf_src, top_src, groups, k: int = 8) -> list[int]:
    """Most telling first: a rotated/mirrored copy across Training/Testing of one set, then
    across sets, then identical copies across folders; one pair per group, mixed transforms."""
    same_top = top_src[pi] == top_src[pj]
    cross_leaf = leaf_src[pi] != leaf_src[pj]
    moved = pt != 0
    rank = np.select(
        [cross_leaf & same_top & moved, ~same_top & moved, cross_leaf & same_top, ~same_top,
         moved],
        [0, 1, 2, 3, 4], 5)
    order = np.lexsort((-pc, rank))
    chosen, seen_groups, seen_kind = [], set(), Counter()
    for limit in (1, 2, k):  # spread over transforms before repeating one
        for p in order:
            if len(chosen) >= k:
                return chosen
            g = int(groups[pi[p]])
            kind = (int(rank[p]), int(pt[p]))
            if g in seen_groups or seen_kind[kind] >= limit:
                continue
            chosen.append(int(p))
            seen_groups.add(g)
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
            f"{Path(rec_a.path).name} | {Path(rec_b.path).name}\n"
            f"{TRANSFORM_NAMES[transform]}, r={corr:.3f}")


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
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    roots = [os.fspath(p) for p in paths]
    tops = _source_names(roots)
    all_records = discover_images(roots, require_label=True)
    root_index = {r: k for k, r in enumerate(roots)}
    t_discover = time.perf_counter()

    sigs, bad, ok_index = compute_signatures(
        [r.path for r in all_records], workers=workers, progress=progress)
    records = [all_records[k] for k in ok_index]
    t_sigs = time.perf_counter()
    pi, pj, pc, pt = find_pairs(sigs, min(threshold, NEAR_LOW))
    dup = pc >= threshold
    groups = groups_from_pairs(len(records), pi[dup], pj[dup])
    subject_table, subjects_found = resolve_subjects(subjects, roots)
    record_subjects = (subject_table.lookup([r.path for r in records]) if subject_table is not None
                       else [""] * len(records))
    units = split_units(groups, record_subjects)
    t_pairs = time.perf_counter()

    all_top = [tops[root_index[r.source]] for r in all_records]
    all_leaf = [_leaf_name(r.path, r.source, t) for r, t in zip(all_records, all_top, strict=True)]
    top_of = [all_top[k] for k in ok_index]
    leaf_of = [all_leaf[k] for k in ok_index]
    leaves = list(dict.fromkeys(all_leaf))
    top_list = [t for t in tops if t in set(all_top)]
    top_src = np.array([top_list.index(t) for t in top_of], np.int64)
    leaf_src = np.array([leaves.index(s) for s in leaf_of], np.int64)
    labels = np.array([r.label for r in records], np.int64)
    bad_paths = {b["path"] for b in bad}
    bad_top = Counter(t for r, t in zip(all_records, all_top, strict=True) if r.path in bad_paths)

    # Per source counts (all files found, readable or not), each top then its sub-folders.
    source_order = []
    for t in top_list:
        source_order.append(t)
        source_order += [s for s in leaves if s != t and s.startswith(t + "/")]
    counts = {}
    for s in source_order:
        member = [r for r, tt, ll in zip(all_records, all_top, all_leaf, strict=True)
                  if s in (tt, ll)]
        c = class_counts(member)
        c["total"] = len(member)
        counts[s] = c

    sizes = np.bincount(groups) if len(groups) else np.zeros(0, np.int64)
    in_dup = sizes[groups] > 1 if len(groups) else np.zeros(0, bool)
    group_stats = {
        "images": len(records),
        "groups": int(len(sizes)),
        "groups_with_copies": int((sizes > 1).sum()),
        "images_in_duplicate_groups": int(in_dup.sum()),
        "redundant_images": int(len(records) - len(sizes)),
        "largest_group": int(sizes.max()) if len(sizes) else 0,
        "duplicate_pairs": int(dup.sum()),
        "pair_transforms": {TRANSFORM_NAMES[t]: int(n)
                            for t, n in sorted(Counter(pt[dup].tolist()).items())},
    }
    within = {}
    for level_names, level_src in ((top_list, top_src), (leaves, leaf_src)):
        for k, s in enumerate(level_names):
            g = groups[level_src == k]
            gs = np.bincount(g, minlength=len(sizes))
            within[s] = {"images": int(len(g)),
                         "groups_with_copies": int((gs > 1).sum()),
                         "images_with_copy": int((gs[g] > 1).sum()),
                         "redundant_images": int(len(g) - (gs > 0).sum())}
    cross_top = _copy_matrix(groups, top_src, top_list)
    cross_leaf = _copy_matrix(groups, leaf_src, leaves)

    # Label conflicts: one slice, several classes.
    conflicts, pair_counts = [], Counter()
    members_of: dict[int, list[int]] = {}
    for idx in np.flatnonzero(in_dup):
        members_of.setdefault(int(groups[idx]), []).append(int(idx))
    for g, members in members_of.items():
        labs = sorted({int(labels[m]) for m in members})
        if len(labs) > 1:
            conflicts.append(g)
            pair_counts[" / ".join(CLASS_NAMES[x] for x in labs)] += 1
    conflict_images = sum(len(members_of[g]) for g in conflicts)
    conflict_cross = sum(len({leaf_src[m] for m in members_of[g]}) > 1 for g in conflicts)
    label_conflicts = {
        "groups": len(conflicts),
        "images": conflict_images,
        "groups_spanning_sources": int(conflict_cross),
        "by_classes": dict(pair_counts.most_common()),
        "examples": [
            [{"path": records[m].path, "source": leaf_of[m],
              "class_name": CLASS_NAMES[labels[m]]} for m in members_of[g]]
            for g in conflicts[:MAX_EXAMPLES]
        ],
    }
    near = (pc < threshold) & (groups[pi] != groups[pj]) if len(pc) else np.zeros(0, bool)
    near_idx = np.flatnonzero(near)
    near_pick = near_idx[np.argsort(-pc[near_idx], kind="stable")][:MAX_EXAMPLES]
    near_misses = {
        "range": [NEAR_LOW, threshold],
        "pairs_not_grouped": int(near.sum()),
        "examples": [{"a": records[pi[p]].path, "b": records[pj[p]].path,
                      "corr": round(float(pc[p]), 4), "transform": TRANSFORM_NAMES[pt[p]]}
                     for p in near_pick],
    }

    subject_stats = _subject_stats(units, labels, leaf_src, leaves, top_src, top_list, record_subjects)
    subject_stats.update(
        file=os.path.relpath(subject_table.csv_path) if subject_table else None,
        found_automatically=subjects_found)

    # duplicates.csv: every image that has a copy, grouped.
    with open(out / "duplicates.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["group", "path", "source", "class_name"])
        for idx in sorted(np.flatnonzero(in_dup).tolist(), key=lambda m: (groups[m], m)):
            writer.writerow([int(groups[idx]), records[idx].path, leaf_of[idx],
                             CLASS_NAMES[labels[idx]]])

    t_plots = time.perf_counter()
    _plot_class_distribution(counts, leaves, out / "class_distribution.png")
    _plot_sample_grid([r.path for r in records], labels, out / "sample_grid.png")
    dup_idx = np.flatnonzero(dup)
    picks = _pick_example_pairs(pi[dup], pj[dup], pc[dup], pt[dup], leaf_src, top_src, groups)
    example_pairs = []
    for p in dup_idx[picks]:
        a, b = int(pi[p]), int(pj[p])
        example_pairs.append((records[a].path, records[b].path, _caption(
            records[a], records[b], leaf_of[a], leaf_of[b], float(pc[p]), int(pt[p]))))
    _plot_pairs(example_pairs, out / "duplicate_examples.png",
                f"Duplicate pairs (r >= {threshold}); transform turns the left into the right")
    t_end = time.perf_counter()

    summary = {
        "paths": roots,
        "threshold": threshold,
        "counts": counts,
        "bad_files": {"count": len(bad), "by_source": dict(bad_top), "files": bad},
        "duplicates": group_stats,
        "within_source": within,
        "copies_across_sources": cross_top,
        "copies_across_subfolders": cross_leaf,
        "label_conflicts": label_conflicts,
        "near_misses": near_misses,
        "subjects": subject_stats,
        "timings_s": {
            "discover": round(t_discover - t_start, 2),
            "signatures": round(t_sigs - t_discover, 2),
            "pairs_and_groups": round(t_pairs - t_sigs, 2),
            "plots": round(t_end - t_plots, 2),
            "total": round(t_end - t_start, 2),
        },
    }
    with open(out / "summary.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    markdown = summary_markdown(summary)
    (out / "summary.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    return summary


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
    d = summary["duplicates"]
    sections.append("## Duplicate groups (all folders together)\n\n" + _md_table(
        ["measure", "value"],
        [["readable images", d["images"]], ["groups (distinct slices)", d["groups"]],
         ["groups with more than one image", d["groups_with_copies"]],
         ["images in such groups", d["images_in_duplicate_groups"]],
         ["redundant images (images - groups)", d["redundant_images"]],
         ["largest group", d["largest_group"]], ["duplicate pairs", d["duplicate_pairs"]],
         ["pairs by transform", ", ".join(f"{k} {v}" for k, v in d["pair_transforms"].items())],
         ]))
    w = summary["within_source"]
    sections.append("## Duplicates within each source\n\n" + _md_table(
        ["source", "images", "groups with copies", "images with a copy", "redundant images"],
        [[s, v["images"], v["groups_with_copies"], v["images_with_copy"], v["redundant_images"]]
         for s, v in w.items()]))
    for key, title in (("copies_across_subfolders", "sub-folders"),
                       ("copies_across_sources", "sources")):
        m = summary[key]
        names = list(m)
        sections.append(
            f"## Copies across {title}\n\nRow A, column B: images of A that have a copy in B "
            "(diagonal: a copy elsewhere in A).\n\n"
            + _md_table(["A \\ B", *names], [[a, *[m[a][b] for b in names]] for a in names]))
    lc = summary["label_conflicts"]
    rows = [[k, v] for k, v in lc["by_classes"].items()] or [["none", 0]]
    sections.append(
        f"## Label conflicts\n\n{lc['groups']} groups ({lc['images']} images) hold one slice "
        f"under different classes; {lc['groups_spanning_sources']} of them span sub-folders.\n\n"
        + _md_table(["classes in one group", "groups"], rows))
    nm = summary["near_misses"]
    sections.append(
        f"## Near misses\n\n{nm['pairs_not_grouped']} pairs have {nm['range'][0]} <= r < "
        f"{nm['range'][1]} and were not grouped (see summary.json for examples).")
    sections.append(_subjects_markdown(summary.get("subjects")))
    b = summary["bad_files"]
    bad_rows = [[f["path"], f["reason"]] for f in b["files"][:MAX_EXAMPLES]] or [["none", ""]]
    sections.append(f"## Unreadable files: {b['count']}\n\n" + _md_table(["path", "reason"],
                                                                          bad_rows))
    t = summary["timings_s"]
    sections.append("## Timings (s)\n\n" + _md_table(list(t), [list(t.values())]))
    return "\n\n".join(sections) + "\n"
