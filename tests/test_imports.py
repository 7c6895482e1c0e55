"""What importing costs: `import traintape` and the collector stay free of heavy packages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import traintape
from tests.conftest import REPO, CollectorProcess, query, wait_for

HEAVY = ("torch", "mlflow", "wandb", "tensorboard", "matplotlib")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {name.split(".")[0] for name in out.split()}


@pytest.mark.slow
def test_import_traintape_is_light() -> None:
    """`import traintape` in a training process imports none of torch, mlflow, wandb,
    tensorboard, matplotlib, nor the read side's DuckDB and pyarrow (until `connect` is used),
    nor numpy, Pillow or pyarrow for the media types (until an Image or Table is made)."""
    loaded = _modules_after("import traintape; from traintape import emitter")
    assert not loaded & {*HEAVY, "duckdb", "pyarrow"}
    loaded = _modules_after("import traintape; traintape.Image, traintape.Table, traintape.Text")
    assert not loaded & {*HEAVY, "duckdb", "pyarrow", "numpy", "PIL", "pandas"}
    assert "duckdb" in _modules_after("import traintape; traintape.connect")


def test_every_error_has_one_root() -> None:
    """Every exception class traintape defines derives from TraintapeError, and the package
    exports each of traintape.errors (the CLI catches the root once)."""
    import importlib
    import inspect
    import pkgutil

    from traintape.errors import TraintapeError

    for info in pkgutil.walk_packages(traintape.__path__, "traintape."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, Exception)
                and not issubclass(value, Warning)
                and value.__module__.startswith("traintape")
                and not name.startswith("_")
            ):
                assert issubclass(value, TraintapeError), f"{info.name}.{name}"
                if value.__module__ == "traintape.errors":
                    assert getattr(traintape, name, None) is value, f"traintape.{name}"


@pytest.mark.slow
def test_collector_modules_never_import_torch() -> None:
    """The collector's code path (server, its materializer and sink processes with every sink,
    sampler, CLI) does not import torch."""
    loaded = _modules_after(
        "import traintape.collector.server, traintape.cli, traintape.read.store, "
        "traintape.collector.materializer_process, traintape.sinks.process, "
        "traintape.sinks.runner, traintape.sinks.tensorboard, traintape.sinks.mlflow, "
        "traintape.sinks.wandb, traintape.collector.materializer"
    )
    assert "torch" not in loaded


def test_public_names() -> None:
    """The package's __all__ is its documented public surface, and every name exists."""
    for name in traintape.__all__:
        assert hasattr(traintape, name), name
    assert {"emitter", "connect", "Emitter", "FinishReport"} <= set(traintape.__all__)


@pytest.mark.slow
def test_long_store_path_still_reaches_the_collector(tmp_path: Path) -> None:
    """A store path too long for a Unix socket name falls back to a derived socket both sides agree on."""
    from traintape import emitter

    store = tmp_path / ("x" * 60) / ("y" * 60) / "store"
    coll = CollectorProcess(store).start()
    try:
        assert len(str(store)) > 110 and not coll.address.startswith(f"ipc://{store}")
        run = emitter.init(project="long", store=store)
        emitter.log({"x": 1.0}, step=0)
        assert emitter.finish(timeout=20).complete
        wait_for(store, f"SELECT count(*) FROM metrics WHERE run_id = '{run.run_id}'", 1)
    finally:
        coll.close()


@pytest.fixture(scope="module")
def one_value_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding one run with one value (loss 0.5 at step 7), logged through a collector."""
    from traintape.emitter import Emitter

    store = tmp_path_factory.mktemp("query") / "store"
    collector = CollectorProcess(store).start()
    try:
        run = Emitter("q", store=store)
        run.log({"loss": 0.5}, step=7)
        assert run.finish(timeout=30).complete
        wait_for(store, "SELECT count(*) FROM metrics", 1)
    finally:
        collector.close()
    return store


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_query_command_formats(one_value_store: Path, fmt: str) -> None:
    """`traintape query` prints the rows as a table, CSV or JSON; bad SQL is an error, not a trace."""
    store = one_value_store
    cmd = [
        sys.executable,
        "-m",
        "traintape.cli",
        "query",
        "SELECT step, value FROM metrics",
        "--store",
        str(store),
        "--format",
        fmt,
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout
    expected = {
        "table": "step  value\n----  -----\n7     0.5\n",
        "csv": "step,value\n7,0.5\n",
        "json": '[\n {\n  "step": 7,\n  "value": 0.5\n }\n]\n',
    }
    assert out == expected[fmt]
    bad = subprocess.run(
        [*cmd[:4], "SELEC nonsense", "--store", str(store)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert (
        bad.returncode == 1 and "traintape query:" in bad.stderr and "Traceback" not in bad.stderr
    )
    assert query(store, "SELECT count(*) FROM runs") == [(1,)]


@pytest.mark.slow
def test_commands_without_a_store_say_what_to_do(tmp_path: Path) -> None:
    """A missing store is a one-line error naming `traintape serve`, not a traceback."""
    out = subprocess.run(
        [sys.executable, "-m", "traintape.cli", "runs", "--store", str(tmp_path / "nope")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and "traintape serve" in out.stderr and "Traceback" not in out.stderr
