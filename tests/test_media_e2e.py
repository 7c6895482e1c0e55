"""Media in `log()` end to end: two rank processes log 1,000 images through a real collector,
and every one is read back from the store through the `media` view, byte for byte what an
independent PNG decoder makes of the logged pixels; a table and an image logged twice too; the
CLI lists them; `traintape.wandb.log` stores W&B's Image and Table the same way."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image as PILImage

from tests.conftest import REPO, CollectorProcess, query, wait_for
from tests.workers.media_ranks import TABLE, sample
from traintape.cli.main import main

pytestmark = [pytest.mark.slow, pytest.mark.share_collector]

IMAGES_PER_RANK = 500
WORKER = REPO / "tests" / "workers" / "media_ranks.py"


def _decoded(path: Path) -> np.ndarray:
    with PILImage.open(path) as image:
        assert image.format == "PNG"
        return np.array(image)


@pytest.fixture(scope="module")
def two_ranks(shared_collector: CollectorProcess) -> tuple[Path, str]:
    """One run of two rank processes, each logging IMAGES_PER_RANK images (rank 0: a table and
    one image under two keys as well), read back once both ended."""
    store, run_id = shared_collector.store, "media-e2e-run"
    env = {**os.environ, "WORLD_SIZE": "2", "TRAINTAPE_RUN_ID": run_id, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, str(WORKER), "--store", str(store), "--images", str(IMAGES_PER_RANK)]
    procs = [subprocess.Popen(argv, env={**env, "RANK": str(rank)}, cwd=REPO) for rank in range(2)]
    assert [p.wait(timeout=240) for p in procs] == [0, 0]
    expected = 2 * IMAGES_PER_RANK + 3
    wait_for(store, f"SELECT count(*) FROM media WHERE run_id = '{run_id}'", expected, 60)
    return store, run_id


def test_every_image_of_two_ranks_is_stored_and_reads_back_identical(
    two_ranks: tuple[Path, str],
) -> None:
    """Each of the 1,000 images logged from 2 ranks is one `media` row at its step with the
    contract's fields, its object's sha256 is its content's, and Pillow decodes it to exactly
    the pixels logged, copied or handed over (odd steps); the numbers of the same calls are all
    in `metrics`."""
    store, run_id = two_ranks
    rows = query(
        store,
        """SELECT rank, step, path, bytes, sha256, width, height, channels, caption, kind
           FROM media WHERE run_id = ? AND name = 'samples/pred' ORDER BY rank, step""",
        run_id,
    )
    assert [(r[0], r[1]) for r in rows] == [
        (rank, step) for rank in range(2) for step in range(IMAGES_PER_RANK)
    ]
    for rank, step, path, size, sha256, width, height, channels, caption, kind in rows:
        data = (store / path).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (size, sha256)
        assert (width, height, channels, caption, kind) == (256, 256, 3, f"{rank}/{step}", "image")
        assert np.array_equal(_decoded(store / path), sample(rank, step)), (rank, step)
    sql = "SELECT count(*) FROM metrics WHERE run_id = ? AND key = 'loss'"
    assert query(store, sql, run_id) == [(2 * IMAGES_PER_RANK,)]


def test_an_image_logged_twice_is_one_object_and_a_table_round_trips(
    two_ranks: tuple[Path, str],
) -> None:
    """The same pixels under two keys make two events and one stored object (the first
    sample's, already stored); the table's Parquet object reads back as the rows logged, with
    its rows and columns in the view; the Text of the same call is a text event."""
    store, run_id = two_ranks
    dups = query(
        store,
        "SELECT name, sha256 FROM media WHERE run_id = ? AND name LIKE 'dup/%' ORDER BY name",
        run_id,
    )
    first = query(
        store,
        "SELECT sha256 FROM media WHERE run_id = ? AND rank = 0 AND step = 0 AND kind = 'image'",
        run_id,
    )
    assert [d[0] for d in dups] == ["dup/a", "dup/b"]
    assert {d[1] for d in dups} == {first[0][0]}  # one object for the three events
    objects = list((store / "artifacts" / "objects").glob("*/*"))
    assert len(objects) == len({p.name for p in objects})  # one file per content
    ((path, rows, columns, step),) = query(
        store,
        """SELECT path, "rows", "columns", step FROM media
           WHERE run_id = ? AND kind = 'table'""",
        run_id,
    )
    assert (rows, columns, step) == (3, list(TABLE), IMAGES_PER_RANK + 1)
    assert pq.read_table(store / path).to_pydict() == TABLE
    sql = (
        "SELECT json_extract_string(body, '$.text') FROM events WHERE run_id = ? AND kind = 'text'"
    )
    assert query(store, sql, run_id) == [("done",)]


def test_show_and_artifacts_list_the_media(
    two_ranks: tuple[Path, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`traintape show` has a media section (per key: kind, count, steps, last size),
    `traintape artifacts RUN` lists every media event with its metadata, and `artifacts get`
    fetches a key's latest image as <key with "/" as "_">.png."""
    store, run_id = two_ranks
    assert main(["show", run_id, "--store", str(store)]) == 0
    out = capsys.readouterr().out
    media = out[out.index("\nmedia") :]
    assert "samples/pred" in media and "image" in media and str(2 * IMAGES_PER_RANK) in media
    assert "table" in media and "3 rows" in media and "256x256x3" in media
    assert main(["artifacts", run_id, "--store", str(store), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + 2 * IMAGES_PER_RANK + 3
    assert sum('""media"":""image""' in line for line in lines) == 2 * IMAGES_PER_RANK + 2
    get = ["artifacts", "get", run_id, "samples/pred", "--rank", "1", "-o", str(tmp_path)]
    assert main([*get, "--store", str(store)]) == 0
    fetched = Path(capsys.readouterr().out.strip())
    assert fetched == tmp_path / "samples_pred.png"
    assert np.array_equal(_decoded(fetched), sample(1, IMAGES_PER_RANK - 1))


def test_wandb_log_stores_wandb_images_and_tables(
    shared_collector: CollectorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`import traintape.wandb as wandb`: `wandb.log({"img": wandb.Image(array), "t":
    wandb.Table(...)})` stores the image (W&B's CHW tensor and HWC array layouts) and the table
    as media at the row's step."""
    import traintape.wandb as wandb

    store = shared_collector.store
    monkeypatch.setenv("TRAINTAPE_STORE", str(store))
    run = wandb.init(project="media-wandb")
    pixels = sample(1, 42)
    table = wandb.Table(columns=["a", "b"])
    table.add_data(1, "x")
    wandb.log({"loss": 0.5})
    wandb.log({"img": wandb.Image(pixels, caption="w"), "t": table, "loss": 0.25})
    wandb.finish()
    sql = "SELECT name, step, path, caption FROM media WHERE run_id = ? ORDER BY name"
    wait_for(store, f"SELECT count(*) FROM media WHERE run_id = '{run.id}'", 2)
    (img, tab) = query(store, sql, run.id)
    assert (img[0], img[1], img[3], tab[0], tab[1]) == ("img", 1, "w", "t", 1)
    assert np.array_equal(_decoded(store / img[2]), pixels)
    assert pq.read_table(store / tab[2]).to_pydict() == {"a": [1], "b": ["x"]}
