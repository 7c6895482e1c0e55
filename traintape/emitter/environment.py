"""Who this process is (rank, world size, run id) and what it runs on, settled once at `init`.

Nothing here imports torch: a torch that the training script already imported is read from
`sys.modules`, so `import traintape` stays light.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
from typing import Any

from traintape import procinfo
from traintape.placement import Placement, _initialized_dist
from traintape.schemas.limits import MAX_RUN_ID_CHARS, RUN_ID_PATTERN
from traintape.schemas.wire import HEARTBEAT_S


def new_run_id() -> str:
    return secrets.token_hex(6)


def resolve_run_id(explicit: str | None, where: Placement) -> str:
    """One run id shared by every rank of a job.

    Order: the argument, $TRAINTAPE_RUN_ID, a digest of torchrun's $TORCHELASTIC_RUN_ID (unique
    per job under `--standalone` or `--rdzv-id`), a broadcast from rank 0 over an initialised
    process group, else (a single process) a fresh id.
    """
    if explicit:
        return check_run_id(explicit, "run_id")
    env_id = os.environ.get("TRAINTAPE_RUN_ID")
    if env_id:
        return check_run_id(env_id, "$TRAINTAPE_RUN_ID")
    elastic = os.environ.get("TORCHELASTIC_RUN_ID")
    if elastic and elastic != "none":
        # Not the user's choice (any string torchrun was given): a digest, the same on every
        # rank, is always a valid id.
        return hashlib.sha1(elastic.encode()).hexdigest()[:12]
    dist = _initialized_dist()
    if dist is not None and where.world_size > 1:
        box = [new_run_id() if where.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return str(box[0])
    if where.world_size > 1:
        msg = (
            f"rank {where.rank} of {where.world_size} cannot agree on a run id with the other "
            "ranks: set TRAINTAPE_RUN_ID for all ranks, run under `torchrun --standalone` or "
            "with `--rdzv-id`, or call traintape's init() after torch.distributed.init_process_group()"
        )
        raise RuntimeError(msg)
    return new_run_id()


def check_run_id(run_id: Any, where: str) -> str:
    """`run_id` if it can name a run's folder in every table, else ValueError saying what can."""
    if not isinstance(run_id, str) or RUN_ID_PATTERN.fullmatch(run_id) is None:
        shown = repr(run_id) if len(repr(run_id)) <= 60 else repr(run_id)[:57] + "..."
        msg = (
            f"{where} {shown} is not a valid run id: use 1 to {MAX_RUN_ID_CHARS} ASCII letters, "
            "digits, '.', '_' or '-', starting with a letter or digit"
        )
        raise ValueError(msg)
    return run_id


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, timeout=5, check=True, text=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip()


def git_state() -> dict[str, Any]:
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {}
    diff = _git("diff", "HEAD") or ""
    return {
        "git_commit": commit,
        "git_branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
        "git_dirty": bool(diff) or bool(_git("status", "--porcelain", "--untracked-files=no")),
        "git_diff_sha1": hashlib.sha1(diff.encode()).hexdigest() if diff else None,
    }


def torch_state() -> dict[str, Any]:
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    state: dict[str, Any] = {"torch": getattr(torch, "__version__", None)}
    version = getattr(torch, "version", None)
    state["cuda"] = getattr(version, "cuda", None)
    try:
        if torch.backends.cudnn.is_available():
            state["cudnn"] = torch.backends.cudnn.version()
        # Asking torch for a name initialises CUDA in this process (a fork can then no longer
        # use it): only when the script did that already; otherwise NVML, which does not.
        if torch.cuda.is_initialized():
            state["gpus"] = [
                torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            ]
    except Exception:  # a broken driver must not stop training from starting
        pass
    if "gpus" not in state:
        names = nvml_gpu_names()
        if names:
            state["gpus"] = names
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        state["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return state


def nvml_gpu_names() -> list[str] | None:
    """Names of the host's NVIDIA GPUs through NVML (nvidia-ml-py), or None without it/a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        names = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            names.append(name.decode() if isinstance(name, bytes) else str(name))
        return names
    except Exception:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def config_hash(config: dict[str, Any]) -> str:
    """Equal configs hash alike whatever their key order: runs with the same config group."""
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def environment(where: Placement) -> dict[str, Any]:
    env: dict[str, Any] = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "rank": where.rank,
        "local_rank": where.local_rank,
        "world_size": where.world_size,
        # How the collector tells this process gone (`crashed`): see traintape.procinfo.
        "liveness": {**(procinfo.identity() or {}), "heartbeat_s": HEARTBEAT_S},
    }
    env.update(torch_state())
    env.update(git_state())
    return env
