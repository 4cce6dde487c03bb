"""Find labelled MRI images in folder-per-class layouts.

Kept free of TensorFlow so that listing and counting data stays fast and usable from tools
that never train.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from braintumor_tf.data import filesystem
from braintumor_tf.data.dicom import is_dicom_file
from braintumor_tf.log import logger

# Index = model output index; every other module takes the class order from here.
CLASS_NAMES = ("glioma", "meningioma", "notumor", "pituitary")

# Public datasets name the same classes differently (Sartaj: "glioma_tumor", "no_tumor").
CLASS_SYNONYMS = {
    "glioma": "glioma",
    "glioma_tumor": "glioma",
    "meningioma": "meningioma",
    "meningioma_tumor": "meningioma",
    "pituitary": "pituitary",
    "pituitary_tumor": "pituitary",
    "notumor": "notumor",
    "no_tumor": "notumor",
    "normal": "notumor",
    "no": "notumor",
}

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")

# Symbolic links that lead out of the data root are not followed (a link to / in a class folder
# would walk the whole file system) unless this variable is 1.
FOLLOW_LINKS_OUT_ENV = "BRAINTUMOR_TF_FOLLOW_LINKS_OUT"

PathLike = str | os.PathLike


@dataclass(frozen=True)
class ImageRecord:
    path: str
    label: int  # index into CLASS_NAMES, -1 if unlabelled
    source: str  # the root the image was found under


def canonical_class(folder_name: str) -> str | None:
    """Map a folder name to a canonical class; tolerant because hand-made copies vary."""
    key = folder_name.strip().lower().replace("-", "_").replace(" ", "_")
    return CLASS_SYNONYMS.get(key)


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def class_for_path(path: PathLike, root: PathLike) -> str | None:
    """Nearest class folder wins, so e.g. root/glioma/pituitary/x.png is pituitary."""
    if filesystem.is_remote(root):
        rel = filesystem.relative_parts(os.fspath(path), root)
        if rel is None:
            return None
        for part in reversed(rel[:-1]):
            name = canonical_class(part)
            if name is not None:
                return name
        return canonical_class(filesystem.basename(root))
    file_path = Path(os.path.abspath(path))
    root_path = Path(os.path.abspath(root))
    try:
        rel_parts = file_path.relative_to(root_path).parts[:-1]
    except ValueError:
        return None
    for part in reversed(rel_parts):
        name = canonical_class(part)
        if name is not None:
            return name
    return canonical_class(root_path.name)


def follow_links_out() -> bool:
    return os.environ.get(FOLLOW_LINKS_OUT_ENV, "").strip().lower() in ("1", "true", "yes")


def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def _link_out(path: str, root_real: str) -> str | None:
    """Where a symbolic link at ``path`` leads when that is outside ``root_real``, else None."""
    if not os.path.islink(path):
        return None
    target = os.path.realpath(path)
    return None if _inside(target, root_real) else target


def _walk_images(root: Path | str, odd: list[dict] | None = None) -> Iterable[Path | str]:
    """Sorted walk that follows symlinks inside the root but enters each real directory once
    (no loops), and does not follow links that lead out of the root (FOLLOW_LINKS_OUT_ENV=1
    does). Only regular files are yielded, and only regular files are ever opened (to sniff
    extensionless DICOM): a FIFO, socket or device is never opened.

    Entries that are named like images but are not readable files (folders named ``x.jpg``,
    dangling or looping links, FIFOs, sockets, devices), links out of the root, and folders
    reached a second time through a link, are appended to ``odd`` as ``{"path", "reason"}``
    instead of vanishing. A remote ``root`` (``scheme://``, see filesystem.py) yields ``str``
    paths.
    """
    if filesystem.is_remote(root):
        yield from _walk_remote_images(root, odd)
        return
    seen: set[str] = set()
    root_real = os.path.realpath(root)
    links_out = follow_links_out()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            if odd is not None:
                odd.append({"path": dirpath, "reason": "folder already listed through another "
                            "path (a symbolic link loop or a second link); not entered again"})
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if not links_out:
            kept = []
            for name in dirnames:
                target = _link_out(os.path.join(dirpath, name), root_real)
                if target is None:
                    kept.append(name)
                elif odd is not None:
                    odd.append({"path": os.path.join(dirpath, name),
                                "reason": _link_out_reason(target)})
            dirnames[:] = kept
        if odd is not None:
            odd.extend({"path": os.path.join(dirpath, d), "reason": "a folder named like an "
                        "image file; skipped"} for d in dirnames if is_image_file(d))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = Path(dirpath) / name
            candidate = is_image_file(name) or "." not in name
            if not candidate:
                continue
            target = None if links_out else _link_out(str(full), root_real)
            if target is not None:
                if odd is not None and (is_image_file(name) or filesystem.is_regular_file(full)):
                    odd.append({"path": str(full), "reason": _link_out_reason(target)})
                continue
            # Scanners export DICOM series as files without an extension (IM0001, ...);
            # is_dicom_file opens regular files only.
            if not is_image_file(name) and not is_dicom_file(full):
                continue
            if full.is_file():
                yield full
            elif odd is not None:
                odd.append({"path": str(full), "reason": _why_not_a_file(full)})


def _walk_remote_images(root: str, odd: list[dict] | None) -> Iterable[str]:
    """_walk_images on an object store: it has no links to loop through, and the walk has
    already told files from folders, so no second request per file is made."""
    for dirpath, dirnames, filenames in filesystem.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if odd is not None:
            odd.extend({"path": filesystem.join(dirpath, d), "reason": "a folder named like an "
                        "image file; skipped"} for d in dirnames if is_image_file(d))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = filesystem.join(dirpath, name)
            if is_image_file(name) or ("." not in name and is_dicom_file(full)):
                yield full


def _link_out_reason(target: str) -> str:
    return (f"a symbolic link out of the data root (to {target}); not followed "
            f"({FOLLOW_LINKS_OUT_ENV}=1 follows such links)")


def _why_not_a_file(path: Path) -> str:
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        if path.is_symlink():
            if error.errno == 40:  # ELOOP
                return "a symbolic link loop; skipped"
            return f"a symbolic link to a missing file ({os.readlink(path)}); skipped"
        return f"cannot read: {error.strerror}; skipped"
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISBLK(mode) or stat.S_ISCHR(mode) else "not a regular file")
    return f"{kind}, not an image file; skipped"


def odd_entries(roots: PathLike | Sequence[PathLike]) -> list[dict]:
    """What a listing of ``roots`` skips besides non-image names: see _walk_images."""
    if isinstance(roots, str | os.PathLike):
        roots = [roots]
    odd: list[dict] = []
    for root in roots:
        if filesystem.is_remote(root):
            if filesystem.is_dir(root):
                for _ in _walk_images(root, odd):
                    pass
        elif Path(root).is_dir():
            for _ in _walk_images(Path(root), odd):
                pass
    return odd


def _layout_hint() -> str:
    accepted = ", ".join(sorted(CLASS_SYNONYMS))
    return (
        "expected a folder-per-class layout such as <root>/[Training/]<class>/<image>"
        f" with image files {'/'.join(IMAGE_EXTENSIONS)}; accepted class folder names: {accepted}"
    )


def discover_images_with_report(
    roots: PathLike | Sequence[PathLike], require_label: bool = True
) -> tuple[list[ImageRecord], list[str]]:
    """Also return unlabelled paths, so callers can tell the user what was left out."""
    if isinstance(roots, str | os.PathLike):
        roots = [roots]
    records: list[ImageRecord] = []
    unlabelled: list[str] = []
    seen_files: set[str] = set()  # overlapping roots must not duplicate images
    for root in roots:
        remote = filesystem.is_remote(root)
        root_path = root if remote else Path(root)
        if not (filesystem.exists(root) if remote else root_path.exists()):
            raise FileNotFoundError(f"data folder not found: {root}")
        if not (filesystem.is_dir(root) if remote else root_path.is_dir()):
            raise ValueError(f"data root must be a folder, not a file: {root}")
        found = 0
        odd: list[dict] = []
        for file_path in _walk_images(root_path, odd):
            name = class_for_path(file_path, root_path)
            if name is not None or not require_label:
                found += 1  # counted before de-duplication: a repeated root is not empty
            real = file_path if remote else os.path.realpath(file_path)
            if real in seen_files:
                continue
            seen_files.add(real)
            if name is None:
                unlabelled.append(str(file_path))
                if require_label:
                    continue
                label = -1
            else:
                label = CLASS_NAMES.index(name)
            records.append(ImageRecord(path=str(file_path), label=label, source=str(root)))
        if odd:
            shown = "; ".join(f"{entry['path']}: {entry['reason']}" for entry in odd[:3])
            logger.warning(f"{len(odd)} entries under {root} look like images but are not "
                           "readable files, or are links out of the data root, and were skipped "
                           f"({filesystem.shown(shown)}{'; ...' if len(odd) > 3 else ''})")
        if found == 0:
            kind = "labelled image" if require_label else "image"
            raise ValueError(f"no {kind} found in {root}: {_layout_hint()}")
    return records, unlabelled


def discover_images(
    roots: PathLike | Sequence[PathLike], require_label: bool = True
) -> list[ImageRecord]:
    return discover_images_with_report(roots, require_label)[0]


def class_counts(records: Iterable[ImageRecord]) -> dict[str, int]:
    """Counts in CLASS_NAMES order (zeros included) so reports line up across runs."""
    counts = {name: 0 for name in CLASS_NAMES}
    unlabelled = 0
    for rec in records:
        if 0 <= rec.label < len(CLASS_NAMES):
            counts[CLASS_NAMES[rec.label]] += 1
        else:
            unlabelled += 1
    if unlabelled:
        counts["unlabelled"] = unlabelled
    return counts
