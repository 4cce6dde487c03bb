"""Brain MRI tumour classification and segmentation: from a folder of slices to served models."""

import os as _os

# OpenCV's own decoded-size guard (read once, when cv2 is first imported) at the package's pixel
# limit, for formats whose header data.image_header does not parse.
_os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS",
                       _os.environ.get("BRAINTUMOR_TF_MAX_IMAGE_PIXELS") or "50000000")
