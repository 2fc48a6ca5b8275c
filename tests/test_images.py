"""Slices: HU loading, bad PNGs, windowing, slice context, resampling, crops, RECIST."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from deeplesion_lab import read_dl_info
from deeplesion_lab.images import (
    ImageError,
    MissingSliceWarning,
    apply_window,
    box_to_recist,
    crop_patch,
    key_slice_path,
    load_context,
    load_hu,
    read_png16,
    recist_diameters,
    recist_to_box,
    resample_spacing,
    slice_path,
    window_bounds,
    write_png16,
)


def real_key_rows(real_dir: Path) -> pd.DataFrame:
    """Rows of both real CSVs whose key slice is among the real PNGs."""
    frames = [read_dl_info(real_dir / n).lesions for n in
              ("DL_info_test.csv", "DL_info_kaggle_subset.csv")]
    allr = pd.concat(frames, ignore_index=True).drop_duplicates("lesion_id")
    root = real_dir / "Images_png"
    on_disk = allr["file_name"].map(lambda f: key_slice_path(root, f).is_file())
    return allr[on_disk]


def test_real_key_slices_load_as_hu_with_boxes_on_them(real_dir: Path) -> None:
    rows = real_key_rows(real_dir)
    assert rows["file_name"].nunique() == 23
    root = real_dir / "Images_png"
    for r in rows.itertuples():
        hu = load_hu(key_slice_path(root, r.file_name), (r.image_height, r.image_width))
        assert hu.dtype == np.int16 and hu.shape == (512, 512)
        assert hu.min() >= -2048 and hu.max() < 4000
        # air around the body
        assert np.percentile(hu, 5) < -900
        x1, y1, x2, y2 = (int(round(v)) for v in (r.bbox_x1, r.bbox_y1, r.bbox_x2, r.bbox_y2))
        assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 512
        inside = hu[y1:y2, x1:x2]
        # every real key lesion here is a liver lesion: soft-tissue HU, not air or bone
        assert -100 < float(np.median(inside)) < 250, r.file_name


def test_real_context_uses_neighbours_when_present(real_dir: Path) -> None:
    # 003663_01_03 has several slices on disk; the key slice's neighbours are mostly absent,
    # so the context falls back to the nearest present slice and says which file is missing.
    rows = real_key_rows(real_dir)
    r = rows.iloc[0].to_dict()
    with pytest.warns(MissingSliceWarning, match=r"\.png is missing"):
        ctx = load_context(real_dir / "Images_png", r, n_slices=3, target_spacing_mm=None)
    assert ctx.shape == (3, 512, 512)
    key = load_hu(key_slice_path(real_dir / "Images_png", r["file_name"])).astype(np.float32)
    np.testing.assert_array_equal(ctx[1], key)


def make_series(tmp_path: Path, n: int = 7, spacing_z: float = 1.0) -> tuple[Path, dict]:
    root = tmp_path / "Images_png"
    for i in range(1, n + 1):
        write_png16(root / "000007_01_02" / f"{i:03d}.png", np.full((32, 48), 10 * i, np.int16))
    row = {
        "file_name": "000007_01_02_004.png", "key_slice_index": 4, "spacing_z": spacing_z,
        "slice_start": 1, "slice_end": n, "image_height": 32, "image_width": 48,
    }
    return root, row


def test_context_resamples_to_target_interval(tmp_path: Path) -> None:
    root, row = make_series(tmp_path, spacing_z=1.0)
    ctx = load_context(root, row, n_slices=3, target_spacing_mm=2.0)
    # slices 2, 4, 6 (values 20, 40, 60)
    assert ctx[:, 0, 0].tolist() == [20.0, 40.0, 60.0]
    ctx = load_context(root, row, n_slices=5, target_spacing_mm=0.5)
    # fractional positions interpolate linearly: 3.0, 3.5, 4, 4.5, 5
    np.testing.assert_allclose(ctx[:, 0, 0], [30, 35, 40, 45, 50])
    native = load_context(root, row, n_slices=3, target_spacing_mm=None)
    assert native[:, 0, 0].tolist() == [30.0, 40.0, 50.0]


def test_missing_neighbour_falls_back_with_warning_naming_file(tmp_path: Path) -> None:
    root, row = make_series(tmp_path)
    missing = slice_path(root, row["file_name"], 5)
    missing.unlink()
    with pytest.warns(MissingSliceWarning, match="005.png is missing; using slice"):
        ctx = load_context(root, row, n_slices=3, target_spacing_mm=None)
    assert ctx[2, 0, 0] in (40.0, 60.0)
    with pytest.raises(ImageError, match="004.png: key slice file not found"):
        slice_path(root, row["file_name"], 4).unlink()
        load_context(root, row)


def test_bad_pngs_are_clear_errors(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    with pytest.raises(ImageError, match="corrupt.png: corrupt or unreadable"):
        read_png16(corrupt)
    eight = tmp_path / "eight.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(eight)
    with pytest.raises(ImageError, match=r"eight.png: expected a 16-bit grayscale PNG.*8-bit"):
        load_hu(eight)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(rgb)
    with pytest.raises(ImageError, match=r"rgb.png: .*colour"):
        load_hu(rgb)
    good = tmp_path / "good.png"
    write_png16(good, np.zeros((8, 10), np.int16))
    with pytest.raises(ImageError, match=r"good.png: image is 8x10 but Image_size says 512x512"):
        load_hu(good, (512, 512))
    with pytest.raises(ImageError, match="missing.png: slice file not found"):
        load_hu(tmp_path / "missing.png")
    jpeg = tmp_path / "fake.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(jpeg, format="JPEG")
    with pytest.raises(ImageError, match="fake.png: not a PNG"):
        load_hu(jpeg)


def test_png_roundtrip_offset(tmp_path: Path) -> None:
    hu = np.array([[-2048, -1024, 0], [40, 1000, 3071]], dtype=np.int16)
    write_png16(tmp_path / "s.png", hu)
    raw = read_png16(tmp_path / "s.png")
    assert raw.dtype == np.uint16
    assert raw[0, 2] == 32768
    np.testing.assert_array_equal(load_hu(tmp_path / "s.png"), hu)


def test_windowing_presets_and_custom() -> None:
    hu = np.array([-1000, -160, 40, 240, 2000], dtype=np.int16)
    soft = apply_window(hu, "soft tissue")
    assert soft.dtype == np.uint8
    assert soft.tolist() == [0, 0, 128, 255, 255]
    assert window_bounds("lung") == (-1350.0, 150.0)
    assert window_bounds(level=40, width=400) == (-160.0, 240.0)
    assert window_bounds(low=-175, high=275) == (-175.0, 275.0)
    f = apply_window(hu, (-175.0, 275.0), dtype=np.float32)
    assert f.dtype == np.float32 and f.min() == 0.0 and f.max() == 1.0
    for name in ("soft tissue", "lung", "bone", "liver", "brain"):
        lo, hi = window_bounds(name)
        assert lo < hi
    with pytest.raises(ValueError, match="unknown window preset 'abdomenx'"):
        window_bounds("abdomenx")
    with pytest.raises(ValueError, match="exactly one"):
        window_bounds("lung", level=3, width=4)


def test_resample_spacing_scales_image_and_boxes() -> None:
    img = np.zeros((2, 100, 100), np.float32)
    img[:, 40:60, 40:60] = 1.0
    out, boxes, scale = resample_spacing(img, 0.5, 1.0, np.array([[40, 40, 60, 60]]))
    assert out.shape == (2, 50, 50)
    assert scale == pytest.approx(0.5)
    np.testing.assert_allclose(boxes, [[20, 20, 30, 30]])
    assert out[0, 25, 25] == pytest.approx(1.0)


def test_crop_patch_pads_outside_and_resizes() -> None:
    img = np.arange(100 * 100, dtype=np.float32).reshape(100, 100)
    p = crop_patch(img, (40, 40, 60, 60), margin=0.5, out_size=None)
    assert p.shape == (40, 40)
    assert p[0, 0] == img[30, 30]
    edge = crop_patch(img, (0, 0, 10, 10), margin=0.5, out_size=None, fill=-1024)
    assert edge[0, 0] == -1024  # outside the image
    small = crop_patch(np.stack([img, img]), (40, 40, 60, 60), out_size=64)
    assert small.shape == (2, 64, 64)
    tiny = crop_patch(img, (50, 50, 51, 51), min_size=16, out_size=None)
    assert tiny.shape == (16, 16)


def test_recist_box_roundtrip(real_dir: Path) -> None:
    les = read_dl_info(real_dir / "DL_info_test.csv").lesions.head(200)
    cols = [f"recist_{a}{i}" for i in range(1, 5) for a in "xy"]
    for r in les.itertuples():
        rec = [getattr(r, c) for c in cols]
        box = recist_to_box(rec)
        if not r.box_clipped:
            # the release's boxes are the RECIST extent padded by 5 px
            np.testing.assert_allclose(box, [r.bbox_x1, r.bbox_y1, r.bbox_x2, r.bbox_y2], atol=0.01)
        long_, short = recist_diameters(rec)
        assert long_ == pytest.approx(r.long_diameter_px, rel=1e-3)
        assert short == pytest.approx(r.short_diameter_px, rel=1e-3)
    box = np.array([10.0, 20.0, 50.0, 35.0])
    np.testing.assert_allclose(recist_to_box(box_to_recist(box)), box)
