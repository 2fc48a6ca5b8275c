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
from .boxes import pairwise_iou
from .lesion_types import TYPE_COLORS
from .run import RunDir

__all__ = ["flatten_metrics", "format_value", "froc_curves", "interval", "metric_rows", "model_color",
           "write_report", "FP_RATES", "MODEL_COLORS"]

FP_RATES = ("0.5", "1", "2", "4", "8", "16")

#: One colour per detector model, the same in notebook 4 and the report (Okabe-Ito).
MODEL_COLORS = {"single": "#0072B2", "pseudo": "#E69F00"}
_FINETUNED_COLORS = ("#009E73", "#CC79A7", "#D55E00", "#56B4E9")


def model_color(model: str) -> str:
    """The colour of a detector model: fixed for ``single`` and ``pseudo``; fine-tuned models
    (``<parent>-ft...``) and others get the next colours of a fixed list, by name."""
    if model in MODEL_COLORS:
        return MODEL_COLORS[model]
    import zlib

    return _FINETUNED_COLORS[zlib.crc32(model.encode()) % len(_FINETUNED_COLORS)]


def froc_curves(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The FROC results of a run, each model once: ``{label: result}``.

    The detectors of ``metrics["detection"]``, with the two models of fine-tuning (when it
    ran) labelled ``before fine-tuning (<model>)`` and ``after fine-tuning (<model>)`` instead
    of their detector rows. Each result has ``model`` (for :func:`model_color`),
    ``sensitivity`` and, where recorded, ``interval95`` and ``n_lesions``.
    """
    curves = {
        f"detector: {k}": {**v, "model": k}
        for k, v in (metrics.get("detection") or {}).items()
        if isinstance(v, dict) and "sensitivity" in v
    }
    ft = metrics.get("finetune") or {}
    if ft.get("before") and ft.get("after"):
        for key in ("before", "after"):
            model = ft[key].get("model") or key
            curves.pop(f"detector: {model}", None)
            curves[f"{key} fine-tuning ({model})"] = {**ft[key], "model": model}
    return curves


def interval(result: dict[str, Any], key: str = "mean_0.5-4") -> tuple[Any, Any]:
    """The 95 % bootstrap interval recorded beside a result, ``(None, None)`` if none."""
    iv = ((result.get("interval95") or {}).get("interval") or {}).get(key)
    return (iv[0], iv[1]) if isinstance(iv, list | tuple) and len(iv) == 2 else (None, None)


def format_value(v: Any, digits: int = 3) -> str:
    """A metric as people read it: whole numbers without decimals, others to ``digits``."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int | np.integer):
        return f"{int(v):,}" if abs(int(v)) >= 10000 else str(int(v))
    if isinstance(v, float | np.floating):
        if not np.isfinite(v):
            return str(v)
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    return str(v)


def metric_rows(metrics: dict[str, Any], groups: tuple[str, ...], depth: int = 1) -> pd.DataFrame:
    """``group, metric, value`` rows of the numbers of some metric groups, formatted.

    Only numbers are listed (nested dicts up to ``depth`` levels, as ``a.b``); counts stay whole
    numbers (``k 16``, not ``16.000``). The value column is text, formatted by
    :func:`format_value`.
    """
    rows = []
    for g in groups:
        for key, value in flatten_metrics(metrics.get(g) or {}).items():
            if key.count(".") >= depth or isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                rows.append((g, key, format_value(value)))
    return pd.DataFrame(rows, columns=["group", "metric", "value"])


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
    if isinstance(v, int | float) and not isinstance(v, bool):
        return format_value(v)
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


def _froc_figure(curves: dict[str, dict[str, Any]], title: str) -> str | None:
    """FROC of each model with its 95 % bootstrap band, in the model's colour
    (:func:`model_color`, as in notebook 4)."""
    curves = {n: d for n, d in curves.items()
              if isinstance(d, dict) and isinstance(d.get("sensitivity"), dict)}
    if not curves:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [float(f) for f in FP_RATES]
    for name, d in curves.items():
        color = model_color(str(d.get("model") or name))
        ys = [d["sensitivity"].get(f, np.nan) for f in FP_RATES]
        ax.plot(xs, ys, marker="o", label=name, color=color,
                ls="--" if name.startswith("before") else "-")
        band = [interval(d, f) for f in FP_RATES]
        if all(b[0] is not None for b in band):
            ax.fill_between(xs, [b[0] for b in band], [b[1] for b in band], color=color,
                            alpha=0.15, linewidth=0)
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [f for f in FP_RATES])
    ax.set_ylim(0, 1)
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("sensitivity (IoU >= 0.5)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="bands: 95 % bootstrap over slices", title_fontsize=7)
    return _png(fig)


def _crop(hu: np.ndarray, box, margin: float = 1.5, min_side: float = 48.0):
    """A square crop around ``box`` (clipped to the image) and its offset."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(max(x2 - x1, y2 - y1) * (1 + 2 * margin), min_side)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    h, w = hu.shape
    a = int(np.clip(cx - side / 2, 0, max(w - side, 0)))
    b = int(np.clip(cy - side / 2, 0, max(h - side, 0)))
    s = int(side)
    return hu[b:b + s, a:a + s], (a, b)


def _lesion_figure(run: RunDir) -> str | None:
    """The most confident lesion of each pseudo-label: its key slice around the box."""
    if not run.pseudo_labels.is_file():
        return None
    import matplotlib.pyplot as plt

    from .images import ImageError, apply_window, key_slice_path, load_hu

    try:
        man = run.load_manifest()
    except Exception:  # the report shows what it can
        return None
    root = man.attrs.get("images_root")
    if not root:
        return None
    pl = pd.read_parquet(run.pseudo_labels).merge(man, on="lesion_id")
    picks = (pl.sort_values("confidence", ascending=False).drop_duplicates("label")
             .sort_values("label").head(8))
    if not len(picks):
        return None
    fig, axes = plt.subplots(1, len(picks), figsize=(1.9 * len(picks), 2.3), squeeze=False)
    for ax, r in zip(axes[0], picks.itertuples(index=False), strict=False):
        ax.axis("off")
        box = (r.bbox_x1, r.bbox_y1, r.bbox_x2, r.bbox_y2)
        try:
            hu = load_hu(key_slice_path(root, r.file_name))
        except (ImageError, OSError):
            ax.set_title(f"{r.label}\n(no image)", fontsize=7)
            continue
        crop, (a, b) = _crop(hu, box)
        ax.imshow(apply_window(crop, (-160.0, 240.0)), cmap="gray")
        ax.add_patch(plt.Rectangle((box[0] - a, box[1] - b), box[2] - box[0], box[3] - box[1],
                                   fill=False, color="#f5c542", lw=1.2))
        ax.set_title(f"{r.label}\nconfidence {r.confidence:.2f}", fontsize=7)
    fig.suptitle("The most confident lesion of each pseudo-label (annotated box)", fontsize=9)
    return _png(fig)


def _detection_figure(run: RunDir, curves: dict[str, dict[str, Any]], n: int = 6) -> str | None:
    """Test key slices of the last model of ``curves`` around the annotated lesion: the
    annotated box (yellow) and the model's boxes (its colour) scoring at least its score at
    4 false positives per image; half hits, half misses where there are both."""
    if not curves:
        return None
    name, res = list(curves.items())[-1]
    model = str(res.get("model") or "")
    path = res.get("predictions")
    files = run.prediction_files().get(model, [])
    if path is None or not Path(str(path)).is_file():
        path = next((p for s, p in files if s == res.get("split", "test")), None)
    if path is None or not Path(str(path)).is_file():
        return None
    import matplotlib.pyplot as plt

    from .images import ImageError, apply_window, key_slice_path, load_hu

    pred = pd.read_csv(path)
    try:
        man = run.load_manifest()
    except Exception:  # the report shows what it can
        return None
    root = man.attrs.get("images_root")
    split = res.get("split", "test")
    les = man[man["split_name"] == split] if "split_name" in man else man
    if not root or not len(les) or not len(pred):
        return None
    n_img = max(les["file_name"].nunique(), 1)
    scores = np.sort(pred["score"].to_numpy())[::-1]
    thr = float(scores[min(len(scores), 4 * n_img) - 1])  # about 4 boxes per image above it
    by_file = {k: g for k, g in pred[pred["score"] >= thr].groupby("file_name")}

    rows = []
    for r in les.itertuples(index=False):
        box = (r.bbox_x1, r.bbox_y1, r.bbox_x2, r.bbox_y2)
        g = by_file.get(r.file_name)
        boxes = [] if g is None else g[["x1", "y1", "x2", "y2", "score"]].to_numpy().tolist()
        with np.errstate(divide="ignore", invalid="ignore"):  # a degenerate box hits nothing
            hit = bool(len(boxes)) and bool(
                (pairwise_iou([box], [b[:4] for b in boxes], inclusive=False) >= 0.5).any()
            )
        rows.append((hit, r.file_name, box, boxes))
    hits = [x for x in rows if x[0]][: n // 2]
    misses = [x for x in rows if not x[0]][: n - len(hits)]
    pick = hits + misses
    color = model_color(model)
    fig, axes = plt.subplots(1, len(pick), figsize=(2.2 * len(pick), 2.6), squeeze=False)
    for ax, (hit, fname, box, boxes) in zip(axes[0], pick, strict=True):
        ax.axis("off")
        try:
            hu = load_hu(key_slice_path(root, fname))
        except (ImageError, OSError):
            continue
        crop, (a, b) = _crop(hu, box, margin=2.5, min_side=96)
        ax.imshow(apply_window(crop, (-160.0, 240.0)), cmap="gray")
        h, w = crop.shape
        for x1, y1, x2, y2, _score in boxes:
            if x2 < a or y2 < b or x1 > a + w or y1 > b + h:
                continue
            ax.add_patch(plt.Rectangle((x1 - a, y1 - b), x2 - x1, y2 - y1, fill=False,
                                       color=color, lw=1.0))
        ax.add_patch(plt.Rectangle((box[0] - a, box[1] - b), box[2] - box[0], box[3] - box[1],
                                   fill=False, color="#f5c542", lw=1.2, ls="--"))
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_title(("found" if hit else "missed") + f"\n{fname}", fontsize=7)
    fig.suptitle(f"{name} on {split} key slices: annotated (yellow, dashed), its boxes "
                 f"scoring >= {thr:.2f} (about 4 per image)", fontsize=8)
    return _png(fig)


def _compact_other(other: dict[str, Any]) -> list[tuple[str, Any]]:
    """The numbers and short texts of the remaining metric groups (no paths, no long lists)."""
    rows = []
    for key, value in sorted(flatten_metrics(other).items()):
        if key.count(".") > 2:
            continue
        if isinstance(value, str) and ("/" in value or len(value) > 60):
            continue
        if isinstance(value, list | dict):
            continue
        rows.append((key, value))
    return rows


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
    metrics = run.load_metrics()
    out = Path(out) if out is not None else run.report
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

    lfig = _lesion_figure(run)
    if lfig:
        parts.insert(2, f'<section><img alt="lesions" src="{lfig}"></section>')
    curves = froc_curves(metrics)
    if curves:
        fig = _froc_figure(curves, "FROC on the key slices (DeepLesion protocol)")
        dfig = _detection_figure(run, curves)
        section("Detection", (f'<img alt="FROC" src="{fig}">' if fig else "")
                + _sens_table(curves)
                + (f'<img alt="detections" src="{dfig}">' if dfig else ""))
    ft = metrics.get("finetune", {})
    if ft.get("before") and ft.get("after"):
        fig = _froc_figure({k: v for k, v in curves.items() if "fine-tuning" in k},
                           "Fine-tuning on corrected labels: before / after")
        rest = {k: v for k, v in ft.items()
                if k not in ("before", "after", "difference") and not isinstance(v, dict | list)}
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
            section(title, _table(_compact_other(metrics[key])))
    shown = {"mining", "retrieval", "classification", "detection", "finetune", "matching",
             "missing_annotations"}
    other = {k: v for k, v in metrics.items() if k not in shown}
    rows = _compact_other(other)
    if rows:
        section("Other metrics", "<details><summary>training and evaluation records "
                f"({len(rows)} values; everything is in metrics.json)</summary>"
                + _table(rows) + "</details>")

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
