"""Metric curves as a PNG: one panel per metric, one line per run (or per rank of a run).

matplotlib is imported here only, lazily, with the Agg backend: no display is needed, and
`import traintape` never pays for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from traintape.read.history import Curve


def smooth(values: Sequence[float], k: int) -> list[float]:
    """Trailing mean over the last `k` finite values (the first points average what exists);
    NaN and ±Inf points stay as they are and do not spread to their neighbours."""
    if k <= 1:
        return list(values)
    out, window, total = [], [], 0.0
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(v)
            continue
        window.append(v)
        total += v
        if len(window) > k:
            total -= window.pop(0)
        out.append(total / len(window))
    return out


def figure(
    curves: Sequence[Curve],
    *,
    smooth_k: int = 1,
    size: tuple[int, int] = (1200, 800),
    dpi: int = 100,
    title: str | None = None,
) -> Figure:
    """A figure of `size` pixels: one panel per metric (in the order first seen), one line per
    curve, labelled with the run's name (and rank)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        msg = "plotting needs matplotlib: pip install 'traintape[all]' (or matplotlib)"
        raise ImportError(msg) from exc

    keys = list(dict.fromkeys(c.key for c in curves))
    # A Figure on an Agg canvas, not through pyplot: no display, no global state.
    fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
    runs_named: dict[str, set[str]] = {}
    for c in curves:
        runs_named.setdefault(c.name, set()).add(c.run_id)
    # A run (or rank) keeps its colour in every panel, even where it lacks a metric.
    colors = {
        line: f"C{i % 10}"
        for i, line in enumerate(dict.fromkeys((c.run_id, c.rank) for c in curves))
    }
    for ax, key in zip(axes, keys):
        for c in curves:
            if c.key != key:
                continue
            label = c.name if len(runs_named[c.name]) == 1 else f"{c.name} ({c.run_id[:8]})"
            if c.rank is not None:
                label = f"{label} rank {c.rank}"
            ax.plot(
                c.steps,
                smooth(c.values, smooth_k),
                label=label,
                color=colors[c.run_id, c.rank],
                linewidth=1.2,
                # Sparse curves (an eval every N steps) get dots: a point between NaNs shows.
                marker="." if len(c.steps) <= 200 else None,
            )
        ax.set_ylabel(key)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    axes[-1].set_xlabel("step")
    if title:
        fig.suptitle(title)
    elif smooth_k > 1:
        fig.suptitle(f"trailing mean over {smooth_k} points")
    return fig


def save(fig: Figure, out: str | Path, **options: Any) -> Path:
    """Writes the figure as PNG at its exact pixel size (no tight bounding box)."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=fig.dpi, **options)
    tmp.replace(path)
    return path
