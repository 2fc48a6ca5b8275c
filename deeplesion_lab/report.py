"""A static, offline HTML report of a run: metrics tables and figures in one file.

Figures are rendered with matplotlib and embedded as base64 PNG, so the report opens from disk on
a network with no internet (no CDN, no external file). All text is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .atomic import atomic_path
from .lesion_types import TYPE_COLORS
from .run import RunDir

__all__ = ["flatten_metrics", "write_report", "FP_RATES"]

FP_RATES = ("0.5", "1", "2", "4", "8", "16")


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and scalars are leaves)."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_metrics(v, key + "."))
        else:
            out[key] = v
    return out


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    return html.escape(json.dumps(v) if isinstance(v, list | dict) else str(v))


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in rows)
    return f"<table><tr><th>metric</th><th>value</th></tr>{body}</table>"


def _map_figure(run: RunDir) -> str | None:
    if not (run.umap.is_file() and run.pseudo_labels.is_file()):
        return None
    import matplotlib.pyplot as plt

    um = pd.read_parquet(run.umap)
    pl = pd.read_parquet(run.pseudo_labels)
    df = um.merge(pl, on="lesion_id", how="left")
    df["label"] = df["label"].fillna("unlabeled").astype(str)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    for name, g in df.groupby("label"):
        ax.scatter(g["x"], g["y"], s=8, alpha=0.8, label=f"{name} ({len(g)})",
                   color=TYPE_COLORS.get(name, "#444444"), linewidths=0)
    ax.set_title("Lesion embedding map (UMAP), coloured by pseudo-label")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=2, loc="best", frameon=False)
    return _png(fig)


def _froc_figure(detection: dict[str, Any], title: str) -> str | None:
    curves = {
        name: d["sensitivity"]
        for name, d in detection.items()
        if isinstance(d, dict) and isinstance(d.get("sensitivity"), dict)
    }
    if not curves:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [float(f) for f in FP_RATES]
    for name, sens in curves.items():
        ys = [sens.get(f, np.nan) for f in FP_RATES]
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [f for f in FP_RATES])
    ax.set_ylim(0, 1)
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("sensitivity (IoU >= 0.5)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _k_figure(mining: dict[str, Any]) -> str | None:
    """Silhouette and stability over K, the chosen K marked."""
    rows = mining.get("k_scores")
    if not isinstance(rows, list) or not rows:
        return None
    import matplotlib.pyplot as plt

    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for col in ("silhouette", "stability"):
        if col in df:
            ax.plot(df["k"], df[col], marker="o", label=col)
    if mining.get("k") is not None:
        ax.axvline(float(mining["k"]), color="#888", ls="--",
                   label=f"K = {mining['k']} ({mining.get('k_chosen_by', 'chosen')})")
    ax.set_xlabel("K (clusters)")
    ax.set_title("Choosing K")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _accuracy_figure(cls: dict[str, Any]) -> str | None:
    """8-class accuracy of the embedding and the baselines (and the paper's figure)."""
    bars = [(name, cls.get(f"{key}_accuracy")) for name, key in [
        ("trained embedding", "embedding"), ("untrained network", "untrained"),
        ("raw intensity", "raw_intensity"), ("location only", "location_only"),
        ("paper: location only (real data)", "paper_location_only")]]
    bars = [(n, float(v)) for n, v in bars if isinstance(v, int | float)]
    if not bars:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.6))
    colors = ["#1f77b4"] + ["#999999"] * (len(bars) - 1)
    colors = ["#bbbbbb" if n.startswith("paper") else c for (n, _), c in zip(bars, colors,
                                                                               strict=True)]
    ax.barh([n for n, _ in bars][::-1], [v for _, v in bars][::-1], color=colors[::-1])
    for i, (_, v) in enumerate(bars[::-1]):
        ax.text(v + 0.01, i, f"{v:.3f}", va="center", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("8-class accuracy (test half of the labelled lesions)")
    ax.set_title("Classification from embeddings vs baselines")
    return _png(fig)


def _sens_table(curves: dict[str, dict[str, Any]]) -> str:
    """One row per model: sensitivity at each FP rate and the mean over 0.5-4."""
    head = "".join(f"<th>{f} FP</th>" for f in FP_RATES)
    body = ""
    for name, d in curves.items():
        sens = d.get("sensitivity", {})
        cells = "".join(f"<td>{_fmt(sens.get(f))}</td>" for f in FP_RATES)
        ci = (d.get("interval95") or {}).get("interval", {}).get("mean_0.5-4")
        span = f"{_fmt(ci[0])} - {_fmt(ci[1])}" if ci else ""
        body += (f"<tr><td>{html.escape(name)}</td>{cells}"
                 f"<td>{_fmt(d.get('mean_sensitivity_0_5_to_4'))}</td><td>{span}</td>"
                 f"<td>{_fmt(d.get('n_lesions'))}</td></tr>")
    return (f"<table><tr><th>model</th>{head}<th>mean 0.5-4</th>"
            f"<th>95 % interval (bootstrap over slices)</th><th>lesions</th></tr>{body}</table>")


def _difference(diff: dict[str, Any]) -> str:
    """One sentence: the paired change of the 0.5-4 FP mean with its interval."""
    try:
        d = diff["difference"]["mean_0.5-4"]
        low, high = diff["interval"]["mean_0.5-4"]
        p = diff["p_le_zero"]["mean_0.5-4"]
    except (KeyError, TypeError, ValueError):
        return ""
    return (f"<p>After minus before, mean sensitivity 0.5-4 FPs per image: <b>{d:+.3f}</b> "
            f"(95 % paired bootstrap interval {low:+.3f} to {high:+.3f}; the fine-tuned model "
            f"is not better in {p:.0%} of {diff.get('n_boot', '')} resamples).</p>")


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``RUN_DIR/report.html`` (or ``out``) from the run's metrics and outputs."""
    run = RunDir(run_dir)
    metrics = json.loads(run.metrics.read_text()) if run.metrics.is_file() else {}
    out = Path(out) if out is not None else run.path / "report.html"
    parts: list[str] = []

    def section(title: str, content: str) -> None:
        parts.append(f"<section><h2>{html.escape(title)}</h2>{content}</section>")

    info = run.info() if run.run_json.is_file() else {}
    head = [("run", str(run.path)), ("manifest", info.get("manifest", "")),
            ("created", info.get("created", ""))]
    section("Run", _table(head))

    fig = _map_figure(run)
    raw_mining = metrics.get("mining", {})
    kfig = _k_figure(raw_mining)
    mining = flatten_metrics({k: v for k, v in raw_mining.items()
                              if k not in ("k_scores", "cluster_labels")})
    content = _table(sorted(mining.items())) if mining else "<p>No mining metrics yet.</p>"
    names = raw_mining.get("cluster_labels")
    if isinstance(names, dict) and names:
        rows = "".join(f"<tr><td>{html.escape(str(c))}</td><td>{html.escape(str(n))}</td></tr>"
                       for c, n in sorted(names.items(), key=lambda kv: int(kv[0])))
        content += f"<table><tr><th>cluster</th><th>named after its known types</th></tr>{rows}</table>"
    if kfig:
        content = f'<img alt="choosing K" src="{kfig}">' + content
    if fig:
        content = f'<img alt="embedding map" src="{fig}">' + content
    section("Pseudo-labels: embedding map and clustering quality", content)

    if "retrieval" in metrics:
        section("Similar-lesion retrieval",
                _table(sorted(flatten_metrics(metrics["retrieval"]).items())))
    if "classification" in metrics:
        afig = _accuracy_figure(metrics["classification"])
        section("Classification from embeddings vs baselines (paper protocol)",
                (f'<img alt="accuracy" src="{afig}">' if afig else "")
                + _table(sorted(flatten_metrics(metrics["classification"]).items())))

    det = metrics.get("detection", {})
    if det:
        fig = _froc_figure(det, "FROC on the key slices (DeepLesion protocol)")
        curves = {n: d for n, d in det.items() if isinstance(d, dict) and "sensitivity" in d}
        section("Detection", (f'<img alt="FROC" src="{fig}">' if fig else "")
                + _sens_table(curves))
    ft = metrics.get("finetune", {})
    if ft.get("before") and ft.get("after"):
        fig = _froc_figure({"before fine-tuning": ft["before"], "after fine-tuning": ft["after"]},
                           "Fine-tuning on corrected labels: before / after")
        rest = {k: v for k, v in ft.items() if k not in ("before", "after", "difference")}
        section(
            "Fine-tuning from corrected labels",
            (f'<img alt="FROC before/after" src="{fig}">' if fig else "")
            + _sens_table({f"before ({ft['before'].get('model', '')})": ft["before"],
                           f"after ({ft['after'].get('model', '')})": ft["after"]})
            + _difference(ft.get("difference") or {})
            + _table(sorted(flatten_metrics(rest).items())),
        )
    for key, title in [("matching", "Lesion graph: intra-patient matching"),
                       ("missing_annotations", "Mining unannotated lesions")]:
        if key in metrics:
            section(title, _table(sorted(flatten_metrics(metrics[key]).items())))
    shown = {"mining", "retrieval", "classification", "detection", "finetune", "matching",
             "missing_annotations"}
    other = {k: v for k, v in metrics.items() if k not in shown}
    if other:
        section("Other metrics", _table(sorted(flatten_metrics(other).items())))

    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>deeplesion-lab report: {html.escape(run.path.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #222; }}
h1 {{ font-size: 1.5rem; }} h2 {{ font-size: 1.15rem; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; margin: .5rem 0 1rem; font-size: .9rem; }}
td, th {{ border: 1px solid #ddd; padding: .2rem .6rem; text-align: left; }}
th {{ background: #f4f4f4; }} img {{ max-width: 100%; display: block; margin: .5rem 0; }}
footer {{ color: #777; font-size: .8rem; margin-top: 2rem; }}
</style></head><body>
<h1>deeplesion-lab run report</h1>
{''.join(parts)}
<footer>Written {html.escape(time.strftime('%Y-%m-%d %H:%M'))} by deeplesion-lab. Self-contained:
no external resources. DeepLesion data: NIH Clinical Center.</footer>
</body></html>
"""
    with atomic_path(out) as tmp:
        tmp.write_text(doc)
    return out
