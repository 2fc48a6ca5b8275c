"""The embedded demo dataset (``deeplesion-lab demo-data``): files, format, realism, --like.

Everything is generated for real into temporary folders (small sizes keep it fast) and read
back with the lab's own readers; the checks measure pixels, not the generator's own records,
wherever the claim is about the images.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from deeplesion_lab import read_dl_info
from deeplesion_lab.demo import DemoOutputError, generate_demo, render_like
from deeplesion_lab.dl_info import OFFICIAL_COLUMNS
from deeplesion_lab.errors import LabError
from deeplesion_lab.images import key_slice_path, load_hu, slice_path
from deeplesion_lab.lesion_types import COARSE_TYPES
from deeplesion_lab.manifest import build_manifest

CLI = [sys.executable, "-m", "deeplesion_lab.cli"]
TRUTH_CONTRACT = [
    "truth_id", "track_id", "patient_index", "study_index", "series_id", "file_name",
    "slice_index", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "long_diameter_px",
    "short_diameter_px", "coarse_type", "annotated", "lesion_id",
]


# fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """12 patients at 256 px: enough lesions of every type for the statistics below."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    generate_demo(out, n_patients=12, seed=5, size=256)
    return out


@pytest.fixture(scope="module")
def info(demo: Path):
    return read_dl_info(demo / "DL_info.csv")


@pytest.fixture(scope="module")
def truth(demo: Path) -> pd.DataFrame:
    return pd.read_parquet(demo / "truth.parquet")


@pytest.fixture(scope="module")
def measures(demo: Path, truth: pd.DataFrame) -> pd.DataFrame:
    """Per lesion seen on a key image: HU inside it and in a ring around its box."""
    rows = []
    cache: dict[str, np.ndarray] = {}
    for r in truth[truth["on_key_image"] & ~truth["possibly_noisy"]].itertuples():
        if r.file_name not in cache:
            cache[r.file_name] = load_hu(key_slice_path(demo / "Images_png", r.file_name))
        rows.append({"truth_id": r.truth_id, "type": r.coarse_type_name, "site": r.site,
                     **_inner_ring(cache[r.file_name].astype(float), r)})
    return pd.DataFrame(rows)


def _inner_ring(hu: np.ndarray, r, margin: float = 0.5) -> dict:
    """Mean HU in the central half of the RECIST extent, HU in a ring around the box, and the
    bone (> 250 HU) around the centre (in the box or the ring)."""
    h, w = hu.shape
    x1, y1, x2, y2 = r.bbox_x1 + 5, r.bbox_y1 + 5, r.bbox_x2 - 5, r.bbox_y2 - 5
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    hw, hh = max((x2 - x1) / 2, 1.0), max((y2 - y1) / 2, 1.0)
    yy, xx = np.mgrid[:h, :w]
    inner = ((xx - cx) / (0.5 * hw + 0.5)) ** 2 + ((yy - cy) / (0.5 * hh + 0.5)) ** 2 <= 1
    m = margin * max(hw, hh) + 4
    outer = (np.abs(xx - cx) <= hw + 5 + m) & (np.abs(yy - cy) <= hh + 5 + m)
    hole = (np.abs(xx - cx) <= hw + 3) & (np.abs(yy - cy) <= hh + 3)
    ring = hu[outer & ~hole]
    around = hu[outer & ~inner]  # the box and its ring, less the lesion's centre
    bone = around[around > 250]
    return {"inner": float(hu[inner].mean()), "ring_median": float(np.median(ring)),
            "ring_bone": float((around > 250).mean()),
            "ring_bone_hu": float(bone.mean()) if bone.size else np.nan}


# format ------------------------------------------------------------------------------------
def test_csv_is_official_format_and_loads_with_zero_rejections(demo: Path, info) -> None:
    raw = (demo / "DL_info.csv").read_bytes()
    lines = raw.split(b"\r\n")
    assert lines[-1] == b"" and b"\n" not in raw.replace(b"\r\n", b"")  # CRLF like the release
    assert lines[0].decode() == ",".join(OFFICIAL_COLUMNS)
    with open(demo / "DL_info.csv", newline="") as f:
        recs = list(csv.DictReader(f))
    assert len(recs) == len(info.lesions) > 40
    packed = re.compile(r"^-?\d+(\.\d+)?(, -?\d+(\.\d+)?)+$")
    for rec in recs:
        for col, n in [("Measurement_coordinates", 8), ("Bounding_boxes", 4),
                       ("Lesion_diameters_Pixel_", 2), ("Normalized_lesion_location", 3),
                       ("Slice_range", 2), ("Spacing_mm_px_", 3), ("Image_size", 2),
                       ("DICOM_windows", 2)]:
            assert packed.match(rec[col]) and rec[col].count(", ") == n - 1, (col, rec[col])
        assert rec["Patient_gender"] in ("M", "F")
        assert rec["Patient_age"] == "" or rec["Patient_age"].isdigit()
    # packed cells are quoted as in the real file
    first = lines[1].decode()
    assert f'"{recs[0]["Measurement_coordinates"]}"' in first
    assert info.n_rejected_rows == 0, info.rejected.head().to_string()
    les = info.lesions
    assert (~les["box_clipped"]).all()
    assert les["spacing_x"].between(0.5 * 2, 0.98 * 2).all()  # 0.5-0.98 mm/px at 512, x2 at 256
    assert set(les["spacing_z"]) <= {1.0, 2.0, 5.0} and les["spacing_z"].nunique() >= 2
    windows = set(zip(les["window_low"], les["window_high"], strict=True))
    assert (-175.0, 275.0) in windows and windows & {(-1500.0, 500.0), (-1350.0, 150.0)}
    assert ((les["window_low"] == -175) & (les["window_high"] == 275)).mean() > 0.5
    assert les["age"].isna().sum() < len(les)
    for col in ("location_x", "location_y", "location_z"):
        assert les[col].between(0, 1).all()


def test_truth_file_contract_and_manifest_ids(demo: Path, truth: pd.DataFrame, info) -> None:
    assert list(truth.columns[: len(TRUTH_CONTRACT)]) == TRUTH_CONTRACT
    assert truth["truth_id"].is_unique
    assert set(truth["coarse_type"]) <= set(COARSE_TYPES)
    ann = truth[truth["annotated"]]
    assert ann["lesion_id"].notna().all() and truth.loc[~truth["annotated"], "lesion_id"].isna().all()
    manifest, _ = build_manifest(demo / "DL_info.csv")
    assert sorted(ann["lesion_id"]) == sorted(manifest["lesion_id"])
    assert manifest["has_image"].all()
    assert len(ann) == len(info.lesions)
    # one truth row per lesion per study
    assert not truth.duplicated(["track_id", "study_index"]).any()
    readme = (demo / "README.md").read_text()
    assert "synthetic" in readme.lower() and "truth.parquet" in readme


def test_every_key_and_context_slice_exists_16bit_with_image_size(demo: Path, info) -> None:
    les = info.lesions
    root = demo / "Images_png"
    written = {p.relative_to(root).as_posix() for p in root.rglob("*.png")}
    expected = set()
    for r in les.itertuples():
        kp = key_slice_path(root, r.file_name)
        with Image.open(kp) as im:
            assert im.mode.startswith("I;16"), (kp, im.mode)
            assert im.size == (r.image_width, r.image_height)
        for i in range(r.slice_start, r.slice_end + 1):
            p = slice_path(root, r.file_name, i)
            assert p.is_file(), f"{p} in Slice_range of {r.file_name} is missing"
            expected.add(p.relative_to(root).as_posix())
        assert r.slice_end - r.slice_start >= 4  # at least key +- 2
    assert written == expected  # only the slices in some row's range are written
    hu = load_hu(key_slice_path(root, les["file_name"].iloc[0]))
    assert hu.dtype == np.int16 and -2048 <= hu.min() and hu.max() < 3072


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = generate_demo(tmp_path / "a", n_patients=2, seed=11, size=160)
    b = generate_demo(tmp_path / "b", n_patients=2, seed=11, size=160)
    c = generate_demo(tmp_path / "c", n_patients=2, seed=12, size=160)
    assert a.csv_path.read_bytes() == b.csv_path.read_bytes()
    assert a.csv_path.read_bytes() != c.csv_path.read_bytes()
    files_a = sorted(p.relative_to(a.images_root) for p in a.images_root.rglob("*.png"))
    files_b = sorted(p.relative_to(b.images_root) for p in b.images_root.rglob("*.png"))
    assert files_a == files_b and files_a
    for rel in files_a:
        assert np.array_equal(load_hu(a.images_root / rel), load_hu(b.images_root / rel)), rel
    pd.testing.assert_frame_equal(pd.read_parquet(a.truth_path), pd.read_parquet(b.truth_path))


def test_full_size_slice_looks_like_ct(tmp_path: Path) -> None:
    res = generate_demo(tmp_path / "d", n_patients=1, seed=2, size=512)
    les = read_dl_info(res.csv_path).lesions
    assert (les["image_height"] == 512).all() and (les["image_width"] == 512).all()
    hu = load_hu(key_slice_path(res.images_root, les["file_name"].iloc[0])).astype(float)
    corner = hu[:40, :40]
    assert (corner == -2048).all() or abs(np.median(corner) + 1000) < 40  # air or no-scan field
    body = ndimage.binary_fill_holes(ndimage.median_filter(hu, 5) > -500)
    body = ndimage.binary_opening(body, iterations=3)  # not the table's thin lines
    assert 0.2 < body.mean() < 0.75
    tissue = hu[body]
    fat = ((tissue > -150) & (tissue < -50)).mean()
    soft = ((tissue > 0) & (tissue < 120)).mean()
    bone = (tissue > 300).mean()
    assert fat > 0.05 and soft > 0.15 and 0.002 < bone < 0.15, (fat, soft, bone)
    # CT-like noise: spatially correlated, sigma about 10-20 HU in uniform tissue
    top = int(np.nonzero(body.any(axis=1))[0][0])  # air above the body (the table is below)
    air = hu[: max(top - 8, 0)]
    air = air[air > -1500]
    assert air.size > 500 and abs(np.median(air) + 1000) < 20
    assert 5 < air.std() < 30


# realism -----------------------------------------------------------------------------------
def test_every_type_present_in_enough_patients(truth: pd.DataFrame, info) -> None:
    ann = truth[truth["annotated"]]
    per_type = ann.groupby("coarse_type")["patient_index"].nunique()
    assert set(per_type.index) == set(COARSE_TYPES)
    assert per_type.min() >= 2, per_type.to_dict()
    known = info.lesions[info.lesions["coarse_type"] > 0]
    assert known["coarse_type"].nunique() >= 4  # val/test rows show several types


def test_lesions_differ_from_their_surroundings(measures: pd.DataFrame) -> None:
    # nodes beside vessels or muscle can match part of their ring, as in real CT; most differ
    soft = measures[measures["type"] != "bone"]
    contrast = (soft["inner"] - soft["ring_median"]).abs()
    assert (contrast > 15).mean() >= 0.85, soft[contrast <= 15].to_string()
    assert contrast.median() > 60
    bone = measures[measures["type"] == "bone"].dropna(subset=["ring_bone_hu"])
    assert len(bone) >= 2
    assert ((bone["inner"] - bone["ring_bone_hu"]).abs() > 100).mean() >= 0.8


def test_lesions_lie_in_their_organ(measures: pd.DataFrame) -> None:
    by = {t: g for t, g in measures.groupby("type")}
    lung = by["lung"]["ring_median"]
    assert (lung < -300).mean() >= 0.75, lung.tolist()
    liver = by["liver"]["ring_median"]
    assert liver.between(20, 200).mean() >= 0.8, liver.tolist()
    assert (by["bone"]["ring_bone"] > 0.08).mean() >= 0.75
    for t in ("mediastinum", "abdomen", "pelvis", "soft tissue"):
        ring = by[t]["ring_median"]
        assert ring.between(-160, 160).mean() >= 0.8, (t, ring.tolist())

def test_levels_along_the_body(info, truth: pd.DataFrame) -> None:
    # normalised z (0 head, 1 feet): mediastinum above liver above kidney above pelvis
    z = info.lesions[["lesion_id", "location_z"]].merge(
        truth[truth["annotated"]][["lesion_id", "coarse_type"]], on="lesion_id")
    med = z.groupby("coarse_type")["location_z"].median()
    assert med[3] < med[4] < med[6] < med[8], med.to_dict()
    assert med[5] < med[4]


def test_lesion_types_overlap_in_density(measures: pd.DataFrame) -> None:
    # no single feature separates the types: density alone classifies them poorly ...
    from sklearn.tree import DecisionTreeClassifier

    x = measures[["inner"]].to_numpy()
    y = measures["type"].to_numpy()
    acc = DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, y).score(x, y)
    assert acc < 0.6, acc
    # ... e.g. nodes of the mediastinum, abdomen and pelvis cover the same range
    def spread(t):
        v = measures.loc[measures["type"] == t, "inner"]
        return v.quantile(0.1), v.quantile(0.9)

    for a, b in [("mediastinum", "abdomen"), ("abdomen", "pelvis"), ("liver", "kidney")]:
        (a0, a1), (b0, b1) = spread(a), spread(b)
        assert min(a1, b1) > max(a0, b0), (a, (a0, a1), b, (b0, b1))


def test_lesions_are_3d(demo: Path, info) -> None:
    """Visible on the neighbouring slices too, and largest on the key slice."""
    root = demo / "Images_png"

    def smooth(path):
        return ndimage.uniform_filter(load_hu(path).astype(float), 3)

    seen, shrink = [], []
    for r in info.lesions.itertuples():
        if r.long_diameter_px < 8 or r.possibly_noisy:
            continue
        x1, y1, x2, y2 = (int(round(v)) for v in (r.bbox_x1 + 5, r.bbox_y1 + 5,
                                                   r.bbox_x2 - 5, r.bbox_y2 - 5))
        m = max(x2 - x1, y2 - y1) // 2 + 6
        cy, cx = (y1 + y2) // 2, (x1 + x2) // 2
        win = (slice(max(cy - m, 0), cy + m + 1), slice(max(cx - m, 0), cx + m + 1))
        core = smooth(key_slice_path(root, r.file_name))[cy, cx]
        areas = []
        for d in (-1, 0, 1):
            hu = smooth(slice_path(root, r.file_name, r.key_slice_index + d))[win]
            # the connected region of lesion-like HU around the lesion's centre
            lab, _ = ndimage.label(np.abs(hu - core) < 30)
            c = lab[cy - win[0].start, cx - win[1].start]
            areas.append(float((lab == c).sum()) if c else 0.0)
        seen.append(max(areas[0], areas[2]) > 0.15 * areas[1])
        shrink.append(areas[1] >= 0.9 * max(areas[0], areas[2]))
    assert len(seen) >= 20
    assert np.mean(seen) >= 0.7
    assert np.mean(shrink) >= 0.75


def test_split_is_patient_level_with_train_types_hidden(info, truth: pd.DataFrame) -> None:
    les = info.lesions
    assert (les.groupby("patient_index")["split"].nunique() == 1).all()
    n_pat = les.groupby("split")["patient_index"].nunique()
    assert set(n_pat.index) == {1, 2, 3}
    assert n_pat[1] > n_pat[2] and n_pat[1] > n_pat[3]
    train = les[les["split"] == 1]
    assert (train["coarse_type"] == -1).all()
    ann = truth[truth["annotated"]].set_index("lesion_id")
    assert ann.loc[train["lesion_id"], "coarse_type"].between(1, 8).all()
    held = les[les["split"] != 1]
    assert (held["coarse_type"].to_numpy() == ann.loc[held["lesion_id"], "coarse_type"]
            .to_numpy()).all()


def test_some_rows_possibly_noisy(info) -> None:
    noisy = info.lesions["possibly_noisy"]
    assert 1 <= noisy.sum() <= 0.12 * len(noisy)


def test_follow_up_studies_share_track_ids(truth: pd.DataFrame) -> None:
    n_studies = truth.groupby("track_id")["study_index"].nunique()
    multi = n_studies[n_studies > 1].index
    assert len(multi) >= 3
    resized = []
    for tid in multi:
        g = truth[truth["track_id"] == tid].sort_values("study_index")
        assert g["patient_index"].nunique() == 1 and g["coarse_type"].nunique() == 1
        assert g["site"].nunique() == 1
        resized.append(np.ptp(g["long_diameter_px"] * g["spacing_x"]) > 0.5)
    assert np.mean(resized) >= 0.5
    # some lesions appear or disappear: tracks missing from some of the patient's studies
    per_patient = truth.groupby("patient_index")["study_index"].nunique()
    partial = [
        tid for tid, g in truth.groupby("track_id")
        if g["study_index"].nunique() < per_patient[g["patient_index"].iloc[0]]
    ]
    assert partial


def test_unannotated_lesions_on_annotated_slices(truth: pd.DataFrame) -> None:
    ann = truth[truth["annotated"]]
    others = truth[~truth["annotated"] & truth["file_name"].isin(set(ann["file_name"]))]
    assert len(others) >= 5
    assert others["file_name"].nunique() >= 4
    worst = 0.0
    for r in others.itertuples():
        for a in ann[ann["file_name"] == r.file_name].itertuples():
            worst = max(worst, _iou((r.bbox_x1, r.bbox_y1, r.bbox_x2, r.bbox_y2),
                                    (a.bbox_x1, a.bbox_y1, a.bbox_x2, a.bbox_y2)))
    assert worst < 0.3


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_diameters_follow_the_real_distribution(info, real_dir: Path) -> None:
    real = read_dl_info(real_dir / "DL_info_test.csv").lesions["long_diameter_px"]
    demo = info.lesions["long_diameter_px"] * 2.0  # generated at 256 px: scale to 512
    for q in (0.25, 0.5, 0.75):
        ratio = demo.quantile(q) / real.quantile(q)
        assert 0.7 < ratio < 1.4, (q, demo.quantile(q), real.quantile(q))
    ratio = info.lesions["short_diameter_px"] / info.lesions["long_diameter_px"]
    assert ratio.between(0.2, 1.0).all() and 0.6 < ratio.median() < 0.9


# output folder, CLI, bad input --------------------------------------------------------------
def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


def test_cli_writes_files_and_refuses_foreign_folder(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = cli("demo-data", "--out", str(out), "--patients", "1", "--seed", "3", "--size", "160",
              "--quiet")
    assert res.returncode == 0, res.stderr
    for name in ("DL_info.csv", "truth.parquet", "README.md"):
        assert (out / name).is_file()
    assert any((out / "Images_png").rglob("*.png"))
    assert "annotated lesions" in res.stdout
    # a previous demo output may be replaced (the same seed gives the same files)
    first = (out / "DL_info.csv").read_bytes()
    res2 = generate_demo(out, n_patients=1, seed=3, size=160)
    assert res2.csv_path.read_bytes() == first
    # a folder with other content is refused, untouched
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    res = cli("demo-data", "--out", str(foreign), "--patients", "1", "--quiet")
    assert res.returncode == 2
    assert str(foreign) in res.stderr and "not empty" in res.stderr
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_cli_help_documents_every_option(capsys) -> None:
    from deeplesion_lab.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo-data", "--help"])
    text = capsys.readouterr().out
    for opt in ("--out", "--patients", "--seed", "--size", "--like", "--limit", "--jobs",
                "--unannotated-share"):
        assert opt in text
    assert "truth" in text and "DL_info.csv" in text


def test_bad_parameters_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="n_patients"):
        generate_demo(tmp_path / "x", n_patients=0)
    with pytest.raises(LabError, match="size"):
        generate_demo(tmp_path / "x", size=64)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DemoOutputError, match="not a folder"):
        generate_demo(f, n_patients=1, size=128)
    assert not (tmp_path / "x").exists()


def test_interrupted_run_leaves_no_csv(tmp_path: Path, monkeypatch) -> None:
    from deeplesion_lab.demo import render

    out = tmp_path / "demo"
    calls = {"n": 0}
    real_write = render.write_png16

    def failing_write(path, hu):  # the disk fills up after a few slices
        calls["n"] += 1
        if calls["n"] > 6:
            raise OSError("No space left on device")
        real_write(path, hu)

    monkeypatch.setattr(render, "write_png16", failing_write)
    with pytest.raises(OSError):
        generate_demo(out, n_patients=3, seed=1, size=128)
    assert not (out / "DL_info.csv").exists()
    assert any((out / "Images_png").rglob("*.png"))
    monkeypatch.undo()
    res = generate_demo(out, n_patients=3, seed=1, size=128)  # the leftover is recognised
    assert read_dl_info(res.csv_path).n_rejected_rows == 0


# --like -------------------------------------------------------------------------------------
def test_like_renders_real_rows(real_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "real20.csv"
    with open(real_dir / "DL_info_test.csv", newline="") as f:
        head = [next(f) for _ in range(21)]
    src.write_text("".join(head))
    res = render_like(src, tmp_path / "like", limit=12, seed=1)
    real = read_dl_info(src).lesions
    out = read_dl_info(res.csv_path)
    assert out.n_rejected_rows == 0
    got = out.lesions
    files = real["file_name"].drop_duplicates().iloc[:12]
    want = real[real["file_name"].isin(set(files))]
    assert list(got["file_name"]) == list(want["file_name"])
    keep = [c for c in got.columns if c not in ("slice_start", "slice_end", "source_line")]
    pd.testing.assert_frame_equal(got[keep].reset_index(drop=True),
                                  want[keep].reset_index(drop=True))
    assert (got["slice_start"] >= want["slice_start"].to_numpy()).all()
    assert (got["slice_end"] <= want["slice_end"].to_numpy()).all()
    # the text of the other cells is copied as is
    src_rows = {r["File_name"] + r["Measurement_coordinates"]: r
                for r in csv.DictReader(head)}
    with open(res.csv_path, newline="") as f:
        out_rows = list(csv.DictReader(f))
    assert len(out_rows) == len(got)
    for r in out_rows:
        s = src_rows[r["File_name"] + r["Measurement_coordinates"]]
        assert {k: v for k, v in r.items() if k != "Slice_range"} == {
            k: v for k, v in s.items() if k != "Slice_range"}
    root = res.images_root
    for r in got.itertuples():
        hu = load_hu(key_slice_path(root, r.file_name), (r.image_height, r.image_width))
        for i in range(r.slice_start, r.slice_end + 1):
            assert slice_path(root, r.file_name, i).is_file()
        m = _inner_ring(hu.astype(float), r)
        assert abs(m["inner"] - m["ring_median"]) > 10 or m["ring_bone"] > 0.1
    t = pd.read_parquet(res.truth_path)
    assert sorted(t.loc[t["annotated"], "lesion_id"]) == sorted(got["lesion_id"])
    assert t["coarse_type"].between(1, 8).all()
    # the same rule as generate_demo: unannotated lesions around the real rows' key slices
    un = t[~t["annotated"]]
    assert abs(len(un) / len(t) - 0.5) < 0.12, (len(un), len(t))
    assert un["on_key_image"].any()
    assert un["file_name"].str[:13].isin(set(got["file_name"].str[:13])).all()


# unannotated lesions (issue 19) -------------------------------------------------------------
def test_unannotated_share_default_is_the_literature_estimate(truth: pd.DataFrame) -> None:
    from deeplesion_lab.demo.cohort import UNANNOTATED_SHARE

    assert UNANNOTATED_SHARE == 0.5  # Cai et al., Lesion Harvester (IEEE TMI 2021)
    share = 1.0 - truth["annotated"].mean()
    assert abs(share - UNANNOTATED_SHARE) < 0.04, share


def test_unannotated_share_option(tmp_path: Path) -> None:
    none = generate_demo(tmp_path / "s0", n_patients=3, seed=21, size=160, unannotated_share=0)
    assert pd.read_parquet(none.truth_path)["annotated"].all()
    res = generate_demo(tmp_path / "s25", n_patients=3, seed=21, size=160,
                        unannotated_share=0.25)
    t = pd.read_parquet(res.truth_path)
    assert abs((1.0 - t["annotated"].mean()) - 0.25) < 0.1
    import pyarrow.parquet as pq

    meta = pq.read_schema(res.truth_path).metadata
    assert b"unannotated_share=0.25" in meta[b"deeplesion_lab.demo"]
    with pytest.raises(LabError, match="unannotated share"):
        generate_demo(tmp_path / "bad", n_patients=1, unannotated_share=0.95)
    bad = subprocess.run([*CLI, "demo-data", "--out", str(tmp_path / "cli"), "--patients", "1",
                          "--unannotated-share", "x"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--unannotated-share" in bad.stderr


def test_unannotated_lesions_of_every_type_and_size_on_key_and_neighbouring_slices(
    truth: pd.DataFrame, info
) -> None:
    un, ann = truth[~truth["annotated"]], truth[truth["annotated"]]
    assert un["coarse_type"].nunique() >= 7, un["coarse_type"].value_counts().to_dict()
    med = ann["long_diameter_px"].median()
    assert un["long_diameter_px"].min() < 0.6 * med < med < un["long_diameter_px"].max() / 1.5
    keys = info.lesions.groupby(info.lesions["file_name"].str[:13])["key_slice_index"].agg(set)
    on_key, beside = un[un["on_key_image"]], un[~un["on_key_image"]]
    assert len(on_key) >= 10 and len(beside) >= 10, (len(on_key), len(beside))
    key_files = set(info.lesions["file_name"])
    assert on_key["file_name"].isin(key_files).all()
    assert not beside["file_name"].isin(key_files).any()
    for r in beside.itertuples():
        series_keys = keys[r.file_name[:13]]
        # on a written neighbouring slice, and on none of the series' key slices
        assert min(abs(r.slice_index - k) for k in series_keys) <= 5
        assert not any(r.first_slice <= k <= r.last_slice for k in series_keys)


# follow-up dynamics (issue 19) --------------------------------------------------------------
@pytest.fixture(scope="module")
def patients():
    """Planned patients (placement and follow-up, no rendering)."""
    from deeplesion_lab.demo.cohort import build_patient, plan_cohort

    return [build_patient(p, 31, 256) for p in plan_cohort(16, seed=31)]


def test_lesions_grow_shrink_vanish_appear_and_split(patients) -> None:
    steps, vanish, new, splits, replaced = [], 0, 0, [], []
    for pt in patients:
        by_num = {tr.number: tr for tr in pt.tracks}
        for tr in pt.tracks:
            if tr.kind == "unannotated":
                continue
            pres = tr.present
            for k in range(1, len(pres)):
                if pres[k - 1] and pres[k]:
                    steps.append(tr.changes[k][3] / tr.changes[k - 1][3])
                vanish += pres[k - 1] and not pres[k]
                new += pres[k] and not pres[k - 1]
            if tr.kind == "split":
                k = tr.present.index(True)
                par = by_num[tr.related_to]
                assert k > 0 and par.present[k]
                a, b = par.in_study(k), tr.in_study(k)
                d = np.hypot(a.u - b.u, a.v - b.v)
                assert a.ra < d < 3.0 * (a.ra + b.ra) and a.look.kind == b.look.kind
                splits.append(tr)
            if tr.kind == "new near a vanished one":
                k = tr.present.index(True)
                old = by_num[tr.related_to]
                assert old.present[k - 1] and not old.present[k]
                a, b = old.in_study(k - 1), tr.in_study(k)
                assert np.hypot(a.u - b.u, a.v - b.v) < max(12.0, 1.5 * a.ra) + 8.0
                replaced.append(tr)
    steps = np.array(steps)
    assert (steps > 1.2).sum() >= 5 and (steps < 0.8).sum() >= 5
    assert vanish >= 5 and new >= 5
    assert splits and replaced


def test_similar_lesions_close_together_in_one_organ(patients) -> None:
    sibs = []
    for pt in patients:
        by_num = {tr.number: tr for tr in pt.tracks}
        for tr in pt.tracks:
            if tr.kind != "sibling":
                continue
            main = by_num[tr.related_to]
            a, b = main.base, tr.base
            assert tr.site == main.site and a.look.kind == b.look.kind
            assert abs(a.look.core - b.look.core) <= 4.0 + 1e-9
            assert np.hypot(a.u - b.u, a.v - b.v) < 1.3 * (a.ra + b.ra) + 27.0
            sibs.append(tr)
    assert len(sibs) >= 5


def test_patient_repositioned_between_studies(patients) -> None:
    multi = [pt for pt in patients if len(pt.studies) > 1]
    assert len(multi) >= 5
    rots = [st.rot for pt in multi for st in pt.studies[1:]]
    assert all(pt.studies[0].rot == 0 for pt in patients)
    assert max(abs(r) for r in rots) > np.radians(2) and max(abs(r) for r in rots) <= 0.1
    assert any(len({st.dz for st in pt.studies}) > 1 for pt in multi)
    assert any(len({(st.z0 / st.dz) % 1 for st in pt.studies} | {st.ox for st in pt.studies}) > 1
               for pt in multi)


def test_rotated_studies_keep_boxes_on_their_lesions(truth: pd.DataFrame,
                                                     measures: pd.DataFrame) -> None:
    rot = truth.loc[truth["study_rotation_deg"].abs() > 1.5, "truth_id"]
    m = measures[measures["truth_id"].isin(set(rot)) & (measures["type"] != "bone")]
    assert len(m) >= 5
    assert ((m["inner"] - m["ring_median"]).abs() > 15).mean() >= 0.8


def test_location_alone_and_appearance_alone_are_ambiguous(truth: pd.DataFrame, info) -> None:
    """Across studies, some different lesions of a patient lie closer (normalised location)
    than some same lesion does, and some look alike (same site and kind)."""
    les = info.lesions.merge(truth[truth["annotated"]][["lesion_id", "track_id", "site",
                                                        "appearance"]], on="lesion_id")
    same, diff, alike = [], [], 0
    for _, g in les.groupby("patient_index"):
        loc = g[["location_x", "location_y", "location_z"]].to_numpy()
        st, tid = g["study_index"].to_numpy(), g["track_id"].to_numpy()
        kind = (g["site"] + g["appearance"]).to_numpy()
        for i in range(len(g)):
            for j in range(i + 1, len(g)):
                if st[i] == st[j]:
                    continue
                d = float(np.linalg.norm(loc[i] - loc[j]))
                (same if tid[i] == tid[j] else diff).append(d)
                alike += tid[i] != tid[j] and kind[i] == kind[j]
    assert len(same) >= 10
    assert min(diff) < max(same)
    assert alike >= 3


def test_no_model_reads_the_truth_file(tmp_path: Path) -> None:
    """Model code never names the truth file, and the models train with it unreadable."""
    import deeplesion_lab
    from deeplesion_lab.cli import main

    root = Path(deeplesion_lab.__file__).parent
    model_code = [*(root / "embedding").glob("*.py"), *(root / "detection").glob("*.py"),
                  *(root / n for n in ("mining.py", "maps.py", "retrieval.py", "suggest.py",
                                       "transforms.py", "volume.py"))]
    assert len(model_code) >= 10
    for f in model_code:
        text = f.read_text()
        for word in ("truth.parquet", "read_truth", "truth_path", "graph.truth"):
            assert word not in text, f"{f.name} mentions {word}"
    res = generate_demo(tmp_path / "d", n_patients=3, seed=7, size=160)
    real_truth = pd.read_parquet(res.truth_path)
    res.truth_path.write_bytes(b"not a parquet file: reading it fails")
    man = tmp_path / "m.parquet"
    run = tmp_path / "run"
    assert main(["manifest", str(res.csv_path), "--out", str(man)]) == 0
    # the embedding network trains with the recorded truth file unreadable
    assert main(["embed", str(man), "--run", str(run), "--truth", str(res.truth_path),
                 "--epochs", "1", "--no-progress"]) == 0
    # the clustering gives the same pseudo-labels whatever the truth file says (mine reads it
    # after fitting, to report NMI against the true types)
    import json
    import shutil

    scrambled = real_truth.copy()
    rng = np.random.default_rng(0)
    for c in ("coarse_type", "track_id", "coarse_type_name"):
        scrambled[c] = scrambled[c].to_numpy()[rng.permutation(len(scrambled))]
    labels, nmis = {}, {}
    for name, t in (("real", real_truth), ("scrambled", scrambled)):
        r = tmp_path / f"run_{name}"
        shutil.copytree(run, r)
        t.to_parquet(tmp_path / f"truth_{name}.parquet")
        info = json.loads((r / "run.json").read_text())
        info["truth"] = str(tmp_path / f"truth_{name}.parquet")
        (r / "run.json").write_text(json.dumps(info))
        assert main(["mine", "--run", str(r), "--clusters", "3"]) == 0
        labels[name] = pd.read_parquet(r / "pseudo_labels.parquet")
        nmis[name] = json.loads((r / "metrics.json").read_text())["mining"]["round_nmi_truth"]
    pd.testing.assert_frame_equal(labels["real"], labels["scrambled"])
    assert nmis["real"] != nmis["scrambled"]  # the report did read each truth file
