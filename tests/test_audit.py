"""The audit must find copies across Training/Testing and across data sets."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
from support import base_image, write_image

from braintumor_tf.commands.audit import audit
from braintumor_tf.data.discover import CLASS_NAMES


def test_audit_finds_cross_source_copies(tmp_path, capsys):
    a, b = tmp_path / "A", tmp_path / "B"
    for k in range(16):  # A/Training: 16 distinct slices, 4 per class
        write_image(a / "Training" / CLASS_NAMES[k % 4] / f"tr{k}.jpg", base_image(k))
    for k in range(6):  # A/Testing: 3 mirrored/rotated copies of Training images + 3 new
        img = np.rot90(base_image(k)) if k % 2 else base_image(k)[:, ::-1]
        write_image(a / "Testing" / CLASS_NAMES[k % 4] / f"te{k}.png", img if k < 3 else base_image(
            100 + k))
    # B: two resized copies of A/Training (one under another class: a label conflict), one new.
    write_image(b / CLASS_NAMES[0] / "b0.jpg", cv2.resize(base_image(8), (120, 120)))
    write_image(b / CLASS_NAMES[2] / "b1.jpg", cv2.resize(base_image(9), (224, 224)))
    write_image(b / CLASS_NAMES[3] / "b2.jpg", base_image(200))
    (b / CLASS_NAMES[3] / "broken.jpg").write_bytes(b"\xff\xd8garbage")

    out = tmp_path / "report"
    summary = audit([str(a), str(b)], out, progress=False)

    assert summary["counts"]["A"]["total"] == 22
    assert summary["counts"]["A/Testing"]["total"] == 6
    assert summary["counts"]["B"]["total"] == 4
    assert summary["bad_files"]["count"] == 1
    cross = summary["copies_across_subfolders"]
    assert cross["A/Testing"]["A/Training"] == 3
    assert cross["A/Training"]["A/Testing"] == 3
    assert cross["A/Testing"]["A/Testing"] == 0
    assert summary["copies_across_sources"]["B"]["A"] == 2
    d = summary["duplicates"]
    assert d["groups_with_copies"] == 5 and d["images_in_duplicate_groups"] == 10
    assert summary["label_conflicts"]["groups"] == 1
    assert set(d["pair_transforms"]) == {"flip_lr", "rot270", "identity"}  # Testing sorts first

    for name in ("duplicates.csv", "summary.json", "summary.md", "class_distribution.png",
                 "sample_grid.png", "duplicate_examples.png"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "duplicates.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10 and set(rows[0]) == {"group", "path", "source", "class_name"}
    assert json.loads((out / "summary.json").read_text())["threshold"] == 0.85
    assert "Copies across sub-folders" in capsys.readouterr().out
