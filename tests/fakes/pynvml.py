"""A stand-in for nvidia-ml-py's `pynvml` on a machine with no NVIDIA driver (tests only).

Put this folder first on the collector's PYTHONPATH: it reports one GPU with fixed readings and,
as its compute processes, the pids in $FAKE_NVML_PIDS (comma-separated), each using 1 GiB.
Only what traintape.collector.system calls is here; the board has no power sensor, as some do.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
GIB = 1 << 30


class NVMLError(Exception):
    pass


def nvmlInit() -> None:
    pass


def nvmlShutdown() -> None:
    pass


def nvmlDeviceGetCount() -> int:
    return 1


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    return index


def nvmlDeviceGetName(handle: int) -> str:
    return "NVIDIA H100 80GB HBM3"


def nvmlDeviceGetUtilizationRates(handle: int) -> SimpleNamespace:
    return SimpleNamespace(gpu=87, memory=40)


def nvmlDeviceGetMemoryInfo(handle: int) -> SimpleNamespace:
    return SimpleNamespace(used=30 * GIB, total=80 * GIB, free=50 * GIB)


def nvmlDeviceGetPowerUsage(handle: int) -> int:
    raise NVMLError("Not Supported")


def nvmlDeviceGetTemperature(handle: int, sensor: int) -> int:
    return 61


def nvmlDeviceGetClockInfo(handle: int, clock: int) -> int:
    return {NVML_CLOCK_SM: 1980, NVML_CLOCK_MEM: 2619}[clock]


def nvmlDeviceGetComputeRunningProcesses(handle: int) -> list[SimpleNamespace]:
    pids = [int(p) for p in os.environ.get("FAKE_NVML_PIDS", "").split(",") if p]
    return [SimpleNamespace(pid=pid, usedGpuMemory=GIB) for pid in pids]
