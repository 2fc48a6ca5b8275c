"""The dictionary-sample transforms (``deeplesion_lab.transforms``) on a slice with known HU."""

from __future__ import annotations

import numpy as np
import pytest
from embedding_fixtures import make_synthetic

from deeplesion_lab.images import key_slice_path, load_hu
from deeplesion_lab.manifest import write_manifest
from deeplesion_lab.transforms import (
    Compose,
    CropLesion,
    IntensityJitter,
    LoadContext,
    RandomFlip,
    ResampleSpacing,
    Window,
    sample_from_row,
)


@pytest.fixture(scope="module")
def row_and_root(tmp_path_factory):
    d = tmp_path_factory.mktemp("transforms")
    csv_path, _ = make_synthetic(d / "data", n_per_type=1, size=96, seed=2)
    les = write_manifest(csv_path, d / "m.parquet").lesions
    return les.iloc[0].to_dict(), d / "data" / "Images_png"


def _sample(row, h=8, w=10) -> dict:
    s = sample_from_row({**row, "bbox_x1": 1.0, "bbox_y1": 2.0, "bbox_x2": 4.0, "bbox_y2": 6.0})
    s["image"] = np.arange(2 * h * w, dtype=np.float32).reshape(2, h, w)
    return s


def test_sample_from_row(row_and_root):
    row, _ = row_and_root
    s = sample_from_row(row)
    np.testing.assert_allclose(
        s["boxes"], [[row["bbox_x1"], row["bbox_y1"], row["bbox_x2"], row["bbox_y2"]]],
        rtol=1e-6)
    assert s["boxes"].dtype == np.float32 and s["labels"].dtype == np.int64
    assert s["labels"].tolist() == [int(row["coarse_type"])]
    assert sample_from_row(row, label=5)["labels"].tolist() == [5]
    assert s["spacing"] == float(row["spacing_x"]) and s["row"] == row


def test_load_context_window_and_crop(row_and_root):
    row, root = row_and_root
    s = LoadContext(root, n_slices=3, target_spacing_mm=None)(sample_from_row(row))
    key = load_hu(key_slice_path(root, row["file_name"]),
                  (row["image_height"], row["image_width"]))
    assert s["image"].shape == (3, *key.shape)
    np.testing.assert_array_equal(s["image"][1], key)  # the key slice in the middle
    assert s["substituted_slices"] == []
    w = Window((-100.0, 100.0))(dict(s))
    expected = np.clip((key.astype(np.float32) + 100.0) / 200.0, 0.0, 1.0)
    np.testing.assert_allclose(w["image"][1], expected, atol=1e-6)
    assert w["image"].dtype == np.float32
    own = Window("row")(dict(s, image=s["image"].copy()))
    lo, hi = row["window_low"], row["window_high"]
    np.testing.assert_allclose(
        own["image"][1], np.clip((key - lo) / (hi - lo), 0, 1), atol=1e-6)
    c = CropLesion(out_size=32)(dict(s))
    assert c["image"].shape == (3, 32, 32)
    with pytest.raises(ValueError):
        Window("no-such-window")


def test_resample_spacing_scales_image_and_boxes(row_and_root):
    row, _ = row_and_root
    s = _sample(row)
    s["spacing"] = 0.8
    out = ResampleSpacing(target_mm=0.4)(s)
    assert out["image"].shape == (2, 16, 20) and out["spacing"] == 0.4
    np.testing.assert_allclose(out["boxes"], [[2.0, 4.0, 8.0, 12.0]])


def test_random_flip(row_and_root):
    row, _ = row_and_root
    s = _sample(row)
    img, box = s["image"].copy(), s["boxes"].copy()
    out = RandomFlip(p=1.0, seed=0)(s)
    np.testing.assert_array_equal(out["image"], img[..., ::-1])
    assert out["boxes"].tolist() == [[10 - 4.0, 2.0, 10 - 1.0, 6.0]]
    back = RandomFlip(p=1.0, seed=0)(out)
    np.testing.assert_array_equal(back["image"], img)
    np.testing.assert_array_equal(back["boxes"], box)
    both = RandomFlip(p=1.0, vertical=True, seed=0)(_sample(row))
    np.testing.assert_array_equal(both["image"], img[..., ::-1, ::-1])
    assert both["boxes"].tolist() == [[6.0, 8 - 6.0, 9.0, 8 - 2.0]]
    never = RandomFlip(p=0.0, vertical=True, seed=0)(_sample(row))
    np.testing.assert_array_equal(never["image"], img)


def test_intensity_jitter_is_seeded_and_clipped():
    base = np.linspace(0, 1, 40, dtype=np.float32).reshape(1, 4, 10)
    same = IntensityJitter(contrast=0.0, brightness=0.0, seed=1)({"image": base.copy()})
    np.testing.assert_array_equal(same["image"], base)
    a = IntensityJitter(0.5, 0.5, seed=3)({"image": base.copy()})["image"]
    b = IntensityJitter(0.5, 0.5, seed=3)({"image": base.copy()})["image"]
    c = IntensityJitter(0.5, 0.5, seed=4)({"image": base.copy()})["image"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.min() >= 0.0 and a.max() <= 1.0 and a.dtype == np.float32


def test_compose_runs_in_order(row_and_root):
    row, root = row_and_root
    pipe = Compose([LoadContext(root, n_slices=3, target_spacing_mm=None), Window("wide"),
                    CropLesion(out_size=24)])
    out = pipe(sample_from_row(row))
    assert out["image"].shape == (3, 24, 24)
    assert 0.0 <= out["image"].min() and out["image"].max() <= 1.0
    assert repr(pipe).startswith("Compose([LoadContext(") and "CropLesion" in repr(pipe)
