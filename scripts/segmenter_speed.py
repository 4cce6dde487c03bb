"""Training cost per image of UNet variants on this machine: which encoder and size fit a budget.

Each spec is ENCODER:SIZE:DECODER (decoder widths comma-separated). Times 3 ``train_on_batch``
steps of batch 16 after 2 warm-up steps, float32, random pixels and masks; run it with nothing
else on the cores (the numbers in docs/RESULTS.md were taken so).

    python scripts/segmenter_speed.py resnet50:128:256,128,64,32,16 mobilenetv2:224:64,48,32,16,8
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402

from braintumor_tf.models.macs import count_macs_nested  # noqa: E402
from braintumor_tf.models.unet import build_unet  # noqa: E402

BATCH = 16
TRAIN_IMAGES = 1193  # the patient-level training split of pkdarabi


def main(specs: list[str]) -> int:
    if not specs:
        print(__doc__)
        return 2
    for spec in specs:
        encoder, size, decoder = spec.split(":")
        size, decoder = int(size), tuple(int(v) for v in decoder.split(","))
        model = build_unet(size, 1, encoder, "none", decoder, encoder_bn_momentum=0.9)
        model.compile("adam", "binary_crossentropy")
        rng = np.random.default_rng(0)
        pixels = rng.uniform(0, 255, (BATCH, size, size, 1)).astype("float32")
        masks = (rng.random((BATCH, size, size, 1)) > 0.9).astype("float32")
        for _ in range(2):
            model.train_on_batch(pixels, masks)
        start = time.perf_counter()
        for _ in range(3):
            model.train_on_batch(pixels, masks)
        per_image = (time.perf_counter() - start) / 3 / BATCH
        print(f"{spec}: {model.count_params() / 1e6:.1f} M parameters, "
              f"{count_macs_nested(model) / 1e9:.2f} GMAC, train {per_image * 1000:.0f} ms/image "
              f"-> {TRAIN_IMAGES * per_image:.0f} s per epoch of {TRAIN_IMAGES} images", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
