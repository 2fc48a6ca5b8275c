"""Sub-volumes: geometry on hand-made series, demo data and the real DeepLesion slices."""

from __future__ import annotations

import numpy as np
import pytest

from deeplesion_lab.images import load_hu, write_png16
from deeplesion_lab.volume import (
    SubVolume,
    VolumeError,
    format_indices,
    lesion_subvolume,
    load_subvolume,
    resample_isotropic,
)

SERIES = "000007_02_01"


def _row(key=12, lo=10, hi=14, size=(64, 80), spacing=(0.5, 0.6, 2.5)):
    box = (20.0, 14.0, 41.0, 33.0)
    return {
        "lesion_id": "L1", "file_name": f"{SERIES}_{key:03d}.png", "key_slice_index": key,
        "slice_start": lo, "slice_end": hi, "spacing_x": spacing[0], "spacing_y": spacing[1],
        "spacing_z": spacing[2], "image_height": size[0], "image_width": size[1],
        "bbox_x1": box[0], "bbox_y1": box[1], "bbox_x2": box[2], "bbox_y2": box[3],
        "recist_x1": 25.0, "recist_y1": 24.0, "recist_x2": 36.0, "recist_y2": 24.0,
        "recist_x3": 30.5, "recist_y3": 19.0, "recist_x4": 30.5, "recist_y4": 28.0,
    }


def _series(root, indices, size=(64, 80), odd=None):
    """Slices whose value encodes their index (HU = 10 * index), one bright marker each."""
    for i in indices:
        shape = odd[1] if odd and i == odd[0] else size
        hu = np.full(shape, 10 * i, dtype=np.int16)
        hu[5, 7] = 3000
        write_png16(root / SERIES / f"{i:03d}.png", hu)


def test_geometry_of_a_complete_range(tmp_path):
    _series(tmp_path, range(10, 15))
    vol = load_subvolume(tmp_path, _row())
    assert vol.shape == (5, 64, 80)
    assert vol.hu.dtype == np.int16 and vol.hu.flags.c_contiguous
    assert vol.spacing == (2.5, 0.6, 0.5)  # (z, y, x): z from the slice interval
    assert vol.key_z == 2.0
    np.testing.assert_array_equal(vol.slice_positions, [10, 11, 12, 13, 14])
    # plane k is slice 10 + k, pixels unchanged
    assert [int(vol.hu[k, 0, 0]) for k in range(5)] == [100, 110, 120, 130, 140]
    np.testing.assert_array_equal(vol.key_slice, load_hu(tmp_path / SERIES / "012.png"))
    np.testing.assert_allclose(vol.box, [20, 14, 41, 33])
    np.testing.assert_allclose(vol.recist[:, 2], 2.0)
    np.testing.assert_allclose(vol.recist[0, :2], [25, 24])
    assert vol.missing == () == vol.left_out and vol.slice_range == (10, 14)
    assert vol.extent_mm == (10.0, 63 * 0.6, 79 * 0.5)
    mask = vol.box_mask()
    assert mask[2].sum() == (41 - 20 + 1) * (33 - 14 + 1) and mask.sum() == mask[2].sum()
    assert mask[2, 14, 20] == 1 and mask[2, 13, 20] == 0


def test_missing_slices_name_the_folder(tmp_path):
    _series(tmp_path, [10, 11, 12, 14])
    with pytest.raises(VolumeError, match=rf"{SERIES}.*1 of 5 slices.*10-014.*missing \(013\)"):
        load_subvolume(tmp_path, _row())
    vol = load_subvolume(tmp_path, _row(), missing="crop")
    np.testing.assert_array_equal(vol.slice_positions, [10, 11, 12])
    assert vol.missing == (13,) and vol.left_out == (14,)
    assert vol.key_z == 2.0


def test_missing_key_slice_and_folder(tmp_path):
    _series(tmp_path, [10, 11, 13, 14])
    with pytest.raises(VolumeError, match=rf"{SERIES}.*key slice 012.png not found"):
        load_subvolume(tmp_path, _row(), missing="crop")
    with pytest.raises(VolumeError, match="series folder not found"):
        load_subvolume(tmp_path / "nowhere", _row())
    with pytest.raises(VolumeError, match="outside its Slice_range"):
        load_subvolume(tmp_path, _row(key=20))
    bad = _row()
    del bad["spacing_z"]
    with pytest.raises(VolumeError, match="spacing_z"):
        load_subvolume(tmp_path, bad)


def test_mixed_sizes_name_folder_and_slices(tmp_path):
    _series(tmp_path, range(10, 15), odd=(13, (64, 64)))
    with pytest.raises(VolumeError, match=rf"{SERIES}.*mixed sizes.*64x80: 010-012, 014; 64x64: 013"):
        load_subvolume(tmp_path, _row())
    _series(tmp_path / "b", range(10, 15))
    with pytest.raises(VolumeError, match="another size.*Image_size says 32x32"):
        load_subvolume(tmp_path / "b", _row(size=(32, 32)))


def test_isotropic_resampling_moves_points_with_voxels(tmp_path):
    _series(tmp_path, range(10, 15))
    vol = load_subvolume(tmp_path, _row(spacing=(0.5, 0.5, 2.0)))
    hu = vol.hu.copy()
    hu[:] = 0
    hu[3, 10, 20] = 2000  # one bright voxel at (z, y, x) = (3, 10, 20)
    iso = resample_isotropic(SubVolume(**{**vol.__dict__, "hu": hu}))
    assert iso.spacing == (0.5, 0.5, 0.5)
    assert iso.shape == (17, 64, 80)  # 4 intervals of 2 mm -> 16 of 0.5 mm
    assert np.unravel_index(np.argmax(iso.hu), iso.shape) == (12, 10, 20)
    assert iso.hu[12, 10, 20] == 2000 and iso.hu[10, 10, 20] == 1000  # halfway: linear
    assert iso.key_z == 8.0
    np.testing.assert_allclose(iso.recist[:, 2], 8.0)
    np.testing.assert_allclose(iso.slice_positions[[0, 8, 16]], [10, 12, 14])
    coarse = resample_isotropic(SubVolume(**{**vol.__dict__, "hu": hu}), 1.0)
    assert coarse.shape == (9, 32, 40)
    assert np.unravel_index(np.argmax(coarse.hu), coarse.shape) == (6, 5, 10)
    np.testing.assert_allclose(coarse.box, np.array([20, 14, 41, 33]) / 2)
    # the same through load_subvolume's option, on the real pixels
    again = load_subvolume(tmp_path, _row(spacing=(0.5, 0.5, 2.0)), isotropic=True)
    assert again.shape == (17, 64, 80) and int(again.hu[2, 0, 0]) == 105  # between 100 and 110


def test_format_indices():
    assert format_indices([7, 1, 2, 3, 9, 10]) == "001-003, 007, 009-010"
    assert format_indices([]) == ""


# demo data ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from deeplesion_lab.demo import generate_demo
    from deeplesion_lab.manifest import build_manifest

    out = tmp_path_factory.mktemp("demo_vol")
    generate_demo(out, n_patients=1, seed=11, size=128)
    m, _ = build_manifest(out / "DL_info.csv")
    return m


def test_demo_subvolumes_cover_their_slice_range(demo):
    root = demo.attrs["images_root"]
    assert len(demo) >= 3
    for _, row in demo.iterrows():
        vol = lesion_subvolume(demo, row["lesion_id"])
        n = int(row["slice_end"]) - int(row["slice_start"]) + 1
        assert vol.shape == (n, 128, 128)
        assert vol.key_z == row["key_slice_index"] - row["slice_start"]
        assert vol.spacing == (row["spacing_z"], row["spacing_y"], row["spacing_x"])
        key = load_hu(f"{root}/{row['image_path']}")
        np.testing.assert_array_equal(vol.key_slice, key)
        np.testing.assert_allclose(vol.box, row[["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]].astype(float))
    with pytest.raises(VolumeError, match="unknown lesion id"):
        lesion_subvolume(demo, "nope")


# real DeepLesion slices -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real(real_dir):
    from deeplesion_lab.manifest import build_manifest

    m, _ = build_manifest(real_dir / "DL_info_test.csv", real_dir / "Images_png")
    return m


def _lid(m, file_name):
    return str(m.loc[m["file_name"] == file_name, "lesion_id"].iloc[0])


def test_real_series_with_neighbours(real):
    # 003657_01_01: key slices 049, 050 and 069 on disk, Slice_range 043-076, 5 mm apart
    lid = _lid(real, "003657_01_01_049.png")
    with pytest.raises(VolumeError, match=r"003657_01_01: 31 of 34 slices .* missing "
                                          r"\(043-048, 051-068, 070-076\)"):
        lesion_subvolume(real, lid)
    vol = lesion_subvolume(real, lid, missing="crop")
    assert vol.shape == (2, 512, 512)
    np.testing.assert_allclose(vol.spacing, (5.0, 0.910156, 0.910156), atol=1e-6)
    assert vol.key_z == 0.0 and len(vol.missing) == 31
    assert vol.left_out == (69,)  # on disk, beyond the gap: listed, not dropped unsaid
    np.testing.assert_array_equal(vol.hu[1], load_hu(vol.folder / "050.png"))
    assert vol.hu.min() <= -1000 and np.median(vol.hu) < 0  # air and body, in HU
    other = lesion_subvolume(real, _lid(real, "003657_01_01_050.png"), missing="crop")
    assert other.key_z == 1.0 and other.shape == vol.shape
    row = real.loc[real["lesion_id"] == lid].iloc[0]
    np.testing.assert_allclose(vol.box, row[["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]].astype(float))
    # isotropic at 0.910156 mm: 5 mm -> 5.49 planes, the key plane stays first
    iso = resample_isotropic(vol)
    assert iso.shape[0] == int(np.floor(5.0 / 0.91015625)) + 1 and iso.key_z == 0.0
    np.testing.assert_array_equal(iso.hu[0], vol.hu[0])


def test_real_single_slice_is_a_one_plane_volume(real):
    vol = lesion_subvolume(real, _lid(real, "000047_10_01_054.png"), missing="crop")
    assert vol.shape == (1, 512, 512) and vol.key_z == 0.0
    assert vol.left_out == (51,) and 54 not in vol.missing and 52 in vol.missing
