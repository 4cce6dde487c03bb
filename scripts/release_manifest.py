"""Write braintumor_tf/release_manifest.json: the sha256 of every file of the released models
(savedmodels/classifier, savedmodels/segmenter), which `braintumor-tf models pull` checks
downloads against. Run after changing a release; tests/test_released_models.py fails until the
manifest matches the committed files.

Run:  python scripts/release_manifest.py
"""

from pathlib import Path

from braintumor_tf.export.released import MANIFEST, write_manifest

RELEASES = ["classifier", "segmenter"]

if __name__ == "__main__":
    files = write_manifest(Path("savedmodels"), RELEASES)
    print(f"{MANIFEST}: {len(files)} files of {', '.join(RELEASES)}")
