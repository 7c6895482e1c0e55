"""The public functions of traintape.emitter stay functions after every submodule is imported.

Importing `traintape.emitter.X` sets the package attribute `X` to the module: a submodule named
like a public function (watch.py once) silently broke the second `emitter.watch(...)` call.
"""

from __future__ import annotations

import importlib
import pkgutil

import traintape
import traintape.emitter


def test_importing_every_submodule_changes_no_public_name() -> None:
    for package in (traintape, traintape.emitter):
        before = {name: getattr(package, name) for name in package.__all__}
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{info.name}")
        for name, value in before.items():
            assert getattr(package, name) is value, f"{package.__name__}.{name} was replaced"
