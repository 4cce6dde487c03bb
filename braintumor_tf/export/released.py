"""Released models by name, for installs that are not a clone of the repository.

``bt.load("classifier")``, ``predict --model classifier`` and ``demo`` look for a release folder
of that name in the models folder: ``$BRAINTUMOR_TF_MODELS`` if set, else the user cache
(``$XDG_CACHE_HOME/braintumor_tf/models``, ``~/.cache/...``), else ``./savedmodels`` (a clone).
``braintumor-tf models pull --from URL_OR_PATH`` fills the folder, checking every file against
the sha256 manifest that ships inside the package (``release_manifest.json``), so a damaged or
substituted download is refused before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

MODELS_ENVIRONMENT_VARIABLE = "BRAINTUMOR_TF_MODELS"
MANIFEST = Path(__file__).resolve().parent.parent / "release_manifest.json"
MODEL_SUFFIXES = (".keras", ".tflite")
DOWNLOAD_LIMIT_BYTES = 512 * 1024 * 1024  # one released file; the largest is ~56 MB


def models_folders() -> list[Path]:
    """Where names are looked up, in order."""
    if os.environ.get(MODELS_ENVIRONMENT_VARIABLE):
        return [Path(os.environ[MODELS_ENVIRONMENT_VARIABLE])]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [cache / "braintumor_tf" / "models", Path("savedmodels")]


def pull_target() -> Path:
    """Where ``models pull`` writes: the first folder names are looked up in."""
    return models_folders()[0]


def is_model_name(text) -> bool:
    """A bare name like ``classifier`` (no folder, no suffix) rather than a path."""
    text = os.fspath(text)
    return bool(text) and "/" not in text and os.sep not in text and "." not in text


def resolve_model(path_or_name) -> Path:
    """A path as given when it exists; a released model's folder when given its name."""
    path = Path(path_or_name)
    if path.exists() or not is_model_name(path_or_name):
        return path
    for folder in models_folders():
        if (folder / path.name).is_dir():
            return folder / path.name
    looked = ", ".join(str(folder) for folder in models_folders())
    raise FileNotFoundError(
        f"no model or released model named {path_or_name!r} (looked in {looked}); "
        f"get one with: braintumor-tf models pull --from URL_OR_FOLDER")


def default_classifier() -> Path:
    """The released classifier: its .keras file (Grad-CAM, same averaging and guard as the
    served versions) if present, else its serving base (newest SavedModel version)."""
    folder = resolve_model("classifier")
    return folder / "classifier.keras" if (folder / "classifier.keras").is_file() else folder


def list_models() -> list[dict]:
    """Every release folder found: name, folder, SavedModel versions and files."""
    from braintumor_tf.spec import read_spec

    found, seen = [], set()
    for folder in models_folders():
        if not folder.is_dir():
            continue
        for release in sorted(p for p in folder.iterdir() if p.is_dir()):
            versions = sorted(int(v.name) for v in release.iterdir()
                              if v.name.isdigit() and (v / "saved_model.pb").is_file())
            files = sorted(p.name for p in release.iterdir() if p.suffix in MODEL_SUFFIXES)
            if not versions and not files:
                continue
            # The newest SavedModel's spec, else the first file's that carries one (a release
            # of LiteRT files only, such as the segmenter's, still says what it is).
            spec = None
            for candidate in ([release / str(versions[-1])] if versions else []) \
                    + [release / name for name in files]:
                try:
                    spec = read_spec(candidate)
                except (ValueError, OSError, zipfile.BadZipFile):
                    continue  # a damaged file: listed, its task unknown ("?")
                if spec is not None:
                    break
            entry = {"name": release.name, "folder": str(release), "versions": versions,
                     "files": files, "shadowed": release.name in seen,
                     "task": None if spec is None else spec.task,
                     "image_size": None if spec is None else spec.image_size}
            seen.add(release.name)
            found.append(entry)
    return found


def read_manifest(path: Path = MANIFEST) -> dict[str, str]:
    """{relative file path: sha256} of the released files this package version knows."""
    if not path.is_file():
        raise FileNotFoundError(f"no release manifest at {path}")
    record = json.loads(path.read_text())
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in files.items()):
        raise ValueError(f"{path}: expected {{\"files\": {{path: sha256}}}}")
    for name in files:
        if name.startswith("/") or ".." in Path(name).parts:
            raise ValueError(f"{path}: manifest path {name!r} leaves the models folder")
    return files


def write_manifest(root: Path, names: list[str], path: Path = MANIFEST) -> dict[str, str]:
    """The manifest of the release folders ``names`` under ``root`` (scripts/release_manifest.py)."""
    files = {}
    for name in names:
        for file in sorted((root / name).rglob("*")):
            if file.is_file():
                files[file.relative_to(root).as_posix()] = _sha256(file.read_bytes())
    path.write_text(json.dumps({"files": files}, indent=2) + "\n")
    return files


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fetch(source: str, relative: str, timeout: float) -> bytes:
    if urllib.parse.urlparse(source).scheme in ("http", "https"):
        url = source.rstrip("/") + "/" + urllib.parse.quote(relative)
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http(s) only)
            data = response.read(DOWNLOAD_LIMIT_BYTES + 1)
    elif "://" in source:
        raise ValueError(f"--from must be an http(s) URL or a folder, got {source[:200]!r}")
    else:
        file = Path(source) / relative
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing")
        with open(file, "rb") as handle:
            data = handle.read(DOWNLOAD_LIMIT_BYTES + 1)
    if len(data) > DOWNLOAD_LIMIT_BYTES:
        raise ValueError(f"{relative}: larger than {DOWNLOAD_LIMIT_BYTES} bytes")
    return data


def pull(source: str, names: list[str] | None = None, target: Path | None = None,
         manifest: Path = MANIFEST, timeout: float = 60.0, progress=print) -> list[str]:
    """Copy the manifest's files (of release folders ``names``, default all) from ``source`` into
    ``target``. Everything is fetched and checked in a staging folder first; a file whose sha256
    differs stops the pull with nothing written."""
    files = read_manifest(manifest)
    if names:
        unknown = sorted(set(names) - {Path(f).parts[0] for f in files})
        if unknown:
            raise ValueError(f"the manifest has no release named {unknown}")
        files = {f: h for f, h in files.items() if Path(f).parts[0] in names}
    target = Path(target or pull_target())
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pull-", dir=target))
    try:
        for index, (relative, expected) in enumerate(sorted(files.items()), start=1):
            data = _fetch(source, relative, timeout)
            if _sha256(data) != expected:
                raise ValueError(f"{relative}: sha256 {_sha256(data)[:12]}... differs from the "
                                 f"manifest's {expected[:12]}... (damaged or not this release); "
                                 "nothing was written")
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            (staging / relative).write_bytes(data)
            progress(f"{index}/{len(files)} {relative} ({len(data) / 1e6:.1f} MB, sha256 ok)")
        for release in sorted({Path(f).parts[0] for f in files}):
            destination = target / release
            if destination.exists():
                shutil.rmtree(destination)
            os.replace(staging / release, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(files)
