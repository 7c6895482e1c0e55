"""The snapshot of a checkpoint, on the caller's thread: every tensor of a state copied into CPU
buffers that are reused from save to save, and fresh containers around them.

Buffers are keyed by a tensor's place in the state (a path of keys and indices), so the same
model saved again reuses its buffers when shape, dtype and strides match. CUDA tensors go to
pinned buffers with non-blocking copies and one sync per stream at the end, never a clone on
the GPU; CPU tensors are copied with one `_foreach_copy_` call. Tensors that share memory (tied
weights) get one copy, so the file keeps them shared, as torch.save would.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

_IMMUTABLE = frozenset((type(None), bool, int, float, complex, str, bytes, range))


class SnapshotSlot:
    """One set of CPU buffers reused from save to save: place in the state -> (geometry, buffer,
    pinned)."""

    __slots__ = ("buffers",)

    def __init__(self) -> None:
        self.buffers: dict[tuple[Any, ...], tuple[tuple[Any, ...], Any, bool]] = {}


class Snapshotter:
    """Copies one state into a slot: a real CPU copy of every tensor, fresh containers."""

    def __init__(self, torch: Any, slot: SnapshotSlot) -> None:
        self.torch = torch
        self.slot = slot
        self.old = slot.buffers
        self.new: dict[tuple[Any, ...], tuple[tuple[Any, ...], Any, bool]] = {}
        # Tensors that are views of the same memory (tied weights: state_dict() detaches each
        # name separately) get one copy, so the file keeps them shared, as torch.save would.
        self.shared: dict[int, tuple[tuple[Any, ...], Any]] = {}  # data_ptr -> (geometry, copy)
        self.dst: list[Any] = []
        self.src: list[Any] = []
        self.streams: set[Any] = set()
        self.immutable = _IMMUTABLE | {torch.dtype, torch.device, torch.layout, torch.Size}
        self.tensor = torch.Tensor
        self.parameter = torch.nn.Parameter
        self.plain = (torch.Tensor, torch.nn.Parameter)
        self.strided = torch.strided

    def take(self, state: Any) -> Any:
        torch = self.torch
        with torch.no_grad():  # copy_ from tensors that require grad, without detach()
            out = self._copy(state, ())
            if self.dst:  # CPU tensors: one call copies them all, no Python loop per tensor
                try:
                    torch._foreach_copy_(self.dst, self.src)
                except (AttributeError, RuntimeError, TypeError):
                    for dst, src in zip(self.dst, self.src):
                        dst.copy_(src)
        for device in self.streams:  # device -> pinned copies were queued on these streams
            torch.cuda.current_stream(device).synchronize()
        self.slot.buffers = self.new  # buffers of places gone from the state are let go
        return out

    def _copy(self, obj: Any, path: tuple[Any, ...]) -> Any:
        kind = type(obj)
        if kind in self.immutable:
            return obj
        if isinstance(obj, self.tensor):
            return self._tensor(obj, path)
        if kind is dict:
            return {k: self._copy(v, (*path, k)) for k, v in obj.items()}
        if kind is list:
            return [self._copy(v, (*path, i)) for i, v in enumerate(obj)]
        if kind is tuple:
            return tuple([self._copy(v, (*path, i)) for i, v in enumerate(obj)])
        if isinstance(obj, dict):
            new: Any = copy.copy(obj)  # keeps the type and attributes (a state_dict's `_metadata`)
            for k, v in obj.items():
                new[k] = self._copy(v, (*path, k))
            if getattr(obj, "__dict__", None):
                new.__dict__.update(copy.deepcopy(obj.__dict__))
            return new
        if isinstance(obj, tuple):
            items = [self._copy(v, (*path, i)) for i, v in enumerate(obj)]
            return kind(*items) if hasattr(obj, "_fields") else kind(items)
        if isinstance(obj, list):
            new = copy.copy(obj)
            new[:] = [self._copy(v, (*path, i)) for i, v in enumerate(obj)]
            return new
        if isinstance(obj, np.ndarray):
            return obj.copy()
        try:
            return copy.deepcopy(obj)
        except Exception:  # an object that cannot be copied is saved as it is when written
            return obj

    def _tensor(self, t: Any, path: tuple[Any, ...]) -> Any:
        # This runs for every tensor (thousands with an optimizer's state): a few attribute
        # reads and dict lookups; CPU copies are batched into one call at the end of take().
        kind = type(t)
        if (
            kind not in self.plain
            or t.layout is not self.strided
            or t.is_meta
            or t.is_quantized
            or t.is_nested
        ):
            buf = _copy_other(t)
        else:
            cuda = t.is_cuda
            geometry = (t.dtype, t.shape, t.stride(), cuda)
            ptr = t.data_ptr()
            seen = self.shared.get(ptr) if ptr else None
            if seen is not None and seen[0] == geometry:
                buf = seen[1]
            else:
                entry = self.old.get(path)
                if entry is not None and entry[0] == geometry:
                    buf, pinned = entry[1], entry[2]
                else:
                    buf, pinned = self._allocate(t, cuda)
                self.new[path] = (geometry, buf, pinned)
                self.shared[ptr] = (geometry, buf)
                if cuda:
                    buf.copy_(t, non_blocking=pinned)
                    if pinned:
                        self.streams.add(t.device)
                else:
                    self.dst.append(buf)
                    self.src.append(t)
        if kind is self.parameter:
            return self.parameter(buf, requires_grad=t.requires_grad)
        return buf

    def _allocate(self, t: Any, cuda: bool) -> tuple[Any, bool]:
        # empty_like keeps the strides of a dense tensor (channels_last stays a straight copy).
        if cuda:
            try:
                return self.torch.empty_like(t, device="cpu", pin_memory=True), True
            except RuntimeError:  # pinned memory exhausted or unavailable: pageable still works
                pass
        return self.torch.empty_like(t, device="cpu"), False


def _copy_other(t: Any) -> Any:
    """Sparse, quantized, nested or subclassed tensors: a fresh CPU copy each time, no reuse."""
    try:
        return t.detach().to("cpu", copy=True)
    except Exception:
        return copy.deepcopy(t)
