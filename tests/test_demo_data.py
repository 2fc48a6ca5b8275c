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
    for opt in ("--out", "--patients", "--seed", "--size", "--like", "--limit", "--jobs"):
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
    assert sorted(t["lesion_id"]) == sorted(got["lesion_id"])
    assert t["coarse_type"].between(1, 8).all()
