"""Hostile entries in data folders (issue 30): names that are not UTF-8, FIFOs, links out of the
data root, /proc. Nothing may stop a command, hang it or walk outside the data it was given."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
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


# ------------------------------------------------------------------ FIFOs, links, /proc

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")


def _returns_within(function, seconds: float = 20.0, fifos=()):
    """``function()``'s result, failing the test (instead of hanging it) when it takes longer.
    A reader stuck on a FIFO is released afterwards by opening the FIFO for writing."""
    box: dict = {}

    def run():
        try:
            box["result"] = function()
        except BaseException as error:  # re-raised in the test's thread
            box["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    hung = thread.is_alive()
    for fifo in fifos:  # unblock an open() waiting for a writer, so the thread can end
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    assert not hung, f"{function} did not return within {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["result"]


@needs_fifo
def test_fifos_in_a_data_folder_hang_no_scan_check_or_audit(tmp_path):
    from braintumor_tf.commands.audit import audit
    from braintumor_tf.data.decode import check_images
    from braintumor_tf.data.dicom import is_dicom_file
    from braintumor_tf.data.discover import odd_entries
    from braintumor_tf.data.splits import make_split

    root = _class_folders(tmp_path / "data")
    fifos = [root / "glioma" / "IM0001", root / "glioma" / "pipe.png"]  # DICOM-like, image-like
    for fifo in fifos:
        os.mkfifo(fifo)
    assert _returns_within(lambda: is_dicom_file(fifos[0]), fifos=fifos) is False
    records = _returns_within(lambda: discover_images([root]), fifos=fifos)
    assert len(records) == 8 and not any(r.path.endswith(("IM0001", "pipe.png")) for r in records)
    reasons = {Path(e["path"]).name: e["reason"] for e in odd_entries(root)}
    assert reasons == {"pipe.png": "a FIFO (named pipe), not an image file; skipped"}
    good, bad = _returns_within(lambda: check_images([str(p) for p in fifos]), fifos=fifos)
    assert good == [] and all("FIFO" in b["reason"] for b in bad)
    split = _returns_within(lambda: make_split(records, 0.25, 0.25, 0, progress=False),
                            fifos=fifos)
    assert len(split.records) == 8
    summary = _returns_within(lambda: audit([str(root)], tmp_path / "report", progress=False,
                                            subjects="none"), fifos=fifos)
    assert summary["counts"]["data"]["total"] == 8


@needs_fifo
def test_readers_refuse_a_fifo_named_like_their_file_instead_of_blocking(tmp_path):
    from braintumor_tf.data import filesystem
    from braintumor_tf.data.decode import read_image
    from braintumor_tf.data.labels_csv import records_from_labels
    from braintumor_tf.data.masks import read_mask

    fifos = {name: tmp_path / name for name in ("scan.png", "mask.png", "labels.csv", "x.nii")}
    for fifo in fifos.values():
        os.mkfifo(fifo)
    for call in (lambda: read_image(fifos["scan.png"], 1), lambda: read_mask(fifos["mask.png"]),
                 lambda: filesystem.read_bytes(fifos["scan.png"], 16),
                 lambda: filesystem.open_text(fifos["labels.csv"])):  # CSVs, COCO JSON
        with pytest.raises(OSError, match=r"a FIFO \(named pipe\), not a regular file"):
            _returns_within(call, fifos=fifos.values())
    with pytest.raises(OSError):
        _returns_within(lambda: records_from_labels(fifos["labels.csv"]), fifos=fifos.values())
    pytest.importorskip("nibabel")
    from braintumor_tf.inference.volumes import read_volume

    with pytest.raises(OSError, match="FIFO"):
        _returns_within(lambda: read_volume(fifos["x.nii"]), fifos=fifos.values())


@needs_fifo
def test_predict_on_a_fifo_named_like_an_image_fails_that_input_without_blocking(tmp_path):
    import keras
    from click.testing import CliRunner

    from braintumor_tf.cli import PREDICT_SOME_FAILED, main

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 1), name="pixels")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(x)).save(tmp_path / "m.keras")
    fifo = tmp_path / "some.fifo.png"
    os.mkfifo(fifo)
    good = write_image(tmp_path / "good.png", base_image(0, 32))
    runner = CliRunner()
    result = _returns_within(lambda: runner.invoke(
        main, ["predict", "--model", str(tmp_path / "m.keras"), str(fifo)]), fifos=[fifo])
    assert result.exit_code == 1, result.output
    assert "a FIFO (named pipe), not a regular file" in result.output
    result = _returns_within(lambda: runner.invoke(
        main, ["predict", "--model", str(tmp_path / "m.keras"), str(fifo), str(good)]),
        fifos=[fifo])
    assert result.exit_code == PREDICT_SOME_FAILED, result.output
    result = _returns_within(lambda: runner.invoke(  # --server reads the file first: refused
        main, ["predict", "--server", "http://127.0.0.1:9", "--model-name", "m", str(fifo)]),
        fifos=[fifo])
    assert result.exit_code == 1 and "a FIFO (named pipe)" in result.output, result.output


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_links_out_of_the_data_root_are_not_followed_unless_asked(tmp_path, monkeypatch):
    from braintumor_tf.data.discover import FOLLOW_LINKS_OUT_ENV, odd_entries

    monkeypatch.delenv(FOLLOW_LINKS_OUT_ENV, raising=False)
    root = _class_folders(tmp_path / "data")
    outside = _class_folders(tmp_path / "elsewhere")
    os.symlink("/", root / "glioma" / "everything")  # would walk the whole file system
    os.symlink(outside / "glioma", root / "glioma" / "more")
    os.symlink(outside / "glioma" / "s0.png", root / "glioma" / "linked.png")
    os.symlink(root / "glioma" / "s0.png", root / "notumor" / "inside.png")  # inside: followed
    records = _returns_within(lambda: discover_images([root]))
    names = sorted(os.path.relpath(r.path, root) for r in records)
    assert names == sorted([f"{CLASS_NAMES[k % 4]}/s{k}.png" for k in range(8)])  # inside.png
    # is the same file as glioma/s0.png, listed once
    reasons = {Path(e["path"]).name: e["reason"] for e in odd_entries(root)}
    assert set(reasons) == {"everything", "more", "linked.png"}
    assert reasons["everything"].startswith("a symbolic link out of the data root (to /)")
    assert FOLLOW_LINKS_OUT_ENV in reasons["more"]
    monkeypatch.setenv(FOLLOW_LINKS_OUT_ENV, "1")
    os.remove(root / "glioma" / "everything")
    followed = sorted(os.path.relpath(r.path, root) for r in discover_images([root]))
    # elsewhere/glioma/s0.png comes once (linked.png and more/s0.png are one file)
    assert followed == sorted(names + ["glioma/linked.png", "glioma/more/s4.png"])


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="no /proc")
def test_data_proc_self_ends_quickly_with_one_line(tmp_path):
    with pytest.raises(ValueError, match="no labelled image found in /proc/self"):
        _returns_within(lambda: discover_images(["/proc/self"]))
    from click.testing import CliRunner

    from braintumor_tf.cli import main

    result = _returns_within(lambda: CliRunner().invoke(
        main, ["data", "audit", "/proc/self", "--out", str(tmp_path / "audit")]))
    assert result.exit_code != 0 and "no labelled image found" in result.output
