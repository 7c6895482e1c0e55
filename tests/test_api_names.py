"""Public names: the functions of traintape.emitter stay functions after every submodule is
imported, and module paths of the previous layout keep working.

Importing `traintape.emitter.X` sets the package attribute `X` to the module: a submodule named
like a public function (watch.py once) silently broke the second `emitter.watch(...)` call.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import traintape
import traintape.emitter
from traintape._aliases import MOVED


def test_importing_every_submodule_changes_no_public_name() -> None:
    for package in (traintape, traintape.emitter):
        before = {name: getattr(package, name) for name in package.__all__}
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{info.name}")
        for name, value in before.items():
            assert getattr(package, name) is value, f"{package.__name__}.{name} was replaced"


@pytest.mark.slow
def test_old_module_paths_still_import_the_moved_module() -> None:
    """Each path of the previous layout imports the module at its new place (the very same
    object, under its own name) and says where it went, for one release. In a fresh interpreter:
    here the new modules are imported already."""
    code = f"""
import importlib, warnings
warnings.simplefilter("always")
for old, new in {dict(MOVED)!r}.items():
    with warnings.catch_warnings(record=True) as caught:
        module = importlib.import_module(old)
    assert module is importlib.import_module(new), (old, module)
    assert module.__spec__.name == new, (old, module.__spec__.name)
    said = [str(w.message) for w in caught if w.category is DeprecationWarning]
    assert any(new in m for m in said), (old, said)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
