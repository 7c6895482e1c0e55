"""`emitter.watch(model)`: training-health metrics computed on the device, logged without a sync.

(Not named watch.py: importing a submodule sets the package attribute of its name, and
`traintape.emitter.watch` must stay the function.)

At the end of every `every`-th backward pass (an autograd engine callback, so the gradients are
complete and, under DDP, averaged) it logs, at the emitter's current step:

    grad/global_norm        L2 norm of all gradients (fused `_foreach_norm`)
    grad/nonfinite          count of NaN/Inf gradient elements
    param/nonfinite         count of NaN/Inf parameter elements
    grad_norm/<name>        per-parameter L2 norms, with per_layer=True
    histogram events        of weights and gradients (64 bins), with histograms=True

The values stay on the device and go through the deferred path (deferred.py): no `.item()`.

"Every backward pass" counts passes, not optimizer steps: with gradient accumulation over K
micro-batches, `every=K` watches the complete gradients (the K-th micro-batch's) once per step. With AMP's GradScaler the
gradients are still scaled when backward ends, so the norms are the scaled ones, and a NaN/Inf
count above zero on a step the scaler skips is what the scaler saw too.
"""

from __future__ import annotations

import logging
from typing import Any

from traintape.emitter.port import Build, EmitterPort
from traintape.schemas.events import HISTOGRAM, METRICS

logger = logging.getLogger(__name__)

HIST_BINS = 64


class GradientWatcher:
    """Hooks on `model`'s parameters that log its training health through the run's port."""

    def __init__(
        self, port: EmitterPort, model: Any, every: int, per_layer: bool, histograms: bool
    ) -> None:
        if every < 1:
            msg = f"watch(every=...) must be >= 1, got {every}"
            raise ValueError(msg)
        self.port = port
        self.every = every
        self.per_layer = per_layer
        self.histograms = histograms
        self.params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if not self.params:
            msg = "watch(): the model has no parameters that require grad"
            raise ValueError(msg)
        self.backward_passes = 0
        self.error: Exception | None = None  # what stopped the watcher, if anything did
        self._queued_for: object = _NOT_QUEUED  # the backward pass a callback is queued for
        self._handles = [p.register_hook(self._on_grad) for _, p in self.params]

    def _on_grad(self, grad: Any) -> None:
        # The first gradient of a backward pass queues one callback for the end of that pass.
        # Keyed by the pass, not a flag: a pass that raised never runs its callbacks.
        task = _graph_task_id()
        if task != self._queued_for:
            self._queued_for = task
            _queue_callback(self._after_other_callbacks)

    def _after_other_callbacks(self) -> None:
        # DDP queues its finalize_backward (wait for the all-reduces, copy the averaged buckets
        # into .grad) once all its buckets are ready: after this callback was queued. Callbacks
        # queued while callbacks run go to the end of the list, so queueing once more puts the
        # reading after DDP's, and after any other hook's that queued during the pass.
        _queue_callback(self._on_backward_end)

    def _on_backward_end(self) -> None:
        self._queued_for = _NOT_QUEUED
        self.backward_passes += 1
        if self.backward_passes % self.every == 0:  # the every-th, 2*every-th, ... pass
            try:
                self.log_stats()
            except Exception as exc:  # the recorder failing must not fail the backward pass
                self.error = exc
                self.remove()
                logger.warning(
                    f"traintape: watch() stopped: {type(exc).__name__}: {exc} "
                    "(training goes on; the error is in the watcher's .error)"
                )

    def log_stats(self) -> None:
        import torch

        named = [(n, p.grad) for n, p in self.params if p.grad is not None]
        if not named:
            return
        port = self.port
        step = port.next_step()
        ts = _now()
        with torch.no_grad():
            grads = [g.detach() for _, g in named]
            device = grads[0].device
            # Half-precision gradients get float32 norms (a bf16 norm has 3 significant digits).
            low = any(g.element_size() < 4 and g.is_floating_point() for g in grads)
            norms = torch._foreach_norm(grads, 2, dtype=torch.float32 if low else None)
            if all(n.device == device and n.dtype == norms[0].dtype for n in norms):
                per_param = torch.stack(norms).to(torch.float64)  # two kernels, not one per norm
            else:  # a model spread over devices, or mixed dtypes
                per_param = torch.stack([n.to(device, torch.float64) for n in norms])
            global_norm = torch.linalg.vector_norm(per_param)
            grad_bad = _nonfinite_count(torch, grads, device)
            param_bad = _nonfinite_count(torch, [p.detach() for _, p in self.params], device)
            keys = ["grad/global_norm", "grad/nonfinite", "param/nonfinite"]
            stacked = torch.stack([global_norm, grad_bad, param_bad])
            if self.per_layer:
                keys += [f"grad_norm/{name}" for name, _ in named]
                stacked = torch.cat([stacked, per_param])
            port.deferred.add(ts, step, METRICS, stacked, _keyed(keys))
            if self.histograms:
                for name, tensor in [
                    *((f"weights/{n}", p) for n, p in self.params),
                    *((f"grads/{n}", g) for n, g in named),
                ]:
                    self._histogram(name, tensor.detach(), ts, step)

    def _histogram(self, name: str, tensor: Any, ts: int, step: int) -> None:
        import torch

        values = histogram_values(torch, tensor)
        if values is None:
            return

        def build(vals: list[float], key: str = name) -> dict[str, Any]:
            return {"key": key, "min": vals[0], "max": vals[1], "counts": vals[2:]}

        self.port.deferred.add(ts, step, HISTOGRAM, values, build)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _keyed(keys: list[str]) -> Build:
    return lambda values: dict(zip(keys, values))


_NOT_QUEUED = object()
HIST_CHUNK = 1 << 24
"""Elements binned at a time: the temporaries of a histogram stay under ~400 MiB whatever the
tensor's size (a 1-billion-element embedding in float64 at once would need tens of GiB)."""


def histogram_values(torch: Any, tensor: Any) -> Any | None:
    """[min, max, 64 counts] of the finite elements of `tensor`, as one float64 tensor on its
    device; None for an empty tensor.

    Built from sync-free ops only: no boolean indexing, no auto-range histc, no bincount (each
    of those reads a size or a bound back to the host). NaN and ±Inf are left out of the counts.
    """
    flat = tensor.reshape(-1)
    if flat.numel() == 0:
        return None
    chunks = flat.split(HIST_CHUNK)  # views: no copy
    finite_min = [torch.where(torch.isfinite(c), c, torch.inf).min() for c in chunks]
    finite_max = [torch.where(torch.isfinite(c), c, -torch.inf).max() for c in chunks]
    lo = torch.stack(finite_min).min().to(torch.float64)
    hi = torch.stack(finite_max).max().to(torch.float64)
    width = torch.clamp(hi - lo, min=1e-12)
    counts = torch.zeros(HIST_BINS, dtype=torch.int64, device=flat.device)
    for chunk in chunks:
        x = chunk.to(torch.float64)
        index = ((x - lo) / width * HIST_BINS).nan_to_num(0).clamp(0, HIST_BINS - 1).long()
        counts.scatter_add_(0, index, torch.isfinite(x).long())  # int64 counts
    return torch.cat([torch.stack([lo, hi]), counts.to(torch.float64)])


_BUCKET_BYTES = 32 << 20


def _nonfinite_count(torch: Any, tensors: list[Any], device: Any) -> Any:
    """NaN/Inf elements in `tensors`, as a float64 0-d tensor on `device`, without a sync.

    Tensors are concatenated into buckets of up to 32 MiB per device and dtype, so a model with
    hundreds of parameter tensors costs a few kernels per bucket instead of three per tensor
    (kernel launches, not arithmetic, are what a health check costs), for 32 MiB of memory.
    """
    buckets: dict[tuple[Any, Any], list[list[Any]]] = {}
    sizes: dict[tuple[Any, Any], int] = {}
    for t in tensors:
        key = (t.device, t.dtype)
        nbytes = t.numel() * t.element_size()
        groups = buckets.setdefault(key, [[]])
        if groups[-1] and sizes.get(key, 0) + nbytes > _BUCKET_BYTES:
            groups.append([])
            sizes[key] = 0
        groups[-1].append(t.reshape(-1))
        sizes[key] = sizes.get(key, 0) + nbytes
    counts = []
    for groups in buckets.values():
        for group in groups:
            flat = group[0] if len(group) == 1 else torch.cat(group)
            counts.append(torch.isfinite(flat).logical_not_().sum().to(device))
    if not counts:
        return torch.zeros((), dtype=torch.float64, device=device)
    return torch.stack(counts).sum().to(torch.float64)


def _graph_task_id() -> int | None:
    """Which backward pass is running (None on a torch without this private function)."""
    import torch

    get = getattr(torch._C, "_current_graph_task_id", None)
    return get() if get is not None else None


def _queue_callback(callback: Any) -> None:
    from torch.autograd import Variable

    Variable._execution_engine.queue_callback(callback)


def _now() -> int:
    import time

    return time.time_ns()
