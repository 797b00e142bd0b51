"""Matplotlib figures without ``pyplot``: an Agg canvas per figure, saved atomically.

No global backend switch, no figure registry to leak memory over a long run, and safe
from a handler thread.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medseg.utils.atomic import atomic_path

#: One colour per region or class (matplotlib's tab10 order), the same in every medseg figure:
#: TC, WT, ET (and RC) for BraTS, in the canonical region order.
REGION_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def new_figure(width: float, height: float) -> Any:
    """A ``matplotlib.figure.Figure`` of ``width`` x ``height`` inches on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, out_png: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as PNG to ``out_png`` atomically and return the path."""
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    return Path(out_png)
