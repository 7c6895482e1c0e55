"""The framework adapters as a package: `import traintape` loads no framework, each adapter
module loads its own, a missing framework names the extra to install, and the W&B-style image
arguments they share are checked."""

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


def test_images_given_as_wandbs_loggers_take_them_are_checked() -> None:
    """`log_image(key, images, caption=[...])` (Lightning's WandbLogger, Accelerate's W&B
    tracker): a list or a batch of images, one caption per image (made str, as W&B does);
    anything else is refused with what to pass."""
    import numpy as np

    from traintape.integrations._run import sample_images

    pixels = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(TypeError, match="must be a list of images, got str"):
        sample_images("log_image()", "x.png", {})
    with pytest.raises(TypeError, match="caption= for images, not boxes"):
        sample_images("log_image()", [pixels], {"boxes": [{}]})
    with pytest.raises(ValueError, match=r"one caption per image \(2\)"):
        sample_images("log_image()", [pixels, pixels], {"caption": ["a"]})
    images = sample_images("log_image()", np.stack([pixels, pixels]), {"caption": [1, None]})
    assert [(i.caption, i.width, i.height) for i in images] == [("1", 4, 4), (None, 4, 4)]
