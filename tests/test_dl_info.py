"""DL_info.csv reading and row validation: real files and every bad-input case."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deeplesion_lab import read_dl_info
from deeplesion_lab.dl_info import OFFICIAL_COLUMNS, DLInfoError, make_lesion_id

GOOD_ROW = {
    "File_name": "000001_01_01_109.png",
    "Patient_index": "1",
    "Study_index": "1",
    "Series_ID": "1",
    "Key_slice_index": "109",
    "Measurement_coordinates": "233.537, 95.0204, 234.057, 106.977, 231.169, 101.605, 236.252, 101.143",
    "Bounding_boxes": "226.169, 90.0204, 241.252, 111.977",
    "Lesion_diameters_Pixel_": "11.9677, 5.10387",
    "Normalized_lesion_location": "0.44666, 0.283794, 0.434454",
    "Coarse_lesion_type": "3",
    "Possibly_noisy": "0",
    "Slice_range": "103, 115",
    "Spacing_mm_px_": "0.488281, 0.488281, 5",
    "Image_size": "512, 512",
    "DICOM_windows": "-175, 275",
    "Patient_gender": "F",
    "Patient_age": "62",
    "Train_Val_Test": "3",
}


def write_rows(path: Path, rows: list[dict], columns=OFFICIAL_COLUMNS) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return path


def variant(i: int, **changes: str) -> dict:
    """A valid row on its own key image (slice 103+i), with some fields changed."""
    r = dict(GOOD_ROW)
    r["File_name"] = f"000001_01_01_{103 + i:03d}.png"
    r["Key_slice_index"] = str(103 + i)
    r.update(changes)
    return r


# -- real data --------------------------------------------------------------------------------


def test_real_test_split_loads_whole(real_dir: Path) -> None:
    info = read_dl_info(real_dir / "DL_info_test.csv")
    les = info.lesions
    assert len(info.rejected) == 0
    assert len(les) == 4927
    assert les["file_name"].nunique() == 4831
    assert les["patient_index"].nunique() == 665
    assert int(les["possibly_noisy"].sum()) == 15
    counts = les["coarse_type"].value_counts().sort_index()
    assert counts.to_dict() == {1: 108, 2: 1173, 3: 864, 4: 700, 5: 1100, 6: 234, 7: 339, 8: 409}
    assert (les["split"] == 3).all()
    assert les["lesion_id"].is_unique
    # Typed fields carry the real values of the first row (checked by hand against the CSV).
    first = les.iloc[0]
    assert first["file_name"] == "000001_01_01_109.png"
    assert first["bbox_x1"] == pytest.approx(226.169)
    assert first["spacing_z"] == pytest.approx(5.0)
    assert (first["window_low"], first["window_high"]) == (-175.0, 275.0)
    assert first["age"] == 62 and first["gender"] == "F"
    assert first["coarse_type_name"] == "mediastinum"


def test_real_kaggle_subset_extra_columns_and_float_ages(real_dir: Path) -> None:
    info = read_dl_info(real_dir / "DL_info_kaggle_subset.csv")
    assert len(info.rejected) == 0
    assert len(info.lesions) == 1349
    assert info.extra_columns == ["kaggle_path", "Radius", "bbox"]
    assert {"kaggle_path", "Radius", "bbox"} <= set(info.lesions.columns)
    assert info.lesions["age"].notna().all()
    assert info.lesions["age"].iloc[0] == 62
    assert (info.lesions["coarse_type"] == -1).sum() == 936  # train rows, unlabeled as released
    assert info.lesions["split"].value_counts().to_dict() == {1: 936, 2: 187, 3: 226}


def test_ids_are_stable_across_reads_and_row_order(real_dir: Path, tmp_path: Path) -> None:
    src = real_dir / "DL_info_test.csv"
    a = read_dl_info(src).lesions
    b = read_dl_info(src).lesions
    assert a["lesion_id"].tolist() == b["lesion_id"].tolist()
    shuffled = pd.read_csv(src, dtype=str, keep_default_na=False).sample(frac=1, random_state=0)
    shuffled.to_csv(tmp_path / "shuffled.csv", index=False)
    c = read_dl_info(tmp_path / "shuffled.csv").lesions
    assert set(c["lesion_id"]) == set(a["lesion_id"])
    merged = a.merge(c, on="lesion_id", suffixes=("", "_c"))
    assert (merged["file_name"] == merged["file_name_c"]).all()


def test_lesion_id_format() -> None:
    lid = make_lesion_id("000001_01_01_109.png", [1, 2, 3, 4, 5, 6, 7, 8])
    assert lid.startswith("000001_01_01_109-") and len(lid.split("-")[1]) == 8
    assert lid != make_lesion_id("000001_01_01_109.png", [1, 2, 3, 4, 5, 6, 7, 9])


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "column", "reason_part"),
    [
        ({"Bounding_boxes": "226.169, abc, 241.252, 111.977"}, "Bounding_boxes", "malformed"),
        ({"Bounding_boxes": "226.169, 90.0, 241.252"}, "Bounding_boxes", "expected 4"),
        ({"Patient_age": "sixty"}, "Patient_age", "age"),
        ({"Lesion_diameters_Pixel_": "0, 5.1"}, "Lesion_diameters_Pixel_", "positive"),
        ({"Lesion_diameters_Pixel_": "11.9, -2"}, "Lesion_diameters_Pixel_", "positive"),
        ({"Coarse_lesion_type": "9"}, "Coarse_lesion_type", "unknown coarse type"),
        ({"Coarse_lesion_type": "0"}, "Coarse_lesion_type", "unknown coarse type"),
        ({"Train_Val_Test": "4"}, "Train_Val_Test", "unknown split"),
        ({"Slice_range": "110, 115"}, "Key_slice_index", "outside Slice_range"),
        ({"Bounding_boxes": "600, 90, 640, 111"}, "Bounding_boxes", "outside the image"),
        ({"Bounding_boxes": "-40, 90, 20, 111"}, "Bounding_boxes", "outside the image"),
        ({"Bounding_boxes": "241, 90, 226, 111"}, "Bounding_boxes", "x2 > x1"),
        ({"Spacing_mm_px_": "0.48, 0.48, 0"}, "Spacing_mm_px_", "positive"),
        ({"Possibly_noisy": "2"}, "Possibly_noisy", "0 or 1"),
        ({"Patient_index": "2"}, "Patient_index", "File_name"),
        ({"File_name": "patient1.png"}, "File_name", "expected"),
        ({"DICOM_windows": "275, -175"}, "DICOM_windows", "below"),
        ({"Normalized_lesion_location": "0.4, nan, 0.4"}, "Normalized_lesion_location", "malformed"),
    ],
)
def test_bad_row_is_rejected_with_line_column_value_and_reason(
    tmp_path: Path, changes: dict, column: str, reason_part: str
) -> None:
    rows = [variant(0), variant(1, **changes), variant(2)]
    info = read_dl_info(write_rows(tmp_path / "DL_info.csv", rows))
    # the two good rows are kept
    assert len(info.lesions) == 2
    assert info.lesions["source_line"].tolist() == [2, 4]
    rej = info.rejected
    assert set(rej["line"]) == {3}, rej
    hit = rej[rej["column"] == column]
    assert len(hit) >= 1, rej
    assert reason_part in hit["reason"].iloc[0]
    assert hit["value"].iloc[0] == rows[1][column]
    assert hit["file_name"].iloc[0] == rows[1]["File_name"]


def test_box_slightly_past_border_is_clipped_and_kept(tmp_path: Path) -> None:
    rows = [variant(0, Bounding_boxes="-3.5, 90, 20, 514.2")]
    info = read_dl_info(write_rows(tmp_path / "DL_info.csv", rows))
    assert len(info.rejected) == 0
    r = info.lesions.iloc[0]
    assert bool(r["box_clipped"])
    assert (r["bbox_x1"], r["bbox_y2"]) == (0.0, 512.0)
    assert r["bbox_x2"] == 20.0


def test_empty_age_is_null_and_float_age_accepted(tmp_path: Path) -> None:
    rows = [variant(0, Patient_age=""), variant(1, Patient_age="62.0")]
    les = read_dl_info(write_rows(tmp_path / "DL_info.csv", rows)).lesions
    assert les["age"].isna().tolist() == [True, False]
    assert les["age"].iloc[1] == 62


def test_duplicate_lesion_is_reported_not_silently_merged(tmp_path: Path) -> None:
    rows = [variant(0), variant(0)]
    info = read_dl_info(write_rows(tmp_path / "DL_info.csv", rows))
    assert len(info.lesions) == 1
    assert info.rejected["line"].tolist() == [3]
    assert "duplicate of line 2" in info.rejected["reason"].iloc[0]


def test_several_problems_in_one_row_are_all_reported(tmp_path: Path) -> None:
    rows = [variant(0, Coarse_lesion_type="12", Train_Val_Test="0")]
    info = read_dl_info(write_rows(tmp_path / "DL_info.csv", rows))
    assert set(info.rejected["column"]) == {"Coarse_lesion_type", "Train_Val_Test"}
    assert info.n_rejected_rows == 1


def test_missing_required_column_names_it(tmp_path: Path) -> None:
    cols = [c for c in OFFICIAL_COLUMNS if c != "Spacing_mm_px_"]
    path = write_rows(tmp_path / "DL_info.csv", [variant(0)], columns=cols)
    with pytest.raises(DLInfoError, match="Spacing_mm_px_") as exc:
        read_dl_info(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize(
    "content",
    [b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe\x00garbage" * 50, b"", b"just one line without columns\n"],
)
def test_unreadable_file_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "DL_info.csv"
    path.write_bytes(content)
    with pytest.raises(DLInfoError, match="DL_info.csv"):
        read_dl_info(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DLInfoError, match="no such file"):
        read_dl_info(tmp_path / "nope.csv")
    with pytest.raises(DLInfoError, match="directory"):
        read_dl_info(tmp_path)


def test_extra_columns_kept_as_text(tmp_path: Path) -> None:
    cols = [*OFFICIAL_COLUMNS, "my_note", "lesion_id"]
    row = variant(0, my_note="checked", lesion_id="x")
    les = read_dl_info(write_rows(tmp_path / "DL_info.csv", [row], columns=cols)).lesions
    assert les["my_note"].iloc[0] == "checked"
    # a clashing extra column is renamed, never overwriting the computed id
    assert les["extra_lesion_id"].iloc[0] == "x"
    assert les["lesion_id"].iloc[0].startswith("000001_01_01_103-")


def test_typed_dtypes_follow_the_schema(real_dir: Path) -> None:
    from deeplesion_lab.manifest import load_schema

    les = read_dl_info(real_dir / "DL_info_test.csv").lesions
    schema = load_schema()["columns"]
    for col, spec in schema.items():
        if col in ("image_path", "has_image"):
            continue
        want = spec["dtype"]
        got = str(les[col].dtype)
        if want == "string":
            assert got in ("string", "str", "object"), (col, got)
        else:
            assert got == want, (col, got, want)
    assert np.isfinite(les[["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]].to_numpy()).all()
