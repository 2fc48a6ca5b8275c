"""FROC plots: a PNG (matplotlib) and a self-contained interactive HTML (plotly, inlined)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from .froc import FP_RATES, FROCResult

__all__ = ["plot_froc", "froc_html"]


def _curve_xy(result: FROCResult, max_fp: float) -> tuple[np.ndarray, np.ndarray]:
    c = result.curve
    x = c.fp_per_image
    y = c.sensitivity
    keep = x <= max_fp
    return x[keep], y[keep]


def plot_froc(
    results: Mapping[str, FROCResult],
    path: str | Path,
    *,
    title: str = "FROC (DeepLesion protocol)",
    max_fp: float = 32.0,
) -> Path:
    """Write a PNG with one FROC curve per result, the 0.5-16 FP points marked.

    Parameters
    ----------
    results : mapping
        Curve name -> :class:`~deeplesion_lab.detection.froc.FROCResult`.
    path : str or pathlib.Path
        The PNG to write (atomically).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.2), dpi=120)
    for name, res in results.items():
        x, y = _curve_xy(res, max_fp)
        x = np.maximum(x, 1.0 / 16)  # log axis: show the zero-FP start at the left edge
        (line,) = ax.step(x, y, where="post", label=f"{name} (mean {res.mean_sensitivity_0_5_to_4:.3f})")
        ax.plot(list(FP_RATES), [res.sensitivity[k] for k in res.sensitivity], "o",
                color=line.get_color(), ms=4)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(FP_RATES))
    ax.set_xticklabels([f"{f:g}" for f in FP_RATES])
    ax.set_xlim(1.0 / 8, max_fp)
    ax.set_ylim(0, 1.0)
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def froc_html(
    results: Mapping[str, FROCResult],
    path: str | Path,
    *,
    title: str = "FROC (DeepLesion protocol)",
    max_fp: float = 32.0,
) -> Path | None:
    """Write an interactive FROC plot as one HTML file with plotly.js inlined (no CDN).

    Returns ``None`` (and writes nothing) when plotly is not installed.
    """
    try:
        import plotly.graph_objects as go
    except ImportError:
        return None
    fig = go.Figure()
    for name, res in results.items():
        x, y = _curve_xy(res, max_fp)
        fig.add_trace(go.Scatter(x=np.maximum(x, 1.0 / 16), y=y, mode="lines", name=name,
                                 line_shape="hv",
                                 hovertemplate="%{x:.3f} FP/image<br>sensitivity %{y:.3f}"))
        fig.add_trace(go.Scatter(
            x=list(FP_RATES), y=[res.sensitivity[k] for k in res.sensitivity], mode="markers",
            name=f"{name} @ 0.5-16", showlegend=False,
            hovertemplate="%{x} FP/image: sensitivity %{y:.3f}"))
    fig.update_layout(
        title=title, xaxis_title="false positives per image", yaxis_title="sensitivity",
        xaxis={"type": "log", "tickvals": list(FP_RATES), "range": [np.log10(1 / 8), np.log10(max_fp)]},
        yaxis={"range": [0, 1]}, template="plotly_white",
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.write_html(str(tmp), include_plotlyjs=True, full_html=True)
    return path
