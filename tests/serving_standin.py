"""TF Serving's REST predict contract, answered from SavedModels by the package's own development
stand-in (braintumor_tf/serving/local.py), for the REST client's end-to-end tests."""

from __future__ import annotations

import contextlib

from braintumor_tf.serving import local


class _Requests:
    """``StandIn.requests``: every request body the stand-in received."""

    def __get__(self, instance, owner):
        return local.requests_seen()


class StandIn:
    requests = _Requests()


@contextlib.contextmanager
def serving_stand_in(models: dict):
    """Serve ``{name: loaded SavedModel}``; yields the base URL."""
    with local.serving({name: (1, model) for name, model in models.items()}) as url:
        yield url
