"""Run code around the first import of a module (the package's two uses: register custom Keras
objects once Keras loads; drop TensorFlow's start-up lines in the CLI). Standard library only:
imported by the package's ``__init__``."""

from __future__ import annotations

import sys
from collections.abc import Callable


class WrapFirstImport:
    """A meta-path finder: the first import of ``name`` runs as ``around(execute)``, where
    ``execute()`` is the module's own loading; the finder then removes itself."""

    def __init__(self, name: str, around: Callable[[Callable[[], None]], None]):
        self.name, self.around = name, around

    def find_spec(self, name, path=None, target=None):
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        from importlib.util import find_spec

        spec = find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module
        spec.loader.exec_module = lambda module: self.around(lambda: execute(module))
        return spec


def wrap_first_import(name: str, around: Callable[[Callable[[], None]], None]) -> bool:
    """Install the hook unless ``name`` is already imported or hooked (False then)."""
    if name in sys.modules or any(isinstance(f, WrapFirstImport) and f.name == name
                                  for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, WrapFirstImport(name, around))
    return True
