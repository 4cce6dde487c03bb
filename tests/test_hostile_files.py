"""Hostile entries in data folders (issue 30): names that are not UTF-8, FIFOs, links out of the
data root, /proc. Nothing may stop a command, hang it or walk outside the data it was given."""

from __future__ import annotations

import os
from pathlib import Path

from support import base_image, write_image

from braintumor_tf.data.discover import CLASS_NAMES, discover_images

ODD_NAME = os.fsdecode(b"copy_\xff.png")  # not UTF-8: a str with a surrogate escape


def _class_folders(root: Path, count: int = 8, size: int = 48) -> Path:
    for k in range(count):
        write_image(root / CLASS_NAMES[k % 4] / f"s{k}.png", base_image(k, size))
    return root


def test_a_non_utf8_name_in_a_training_folder_is_split_grouped_and_audited(tmp_path, capsys):
    from braintumor_tf.commands.audit import audit
    from braintumor_tf.data.splits import make_split

    root = _class_folders(tmp_path / "data")
    write_image(root / "glioma" / "plain.png", base_image(0, 48)[:, ::-1])  # a copy of s0.png
    os.rename(root / "glioma" / "plain.png", root / "glioma" / ODD_NAME)
    (root / "notumor" / os.fsdecode(b"bad_\xfe.png")).write_bytes(b"garbage")
    records = discover_images([root])
    assert len(records) == 10
    for _ in range(2):  # the way train splits: signatures and groups cached, then a cache hit
        split = make_split(records, 0.25, 0.25, 0, cache_dir=tmp_path / "cache", progress=False)
        assert len(split.records) == 9 and len(split.bad) == 1
        odd = next(k for k, r in enumerate(split.records) if r.path.endswith(ODD_NAME))
        first = next(k for k, r in enumerate(split.records) if r.path.endswith("s0.png"))
        assert split.groups[odd] == split.groups[first]  # grouped with the slice it copies
    summary = audit([str(root)], tmp_path / "report", progress=False, subjects="none")
    assert summary["bad_files"]["count"] == 1 and summary["duplicates"]["groups_with_copies"] == 1
    assert "bad_\\xfe.png" in capsys.readouterr().out  # printed escaped
    assert b"bad_\xfe.png" in (tmp_path / "report" / "summary.md").read_bytes()  # its own bytes
    assert os.fsencode(ODD_NAME) in (tmp_path / "report" / "duplicates.csv").read_bytes()
