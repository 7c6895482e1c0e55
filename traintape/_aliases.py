"""Import paths of the previous layout, kept working for one release.

`traintape.history` became `traintape.read.history`, and so on (see `MOVED`). Importing an old
path returns the module at its new place (the same object, so patches and `isinstance` agree) and
warns once with a DeprecationWarning that names the new path. Only a meta path finder can do
that without leaving a file behind at each old place.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Any

MOVED = {
    "traintape.checkpoints": "traintape.checkpoint",
    "traintape.commands": "traintape.cli",
    "traintape.commands.collector": "traintape.cli.collector",
    "traintape.commands.history": "traintape.cli.read",
    "traintape.commands.output": "traintape.cli.output",
    "traintape.collector.sink_process": "traintape.sinks.process",
    "traintape.collector.sink_runner": "traintape.sinks.runner",
    "traintape.emitter.checkpoint": "traintape.emitter.checkpointing.writer",
    "traintape.emitter.checkpoint_files": "traintape.emitter.checkpointing.files",
    "traintape.emitter.deletions": "traintape.emitter.checkpointing.deletions",
    "traintape.emitter.snapshot": "traintape.emitter.checkpointing.snapshot",
    "traintape.history": "traintape.read.history",
    "traintape.plot": "traintape.read.plot",
    "traintape.store": "traintape.read.store",
}
"""Old module path -> where it lives now."""


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new
        self.spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} moved to {self.new}; the old path goes away in the next release",
            DeprecationWarning,
            stacklevel=2,  # the importer's line: warn() skips importlib's own frames
        )
        module = importlib.import_module(self.new)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """The module ran under its new name: nothing runs again. The import system has just
        stamped the alias's spec on it; give it back its own, so `reload`, pickling and child
        processes see one name."""
        module.__spec__ = self.spec
        module.__loader__ = self.spec.loader if self.spec is not None else None


class _MovedModules(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install() -> None:
    """Idempotent: one finder per interpreter, ahead of the path finders."""
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules())
