"""System metrics of the collector's host, sampled by the collector (never by training processes).

Every `interval` seconds: CPU and RAM (psutil); per GPU through NVML (the `nvidia-ml-py`
distribution, imported as `pynvml`): utilisation, memory used/total, power, temperature, clocks;
and per process on a GPU, its GPU memory (device `pid<PID>`, joined to ranks by the pid in their
run_start). Without an NVIDIA driver: one info line and CPU/RAM samples only, never a crash.

Samples become `system` events of a pseudo-run `system:<host>` in the same journal; the `system`
view joins them to the runs active on that host.
"""

from __future__ import annotations

import logging
import queue
import re
import secrets
import socket
import threading
import time
from typing import Any

from traintape.schemas.events import SYSTEM
from traintape.schemas.limits import MAX_RUN_ID_CHARS, SYSTEM_RUN_PREFIX
from traintape.schemas.wire import encode_body, encode_header

logger = logging.getLogger(__name__)


class SystemSampler:
    def __init__(self, interval: float, out: queue.SimpleQueue[tuple[bytes, bytes]]) -> None:
        self.interval = interval
        self.out = out
        self.host = socket.gethostname()
        self.run_id = system_run_id(self.host)
        self.source = secrets.token_hex(8)
        self._seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traintape-system", daemon=True)
        self._psutil = self._import_psutil()
        self._nvml = self._init_nvml()

    def _import_psutil(self) -> Any | None:
        try:
            import psutil
        except ImportError:
            logger.info(
                "system metrics: psutil is missing (pip install 'traintape[gpu]'); no CPU/RAM samples"
            )
            return None
        psutil.cpu_percent(None)  # the first call only starts the measurement window
        return psutil

    def _init_nvml(self) -> Any | None:
        try:
            import pynvml
        except ImportError:
            logger.info(
                "system metrics: nvidia-ml-py is missing (pip install 'traintape[gpu]'); no GPU samples"
            )
            return None
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded on a CPU host
            logger.info(
                "system metrics: no NVIDIA driver (%s); CPU/RAM samples only", type(exc).__name__
            )
            return None
        return pynvml

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample_once()
            except Exception as exc:  # a sampler must never take the collector down
                logger.warning("system metrics: sampling failed: %s: %s", type(exc).__name__, exc)

    def sample_once(self) -> None:
        bodies = [*self._cpu(), *self._gpus()]
        if not bodies:
            return
        n = len(bodies)
        now = time.time_ns()
        header = encode_header(self.run_id, 0, self.source, self._seq, n)
        body = encode_body([SYSTEM] * n, [now] * n, [None] * n, bodies)
        self._seq += n
        self.out.put((header, body))

    def _cpu(self) -> list[dict[str, Any]]:
        ps = self._psutil
        if ps is None:
            return []
        mem = ps.virtual_memory()
        values = {
            "cpu_percent": float(ps.cpu_percent(None)),
            "ram_used_bytes": float(mem.total - mem.available),
            "ram_total_bytes": float(mem.total),
            "ram_percent": float(mem.percent),
        }
        return [{"host": self.host, "device": "cpu", "values": values}]

    def _gpus(self) -> list[dict[str, Any]]:
        nv = self._nvml
        if nv is None:
            return []
        bodies = []
        for index in range(nv.nvmlDeviceGetCount()):
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            values: dict[str, float] = {}
            for key, read in (
                ("util_percent", lambda h: nv.nvmlDeviceGetUtilizationRates(h).gpu),
                ("mem_used_bytes", lambda h: nv.nvmlDeviceGetMemoryInfo(h).used),
                ("mem_total_bytes", lambda h: nv.nvmlDeviceGetMemoryInfo(h).total),
                ("power_w", lambda h: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),
                (
                    "temperature_c",
                    lambda h: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU),
                ),
                ("sm_clock_mhz", lambda h: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
                ("mem_clock_mhz", lambda h: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)),
            ):
                try:
                    values[key] = float(read(handle))
                except Exception:  # not every GPU reports every field (power on some boards)
                    continue
            bodies.append({"host": self.host, "device": f"gpu{index}", "values": values})
            try:
                procs = nv.nvmlDeviceGetComputeRunningProcesses(handle)
            except Exception:
                procs = []
            for proc in procs:
                used = getattr(proc, "usedGpuMemory", None)
                if used is not None:
                    bodies.append(
                        {
                            "host": self.host,
                            "device": f"pid{proc.pid}",
                            "values": {"gpu_mem_bytes": float(used), "gpu_index": float(index)},
                        }
                    )
        return bodies


def system_run_id(host: str) -> str:
    """`system:<host>`, with the host made a valid run id (ingest refuses anything else)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", host).lstrip("._-")[:MAX_RUN_ID_CHARS] or "host"
    return f"{SYSTEM_RUN_PREFIX}{name}"
