"""Named points where the reliability tests kill this process on purpose.

``BRAINTUMOR_TF_KILL_AT=<point>:<n>`` sends SIGKILL to the process the n-th time it reaches
``<point>`` (n defaults to 1). That is how a test stops a run exactly in the middle of a
checkpoint write instead of hoping a timer lands there. Unset, ``reached`` costs one dict lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENVIRONMENT_VARIABLE = "BRAINTUMOR_TF_KILL_AT"
POINTS = ("train_batch", "backup_weights_written", "backup_metadata_written", "best_saved",
          "history_written", "finish", "export_written")
_times_reached: Counter = Counter()


def reached(point: str) -> None:
    spec = os.environ.get(ENVIRONMENT_VARIABLE)
    if not spec:
        return
    name, _, count = spec.partition(":")
    if name != point:
        return
    _times_reached[point] += 1
    if _times_reached[point] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
