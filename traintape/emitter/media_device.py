"""The pixels of a CUDA tensor, copied to the host without waiting for the GPU.

`traintape.Image(cuda_tensor)` must not synchronise: a `.to("cpu")` waits for every kernel
queued before it, which stalls the training loop once per logged image (W&B's `wandb.Image` and
TensorBoard's `add_image` both do). Instead the caller launches a non-blocking copy into pinned
host memory (torch's caching host allocator: reused, and never handed out again before the copy
that used it has completed) and records a CUDA event after it; the artifact thread waits for the
event before it reads the pixels (`landed`), as `deferred.py` does for metric values.

The one check that needs the values, a float image's range, is made there too, so a float
CUDA image outside [0, 1] is refused on the artifact thread (warned once, counted by `finish()`)
rather than at the call: raising at the call would need the values, and so a sync.
"""

from __future__ import annotations

from typing import Any

from traintape.emitter.media_pixels import check_float_range


class DeviceCopy:
    """A CUDA tensor's pixels on their way to host memory (`host`, complete once `event` has)."""

    __slots__ = ("event", "host")

    def __init__(self, host: Any, event: Any) -> None:
        self.host = host
        self.event = event  # None: the copy has landed already

    @classmethod
    def start(cls, torch: Any, data: Any) -> DeviceCopy:
        """Launches the copy of `data` (a CUDA tensor) on its device's current stream."""
        source = data.detach()
        try:
            host = torch.empty(source.shape, dtype=source.dtype, pin_memory=True)
        except RuntimeError:  # pinned memory exhausted: a pageable copy waits, but still works
            host = torch.empty(source.shape, dtype=source.dtype)
        host.copy_(source, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(source.device))
        return cls(host, event)

    @property
    def nbytes(self) -> int:
        return int(self.host.nbytes)

    def landed(self) -> Any:
        """The host tensor, once the copy has completed (waits for it: on the artifact thread);
        ValueError for a float image outside [0, 1]."""
        if self.event is not None:
            self.event.synchronize()
            self.event = None
        host = self.host
        if host.is_floating_point():
            check_float_range(float(host.min()), float(host.max()))
        return host

    def __reduce__(self) -> Any:  # copy, deepcopy, pickle of an Image: the pixels, landed
        if self.event is not None:
            self.event.synchronize()
        return DeviceCopy, (self.host, None)
