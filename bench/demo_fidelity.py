"""How close the demo data is to real DeepLesion, statistic by statistic, on one page.

Usage::

    .venv/bin/python bench/demo_fidelity.py [--patients 30] [--seed 101] [--work DIR]

Writes ``bench/results/demo_fidelity.md``. The real side is ``../shared/deeplesion_real/``
(``DL_info_test.csv``: 4,927 rows of the official test split, all typed; the 23 real key slices
that are on disk for the HU figures). The demo side is a fresh ``generate_demo`` (512 px, seed
``--seed``, a seed the tests never use) and its truth file. Each row gives the real and the demo
figure, the real spread (interquartile range where it is a distribution) and a verdict: ``ok``
when the demo median lies inside the real interquartile range (or the shares differ by less than
10 points), ``differs`` otherwise, with the reason in the notes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TYPES = {1: "bone", 2: "abdomen", 3: "mediastinum", 4: "liver", 5: "lung", 6: "kidney",
         7: "soft tissue", 8: "pelvis"}


def _q(v: pd.Series) -> tuple[float, float, float]:
    v = pd.Series(v).dropna()
    if v.empty:
        return (np.nan, np.nan, np.nan)
    return tuple(float(x) for x in v.quantile([0.25, 0.5, 0.75]))


def _fmt_q(q) -> str:
    return "n/a" if np.isnan(q[1]) else f"{q[1]:.3g} [{q[0]:.3g}, {q[2]:.3g}]"


def _verdict_q(real, demo) -> str:
    if np.isnan(real[1]) or np.isnan(demo[1]):
        return "n/a"
    return "ok" if real[0] <= demo[1] <= real[2] else "differs"


def _share_verdict(a: float, b: float) -> str:
    return "ok" if abs(a - b) < 0.10 else "differs"


def _nearest_cross_study(les: pd.DataFrame) -> np.ndarray:
    """Per lesion of a multi-study patient: distance of normalised location to the nearest
    lesion of the same patient in another study (a lower bound of its match distance)."""
    out = []
    for _, g in les.groupby("patient_index"):
        if g["study_index"].nunique() < 2:
            continue
        loc = g[["location_x", "location_y", "location_z"]].to_numpy(float)
        st = g["study_index"].to_numpy()
        for i in range(len(g)):
            o = st != st[i]
            out.append(float(np.linalg.norm(loc[o] - loc[i], axis=1).min()))
    return np.array(out)


def _hu_measures(images_root: Path, rows: pd.DataFrame) -> pd.DataFrame:
    """Mean HU in the central half of each lesion and the median of a ring around its box."""
    from deeplesion_lab.images import key_slice_path, load_hu

    out = []
    for r in rows.itertuples():
        path = key_slice_path(images_root, r.file_name)
        if not path.is_file():
            continue
        hu = load_hu(path).astype(float)
        h, w = hu.shape
        x1, y1, x2, y2 = r.bbox_x1 + 5, r.bbox_y1 + 5, r.bbox_x2 - 5, r.bbox_y2 - 5
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        hw, hh = max((x2 - x1) / 2, 1.0), max((y2 - y1) / 2, 1.0)
        yy, xx = np.mgrid[:h, :w]
        inner = ((xx - cx) / (0.5 * hw + 0.5)) ** 2 + ((yy - cy) / (0.5 * hh + 0.5)) ** 2 <= 1
        m = 0.5 * max(hw, hh) + 4
        outer = (np.abs(xx - cx) <= hw + 5 + m) & (np.abs(yy - cy) <= hh + 5 + m)
        hole = (np.abs(xx - cx) <= hw + 3) & (np.abs(yy - cy) <= hh + 3)
        out.append({"type": int(r.coarse_type), "lesion_hu": float(hu[inner].mean()),
                    "around_hu": float(np.median(hu[outer & ~hole]))})
    return pd.DataFrame(out, columns=["type", "lesion_hu", "around_hu"])


_FIG_DATA: dict = {}


def figure(path: Path) -> None:
    """Long diameter per type and the cross-study location distance, real beside demo."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real, demo = _FIG_DATA["real"], _FIG_DATA["demo"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [2.2, 1]})
    pos, data, colors = [], [], []
    for i, t in enumerate(TYPES):
        for j, (df, c) in enumerate(((real, "#4c72b0"), (demo, "#dd8452"))):
            data.append(df.loc[df["coarse_type"] == t, "long_mm"].dropna().to_numpy())
            pos.append(3 * i + j)
            colors.append(c)
    bp = a.boxplot(data, positions=pos, widths=0.8, showfliers=False, patch_artist=True)
    for patch, c in zip(bp["boxes"], colors, strict=True):
        patch.set_facecolor(c)
    a.set_xticks([3 * i + 0.5 for i in range(len(TYPES))], list(TYPES.values()), fontsize=8)
    a.set_ylabel("long diameter (mm)")
    a.set_title("sizes per type: real (blue) and demo (orange)", fontsize=9)
    bins = np.logspace(-3, 0, 30)
    for key, name in (("real_near", "real"), ("demo_near", "demo")):
        v = _FIG_DATA[key]
        b.hist(v, bins=bins, weights=np.full(len(v), 1.0 / max(len(v), 1)), alpha=0.6,
               label=name)
    b.set_ylabel("share of lesions")
    b.set_xscale("log")
    b.set_xlabel("nearest lesion in another study (location)")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)


def compare(real_dir: Path, demo_dir: Path) -> tuple[list[str], dict]:
    from deeplesion_lab.dl_info import read_dl_info

    real = read_dl_info(real_dir / "DL_info_test.csv").lesions
    kag = read_dl_info(real_dir / "DL_info_kaggle_subset.csv").lesions
    demo = read_dl_info(demo_dir / "DL_info.csv").lesions
    truth = pd.read_parquet(demo_dir / "truth.parquet")
    # the demo's true types (training rows are -1 in its CSV, as in DeepLesion)
    ttype = truth.loc[truth["annotated"], ["lesion_id", "coarse_type"]].rename(
        columns={"coarse_type": "true_type"})
    demo = demo.merge(ttype, on="lesion_id", how="left")
    demo["coarse_type"] = demo["true_type"].astype(int)
    rows: list[tuple[str, str, str, str, str]] = []  # statistic, real, demo, verdict, note

    for df in (real, demo):
        df["long_mm"] = df["long_diameter_px"] * df["spacing_x"]
        df["short_mm"] = df["short_diameter_px"] * df["spacing_x"]
        df["slices"] = df["slice_end"] - df["slice_start"] + 1
    # sizes per type
    for col, name in (("long_mm", "long diameter (mm)"), ("short_mm", "short diameter (mm)")):
        rq, dq = _q(real[col]), _q(demo[col])
        rows.append((f"{name}, all", _fmt_q(rq), _fmt_q(dq), _verdict_q(rq, dq), ""))
        for t, tn in TYPES.items():
            rq, dq = _q(real.loc[real["coarse_type"] == t, col]), _q(
                demo.loc[demo["coarse_type"] == t, col])
            rows.append((f"{name}, {tn}", _fmt_q(rq), _fmt_q(dq), _verdict_q(rq, dq), ""))
    # location per type
    for t, tn in TYPES.items():
        for ax in "xyz":
            c = f"location_{ax}"
            rq, dq = _q(real.loc[real["coarse_type"] == t, c]), _q(
                demo.loc[demo["coarse_type"] == t, c])
            rows.append((f"normalised {ax}, {tn}", _fmt_q(rq), _fmt_q(dq), _verdict_q(rq, dq),
                         ""))
    # slices
    for v in (1.0, 2.0, 5.0):
        a = float(np.isclose(real["spacing_z"], v, atol=0.3).mean())
        b = float(np.isclose(demo["spacing_z"], v, atol=0.3).mean())
        rows.append((f"slice interval {v:g} mm (share of rows)", f"{a:.2f}", f"{b:.2f}",
                     _share_verdict(a, b), ""))
    rq, dq = _q(real["slices"]), _q(demo["slices"])
    rows.append(("slices in Slice_range", _fmt_q(rq), _fmt_q(dq), _verdict_q(rq, dq),
                 "real: the slices DeepLesion ships around the key slice (about 30 mm "
                 "above and below); the demo writes only the 3-slice context plus a few "
                 "neighbours (2-5 each side), to stay within the make-lab time budget"))
    # windows
    for df in (real, demo):
        df["window"] = (df["window_low"].round().astype(int).astype(str) + ", "
                        + df["window_high"].round().astype(int).astype(str))
    top = real["window"].value_counts(normalize=True).head(4)
    dsh = demo["window"].value_counts(normalize=True)
    for wname, a in top.items():
        b = float(dsh.get(wname, 0.0))
        rows.append((f"DICOM window {wname} (share)", f"{a:.2f}", f"{b:.2f}",
                     _share_verdict(a, b), ""))
    # lesions per key image, patients, studies
    for name, fn in (
        ("lesions per key image", lambda d: d.groupby("file_name").size()),
        ("annotated lesions per patient", lambda d: d.groupby("patient_index").size()),
        ("studies per patient", lambda d: d.groupby("patient_index")["study_index"].nunique()),
        ("key images per study",
         lambda d: d.groupby(["patient_index", "study_index"])["file_name"].nunique()),
    ):
        a, b = fn(real), fn(demo)
        rows.append((f"{name}: mean; share > 1", f"{a.mean():.2f}; {(a > 1).mean():.2f}",
                     f"{b.mean():.2f}; {(b > 1).mean():.2f}",
                     _share_verdict((a > 1).mean(), (b > 1).mean()),
                     "real counts are of the test split only (a patient's other splits are "
                     "elsewhere: DeepLesion's patient-level split keeps a patient in one)"
                     if "patient" in name else ""))
    rows.append(("follow-up interval (months)", "not in DL_info", "2-12 uniform", "n/a",
                 "DeepLesion publishes study indices, no dates"))
    # matching difficulty: location of the nearest lesion in another study
    rn, dn = _nearest_cross_study(real), _nearest_cross_study(demo)
    rq, dq = _q(pd.Series(rn)), _q(pd.Series(dn))
    rows.append(("nearest same-patient lesion in another study: location distance",
                 _fmt_q(rq), _fmt_q(dq), _verdict_q(rq, dq),
                 "a lower bound of how far a lesion's normalised location moves between "
                 "studies; decides how hard location-only matching is"))
    # unannotated share
    un = 1.0 - truth["annotated"].mean()
    key = truth[truth["on_key_image"]]
    rows.append(("unannotated share of lesions (key slice + neighbours)",
                 "about 0.50 (Cai et al. 2021)", f"{un:.2f}",
                 _share_verdict(0.5, un), "real: Lesion Harvester's estimate, not measurable "
                 "from DL_info"))
    rows.append(("unannotated share on the key slices only", "not published",
                 f"{1.0 - key['annotated'].mean():.2f}", "n/a",
                 "the rest are only on neighbouring slices"))
    # HU on the real key slices
    real_keys = pd.concat([real, kag], ignore_index=True).drop_duplicates("lesion_id")
    real_hu = _hu_measures(real_dir / "Images_png", real_keys)
    on_key = truth[truth["annotated"]].copy()
    demo_hu = _hu_measures(demo_dir / "Images_png", on_key)
    for t in sorted(set(real_hu["type"]) & set(TYPES)):
        for col, name in (("lesion_hu", "lesion HU"), ("around_hu", "surrounding HU")):
            r = real_hu.loc[real_hu["type"] == t, col]
            d = demo_hu.loc[demo_hu["type"] == t, col]
            rq, dq = _q(r), _q(d)
            rows.append((f"{name}, {TYPES[t]} (real n={len(r)})", _fmt_q(rq), _fmt_q(dq),
                         _verdict_q(rq, dq) if len(r) >= 4 else "n/a (few real)", ""))
    _FIG_DATA.update({"real": real, "demo": demo, "real_near": rn, "demo_near": dn})
    lines = ["| statistic | real DeepLesion median [IQR] or share | demo | verdict | notes |",
             "|---|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    counts = {"ok": sum(r[3] == "ok" for r in rows),
              "differs": [r[0] for r in rows if r[3] == "differs"]}
    return lines, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=30)
    ap.add_argument("--seed", type=int, default=101)
    ap.add_argument("--real", type=Path, default=REPO.parent / "shared" / "deeplesion_real")
    ap.add_argument("--work", type=Path, default=None, help="keep (and reuse) the demo here")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "demo_fidelity.md")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from deeplesion_lab.demo import generate_demo

    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory()
        work = Path(tmp.name)
    else:
        work = args.work
    demo_dir = work / f"demo_{args.patients}_{args.seed}"
    t0 = time.perf_counter()
    if not (demo_dir / "DL_info.csv").is_file():
        res = generate_demo(demo_dir, n_patients=args.patients, seed=args.seed, progress=True)
        made = f"generated in {res.seconds:.0f} s"
    else:
        made = "reused from --work"
    lines, counts = compare(args.real, demo_dir)
    cmd = "`.venv/bin/python bench/demo_fidelity.py " + " ".join(sys.argv[1:]) + "`"
    head = [
        f"# Demo data against real DeepLesion ({time.strftime('%Y-%m-%d')})",
        "",
        f"Command: {cmd}. Demo: {args.patients} patients, 512 px, seed {args.seed} ({made}); "
        "real: `DL_info_test.csv` (4,927 rows of the official test split) and the 23 real key "
        "slices on disk (HU rows; 18 test rows and 5 Kaggle-subset rows, all liver but a few). "
        f"Verdict ok in {counts['ok']} rows; differs in {len(counts['differs'])}: "
        + ("; ".join(counts["differs"]) if counts["differs"] else "none") + ".",
        "",
        f"Took {time.perf_counter() - t0:.0f} s.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig_path = args.out.with_suffix(".png")
    figure(fig_path)
    head += [f"![sizes per type and cross-study location distance]({fig_path.name})", ""]
    args.out.write_text("\n".join(head + lines) + "\n")
    print("\n".join(head + lines))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
