"""Draw the README pictures: demo key slices (one per coarse type) next to real ones.

Usage::

    .venv/bin/python bench/make_montage.py [--demo DIR] [--real ../shared/deeplesion_real]

Writes ``docs/img/montage_demo.png`` (one synthetic key slice per coarse type, the annotated
box in red, unannotated lesions of the truth file in dashed cyan, a zoomed inset of the lesion)
and ``docs/img/montage_real.png`` (the same view of real key slices from the shared DeepLesion
folder with their boxes from its CSVs; all of them are liver lesions). Without ``--demo`` a demo
dataset (24 patients, seed 0, 512 px) is generated in a temporary folder first.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deeplesion_lab import read_dl_info  # noqa: E402
from deeplesion_lab.images import apply_window, key_slice_path, load_hu  # noqa: E402
from deeplesion_lab.lesion_types import COARSE_TYPES, TYPE_COLORS  # noqa: E402

OUT = ROOT / "docs" / "img"
MAX_BYTES = 400_000
#: Median normalised z of each type in the real test split: the montage shows typical levels.
TYPICAL_Z = {1: 0.68, 2: 0.64, 3: 0.45, 4: 0.60, 5: 0.50, 6: 0.66, 7: 0.49, 8: 0.80}


def _panel(ax, hu, window, boxes, title, color):
    """One slice with its boxes, a title and a zoomed inset of the first (annotated) box."""
    ax.imshow(apply_window(hu, window), cmap="gray", vmin=0, vmax=255, interpolation="lanczos")
    for i, (x1, y1, x2, y2, annotated) in enumerate(boxes):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.2,
                               ec="#ff3030" if annotated else "#30e0ff",
                               ls="-" if annotated else "--"))
        if i == 0:
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            half = max(x2 - x1, y2 - y1, 24) * 0.9
    light = color.lower() in ("#f0e442", "#56b4e9", "#bbbbbb", "#e69f00")
    ax.set_title(title, fontsize=8, color="black" if light else "white", backgroundcolor=color,
                 pad=3, linespacing=1.1)
    ax.set_xticks([])
    ax.set_yticks([])
    if boxes:
        ins = ax.inset_axes([0.64, 0.0, 0.36, 0.36])
        h, w = hu.shape
        a0, a1 = int(max(cy - half, 0)), int(min(cy + half, h))
        b0, b1 = int(max(cx - half, 0)), int(min(cx + half, w))
        ins.imshow(apply_window(hu[a0:a1, b0:b1], window), cmap="gray", vmin=0, vmax=255,
                   interpolation="lanczos")
        for x1, y1, x2, y2, annotated in boxes:
            ins.add_patch(Rectangle((x1 - b0, y1 - a0), x2 - x1, y2 - y1, fill=False, lw=1.0,
                                    ec="#ff3030" if annotated else "#30e0ff",
                                    ls="-" if annotated else "--"))
        ins.set_xlim(0, b1 - b0)
        ins.set_ylim(a1 - a0, 0)
        ins.set_xticks([])
        ins.set_yticks([])
        for s in ins.spines.values():
            s.set_edgecolor("yellow")


def _save(fig, path: Path) -> int:
    """Save as a palette PNG (the slices are grey; 256 colours keep it small)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, facecolor="black")
    plt.close(fig)
    buf.seek(0)
    img = Image.open(buf).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)
    return path.stat().st_size


def _window(row) -> tuple[float, float]:
    lo, hi = float(row.window_low), float(row.window_high)
    return (lo, hi)


def demo_montage(demo_dir: Path, out: Path) -> int:
    info = read_dl_info(demo_dir / "DL_info.csv").lesions
    truth = pd.read_parquet(demo_dir / "truth.parquet")
    ann = truth[truth["annotated"] & ~truth["possibly_noisy"]].merge(
        info[["lesion_id", "window_low", "window_high", "location_z"]], on="lesion_id")
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.6), dpi=80, facecolor="black")
    for ax, (code, name) in zip(axes.ravel(), COARSE_TYPES.items(), strict=True):
        cand = ann[ann["coarse_type"] == code].copy()
        if cand.empty:
            ax.set_axis_off()
            continue
        # a mid-sized lesion, preferably on a slice that also shows an unannotated one
        others = truth[~truth["annotated"]].groupby("file_name").size()
        cand["others"] = cand["file_name"].map(others).fillna(0)
        cand["score"] = (np.abs(np.log(cand["long_diameter_px"].to_numpy(dtype=float) / 30.0))
                         - 0.5 * (cand["others"].to_numpy(dtype=float) > 0)
                         + 10.0 * np.abs(cand["location_z"].to_numpy(dtype=float)
                                         - TYPICAL_Z[code]))
        row = cand.sort_values(["score", "truth_id"]).iloc[0]
        hu = load_hu(key_slice_path(demo_dir / "Images_png", row["file_name"]))
        on = truth[truth["file_name"] == row["file_name"]]
        boxes = [(row.bbox_x1, row.bbox_y1, row.bbox_x2, row.bbox_y2, True)] + [
            (r.bbox_x1, r.bbox_y1, r.bbox_x2, r.bbox_y2, bool(r.annotated))
            for r in on.itertuples() if r.truth_id != row["truth_id"]
        ]
        window = _window(row) if code in (1, 5) else (-175.0, 275.0)
        _panel(ax, hu, window, boxes, f"{name}\n{row['site']}, {row['appearance']}",
               TYPE_COLORS[name])
    fig.suptitle("Synthetic demo data (deeplesion-lab demo-data): one key slice per coarse type; "
                 "red = annotated box, dashed cyan = unannotated lesion (truth file)",
                 color="white", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return _save(fig, out)


def real_montage(real_dir: Path, out: Path) -> int:
    rows = []
    for name in ("DL_info_test.csv", "DL_info_kaggle_subset.csv"):
        p = real_dir / name
        if p.is_file():
            les = read_dl_info(p).lesions
            les = les[[key_slice_path(real_dir / "Images_png", f).is_file()
                       for f in les["file_name"]]]
            rows.append(les)
    les = pd.concat(rows).drop_duplicates("lesion_id")
    les = les.sort_values(["patient_index", "study_index", "file_name"])
    pick = les.drop_duplicates("patient_index").head(8)
    if len(pick) < 8:
        pick = pd.concat([pick, les[~les["lesion_id"].isin(pick["lesion_id"])]]).head(8)
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.6), dpi=80, facecolor="black")
    for ax, row in zip(axes.ravel(), pick.itertuples(), strict=False):
        hu = load_hu(key_slice_path(real_dir / "Images_png", row.file_name))
        on = les[les["file_name"] == row.file_name]
        boxes = [(row.bbox_x1, row.bbox_y1, row.bbox_x2, row.bbox_y2, True)] + [
            (r.bbox_x1, r.bbox_y1, r.bbox_x2, r.bbox_y2, True)
            for r in on.itertuples() if r.lesion_id != row.lesion_id
        ]
        type_name = COARSE_TYPES.get(int(row.coarse_type), "unlabeled (train)")
        _panel(ax, hu, (row.window_low, row.window_high), boxes,
               f"{type_name}\n{row.file_name}",
               TYPE_COLORS.get(type_name, "#777777"))
    for ax in axes.ravel()[len(pick):]:
        ax.set_axis_off()
    fig.suptitle("Real DeepLesion key slices (NIH Clinical Center; Yan et al. 2018) with their "
                 "boxes from DL_info.csv; all available ones are liver lesions",
                 color="white", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return _save(fig, out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, default=None, help="an existing demo-data folder")
    ap.add_argument("--real", type=Path, default=ROOT.parent / "shared" / "deeplesion_real")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        demo = args.demo
        if demo is None:
            from deeplesion_lab.demo import generate_demo

            demo = generate_demo(Path(tmp) / "demo", n_patients=24, seed=0, size=512,
                                 progress=True).csv_path.parent
        n = demo_montage(demo, args.out / "montage_demo.png")
        print(f"wrote {args.out / 'montage_demo.png'} ({n / 1000:.0f} KB)")
    if (args.real / "DL_info_test.csv").is_file():
        n = real_montage(args.real, args.out / "montage_real.png")
        print(f"wrote {args.out / 'montage_real.png'} ({n / 1000:.0f} KB)")
    else:
        print(f"no real DeepLesion folder at {args.real}; montage_real.png not made")
    for name in ("montage_demo.png", "montage_real.png"):
        p = args.out / name
        if p.is_file() and p.stat().st_size > MAX_BYTES:
            print(f"warning: {p} is {p.stat().st_size / 1000:.0f} KB (> 400 KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
