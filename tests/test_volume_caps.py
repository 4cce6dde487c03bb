"""NIfTI volumes are bounded before their voxels are read (issue 30, item 5): a 255 KB .nii.gz
declaring 640³ zeros reached 3.9 GB; a local NIfTI file ignored BRAINTUMOR_TF_MAX_FILE_BYTES."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import PEAK_MB_EXPRESSION

nibabel = pytest.importorskip("nibabel")
from braintumor_tf.inference.volumes import (  # noqa: E402
    DEFAULT_MAX_VOXELS,
    MAX_VOXELS_VARIABLE,
    read_volume,
)

ROOT = Path(__file__).resolve().parents[1]


def _volume_bomb(path: Path, side: int = 640) -> Path:
    """A real .nii.gz of side³ uint8 zeros, written in slabs (never side³ bytes in memory)."""
    header = nibabel.Nifti1Header()
    header.set_data_shape((side, side, side))
    header.set_data_dtype(np.uint8)
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    slab = bytes(side * side * 16)
    with gzip.open(path, "wb", compresslevel=9) as handle:
        handle.write(header.binaryblock)
        handle.write(bytes(int(header["vox_offset"]) - len(header.binaryblock)))
        for _ in range(side // 16):
            handle.write(slab)
    return path


def _measured(code: str, env: dict | None = None) -> dict:
    """Run ``code`` (which prints a JSON dict) in a fresh interpreter whose address space is
    capped at 4 GB, and add its peak resident memory."""
    wrapped = (
        "import resource, json, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
        f"{code}\n"
        f"result['peak_mb'] = {PEAK_MB_EXPRESSION}\n"
        "print(json.dumps(result))\n")
    done = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_small_gzip_declaring_640_cubed_voxels_is_refused_without_allocating(tmp_path):
    bomb = _volume_bomb(tmp_path / "bomb.nii.gz")
    assert bomb.stat().st_size < 400_000  # 640³ = 262 million voxels in a few hundred KB
    code = ("from braintumor_tf.inference.volumes import read_volume\n"
            f"base = {PEAK_MB_EXPRESSION}\n"
            "try:\n"
            f"    read_volume({str(bomb)!r})\n"
            "    result = {'error': None}\n"
            "except ValueError as error:\n"
            "    result = {'error': str(error)}\n"
            "result['base_mb'] = base")
    result = _measured(code)
    assert result["error"] == (
        f"{bomb}: a volume of 640 x 640 x 640 = 262,144,000 voxels, over the "
        f"{DEFAULT_MAX_VOXELS:,}-voxel limit; not read ({MAX_VOXELS_VARIABLE} raises it)")
    assert result["peak_mb"] - result["base_mb"] < 50, result  # was +3.9 GB


def test_the_voxel_cap_is_configurable(tmp_path, monkeypatch):
    path = tmp_path / "scan.nii.gz"
    data = np.random.default_rng(0).uniform(0, 1000, (20, 24, 6)).astype(np.float32)
    nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), str(path))
    assert read_volume(path)[1].shape == (6, 20, 24)
    monkeypatch.setenv(MAX_VOXELS_VARIABLE, str(20 * 24 * 6 - 1))
    with pytest.raises(ValueError, match="2,880 voxels, over the 2,879-voxel limit"):
        read_volume(path)
    monkeypatch.setenv(MAX_VOXELS_VARIABLE, "lots")
    with pytest.raises(ValueError, match="must be a whole number of voxels"):
        read_volume(path)
    monkeypatch.setenv(MAX_VOXELS_VARIABLE, str(20 * 24 * 6))
    assert read_volume(path)[1].shape == (6, 20, 24)
    # NIfTI-2 files are read through the same bounded path
    nibabel.save(nibabel.Nifti2Image(data, np.eye(4)), str(tmp_path / "two.nii"))
    np.testing.assert_array_equal(read_volume(tmp_path / "two.nii")[1], read_volume(path)[1])


def test_a_local_nifti_respects_the_file_size_cap(tmp_path, monkeypatch):
    path = tmp_path / "scan.nii"
    nibabel.save(nibabel.Nifti1Image(np.ones((10, 10, 10), np.float32), np.eye(4)), str(path))
    monkeypatch.setenv("BRAINTUMOR_TF_MAX_FILE_BYTES", str(path.stat().st_size - 1))
    with pytest.raises(OSError, match=r"over the \d+-byte limit for one file; not read"):
        read_volume(path)
    monkeypatch.delenv("BRAINTUMOR_TF_MAX_FILE_BYTES")
    assert read_volume(path)[1].shape == (10, 10, 10)


def test_a_3_gb_sparse_nii_is_refused_unread(tmp_path):
    sparse = tmp_path / "huge.nii"
    with open(sparse, "wb") as handle:
        handle.truncate(3 << 30)
    code = ("from braintumor_tf.inference.volumes import read_volume\n"
            f"base = {PEAK_MB_EXPRESSION}\n"
            "try:\n"
            f"    read_volume({str(sparse)!r})\n"
            "    result = {'error': None}\n"
            "except OSError as error:\n"
            "    result = {'error': str(error)}\n"
            "result['base_mb'] = base")
    result = _measured(code)
    assert "3221225472 bytes, over the 536870912-byte limit" in result["error"]
    assert result["peak_mb"] - result["base_mb"] < 50, result
