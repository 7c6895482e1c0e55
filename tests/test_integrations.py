"""The framework adapters as a package: `import traintape` loads no framework, each adapter
module loads its own, and a missing framework names the extra to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.test_imports import _modules_after

FRAMEWORKS = {"lightning", "pytorch_lightning", "transformers", "accelerate"}
ADAPTERS = {"lightning": "lightning", "transformers": "transformers", "accelerate": "accelerate"}


@pytest.mark.slow
def test_import_traintape_loads_no_framework() -> None:
    """`import traintape` (and its emitter) imports none of Lightning, Transformers, Accelerate."""
    assert not _modules_after("import traintape; from traintape import emitter") & FRAMEWORKS


@pytest.mark.slow
@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_a_missing_framework_names_the_extra(adapter: str) -> None:
    """Importing an adapter whose framework is not installed raises MissingBackendError saying
    `pip install 'traintape[<extra>]'`."""
    code = (
        f"import sys; sys.modules[{ADAPTERS[adapter]!r}] = None\n"
        "from traintape.errors import MissingBackendError\n"
        "try:\n"
        f"    import traintape.integrations.{adapter}\n"
        "except MissingBackendError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert f"pip install 'traintape[{adapter}]'" in out
