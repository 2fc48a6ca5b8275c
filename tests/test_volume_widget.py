"""VolumeView headless: what travels to the front end, following a selection, missing slices."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from widgets_fixtures import make_tiny_run

from deeplesion_lab.volume import load_subvolume
from widgets.data import LabData
from widgets.models import ViewerModel
from widgets.volume_view import VolumeView


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("volume_widget"), source="hand")


def test_volume_travels_as_int16_bytes_with_geometry(tiny):
    data = LabData.from_run(tiny.run_dir)
    lid = tiny.lesion_ids[2]  # the study's third lesion: key slice 12 of 9-13
    w = VolumeView(data, lid)
    row = data.row(lid)
    assert isinstance(w.volume, bytes)
    assert w.volume_shape == [5, 128, 128] and len(w.volume) == 5 * 128 * 128 * 2
    assert w.spacing == [2.0, 0.8, 0.8]
    ref = load_subvolume(data.images_root, row)
    got = np.frombuffer(w.volume, dtype="<i2").reshape(w.volume_shape)
    np.testing.assert_array_equal(got, ref.hu)
    assert w.annotation["z"] == int(row["key_slice_index"]) - int(row["slice_start"]) == 3
    assert w.annotation["box"] == [float(row[f"bbox_{k}"]) for k in ("x1", "y1", "x2", "y2")]
    assert [p[2] for p in w.annotation["recist"]] == [3.0] * 4
    cx = (row["bbox_x1"] + row["bbox_x2"]) / 2
    assert w.cursor[0] == 3 and abs(w.cursor[2] - cx) <= 0.5
    # the lesion's own window is a preset, and presets set level/width
    lo, hi = data.lesion_window(row)
    assert w.preset == "dicom" and w.presets["dicom"] == [(lo + hi) / 2, hi - lo]
    w.preset = "lung"
    assert (w.window_level, w.window_width) == (-600.0, 1500.0)
    assert w.status == "" and "5×128×128" in w.subtitle
    assert w.load_ms > 0


def test_follows_the_viewer_selection_and_waits_while_inactive(tiny):
    data = LabData.from_run(tiny.run_dir)
    viewer = ViewerModel(data)
    viewer.show_lesion(tiny.lesion_ids[0])
    w = VolumeView(viewer)
    assert w.lesion_id == tiny.lesion_ids[0]
    serial = w.volume_serial
    other = next(i for i in tiny.lesion_ids if data.row(i)["file_name"] != data.row(w.lesion_id)["file_name"])
    viewer.show_lesion(other)
    assert w.lesion_id == other and w.volume_serial == serial + 1
    viewer.set_preset("bone")
    assert (w.window_level, w.window_width) == (400.0, 1800.0) and w.preset == "bone"
    w.active = False
    viewer.show_lesion(tiny.lesion_ids[5])
    assert w.lesion_id == other  # remembered, not loaded
    w.active = True
    assert w.lesion_id == tiny.lesion_ids[5] and w.volume_serial == serial + 2
    # a request from the front end ("id#n", so the same id can be asked for again)
    w.requested_lesion = f"{tiny.lesion_ids[1]}#1"
    assert w.lesion_id == tiny.lesion_ids[1]


def test_missing_slices_are_said_and_an_absent_key_slice_is_an_error(tiny, tmp_path):
    root = tmp_path / "Images_png"
    shutil.copytree(tiny.images_root, root)
    data = LabData.from_manifest(tiny.manifest, root)
    lid = tiny.lesion_ids[0]  # key slice 11 of 9-13
    folder = Path(root) / str(data.row(lid)["file_name"])[:-8]
    (folder / "009.png").unlink()
    w = VolumeView(data, lid)
    assert w.volume_shape == [4, 128, 128]
    assert re.search(r"range 009-013; not on disk: 009", w.status)
    (folder / "011.png").unlink()
    w.show_lesion(lid)
    assert w.volume == b"" and w.volume_shape == [0, 0, 0]
    assert str(folder) in w.status and "key slice 011.png not found" in w.status


def test_run_directory_and_manifest_sources(tiny):
    a = VolumeView(tiny.run_dir)
    b = VolumeView(tiny.manifest, a.lesion_id)
    assert a.volume == b.volume and a.volume_shape[0] == 5
    with pytest.raises(TypeError, match="expected a run directory"):
        VolumeView(42)


def test_isotropic_on_request(tiny):
    w = VolumeView(tiny.run_dir, tiny.lesion_ids[0], isotropic=True)
    assert w.spacing == [0.8, 0.8, 0.8]
    assert w.volume_shape == [int(4 * 2.0 / 0.8) + 1, 128, 128]
    assert w.annotation["z"] == pytest.approx(2 * 2.0 / 0.8)


def test_esm_is_self_contained():
    src = (Path(__file__).resolve().parents[1] / "widgets" / "volume_view.js").read_text()
    assert not re.search(r"^\s*import\s", src, re.M), "the ESM must not import anything"
    assert "http://" not in src and "https://" not in src
    assert "export default" in src


def test_itk_view_says_what_is_missing(tiny):
    pytest.importorskip("traitlets")
    try:
        import itkwidgets  # noqa: F401
    except ImportError:
        w = VolumeView(tiny.run_dir)
        with pytest.raises(Exception, match="itkwidgets is not installed"):
            w.itk_view()
    else:
        pytest.skip("itkwidgets is installed (its viewer needs the internet; not tested here)")


def test_lesion_lab_panel_loads_when_opened(tiny):
    from widgets import LesionLab

    lab = LesionLab(tiny.run_dir, user="vol-tester", store=None)
    assert lab.volume_panel in lab.children and lab.volume.active is False
    lab.show_lesion(tiny.lesion_ids[3])
    assert lab.volume.volume == b""  # closed: nothing loaded
    lab.volume_panel.selected_index = 0
    assert lab.volume.lesion_id == tiny.lesion_ids[3] and lab.volume.volume_shape[0] == 5
    lab.show_lesion(tiny.lesion_ids[6])
    assert lab.volume.lesion_id == tiny.lesion_ids[6]
