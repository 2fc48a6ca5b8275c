"""The anywidget classes, headless: traits, binary transport, and the Python side of what the
browser sends (a scroll, a click, a lasso, a filter, a correction request).

Front-end messages are fed through ``Widget._handle_msg`` exactly as the kernel's comm delivers
them; messages to the front end are captured by replacing the widget's comm with a recorder.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import traitlets as t
from widgets_fixtures import make_tiny_run

from deeplesion_lab.images import WINDOW_PRESETS, load_hu, slice_path
from deeplesion_lab.labels import LabelStore
from widgets import ESM_FILES, EmbeddingMap, LesionLab, SliceViewer
from widgets.data import LabData, WidgetDataError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("widgets"), source="hand")


@pytest.fixture
def lab(tiny, tmp_path) -> LesionLab:
    run = tmp_path / "run"
    shutil.copytree(tiny.run_dir, run, ignore=shutil.ignore_patterns("labels.sqlite*"))
    return LesionLab(run, user="alice", size=300)


class Recorder:
    """Stands in for the kernel comm: keeps what the widget sends to the front end."""

    kernel = "recorder"

    def __init__(self, comm_id: str):
        self.comm_id = comm_id
        self.sent: list[tuple[dict, list]] = []

    def send(self, data=None, buffers=None, **_):
        self.sent.append((data, list(buffers or [])))

    def close(self, *a, **k):
        pass

    def on_msg(self, *a, **k):
        pass

    def on_close(self, *a, **k):
        pass


def record(widget) -> Recorder:
    rec = Recorder(widget.model_id)
    widget.comm = rec
    return rec


def from_front_end(widget, **state) -> None:
    """Deliver a state update as the browser's comm message would (a binary value, such as the
    map's selection, travels as a buffer of its own, as ipywidgets sends an ArrayBuffer)."""
    paths, buffers = [], []
    for k, v in list(state.items()):
        if isinstance(v, bytes | bytearray | memoryview):
            paths.append([k])
            buffers.append(memoryview(bytes(v)))
            state[k] = None
    widget._handle_msg(
        {"content": {"data": {"method": "update", "state": state, "buffer_paths": paths}},
         "buffers": buffers}
    )


def _hu(widget: SliceViewer) -> np.ndarray:
    h, w = widget.image_shape
    return np.frombuffer(widget.image, dtype="<i2").reshape(h, w)


# slice viewer ------------------------------------------------------------------------------------
def test_viewer_sends_raw_hu_as_binary_and_follows_the_front_end(lab):
    v = lab.viewer
    m = lab.model.viewer
    ref = load_hu(slice_path(lab.model.data.images_root, m.file_name, m.slice_index))
    assert np.array_equal(_hu(v), ref)
    assert v.slices == m.slices and v.key_slice == m.key_slice == v.image_slice
    rec = record(v)
    from_front_end(v, slice_index=v.slices[0])  # the wheel / slider
    assert v.image_slice == v.slices[0] == m.slice_index
    ref = load_hu(slice_path(lab.model.data.images_root, m.file_name, v.slices[0]))
    assert np.array_equal(_hu(v), ref)
    # one message carried the slice, as a binary buffer of h*w int16, not as JSON text
    data, buffers = next((d, b) for d, b in rec.sent if "image" in str(d.get("buffer_paths")))
    assert ["image"] in data["buffer_paths"] and "image" not in data["state"]
    assert sum(len(memoryview(b).cast("B")) for b in buffers) == ref.size * 2
    from_front_end(v, slice_index=999)  # past the end: snaps to the last present slice
    assert v.image_slice == v.slices[-1] and v.slice_index == v.slices[-1]
    from_front_end(v, preset="bone")
    assert (v.window_level, v.window_width) == WINDOW_PRESETS["bone"] == (m.level, m.width)
    from_front_end(v, window_level=55.0, window_width=123.0, preset="custom")  # a drag
    assert (m.level, m.width, m.preset) == (55.0, 123.0, "custom")
    from_front_end(v, show_predictions=False, score_threshold=0.8)
    assert m.show["predictions"] is False and m.score_threshold == 0.8


def test_viewer_from_manifest_on_real_slices(real_dir, tmp_path):
    from deeplesion_lab.manifest import write_manifest

    res = write_manifest(real_dir / "DL_info_test.csv", tmp_path / "real.parquet",
                         images_root=real_dir / "Images_png")
    v = SliceViewer.from_manifest(res.manifest_path)
    assert v.image_shape == [512, 512] and len(v.image) == 512 * 512 * 2
    assert v.annotations and any(a["current"] for a in v.annotations)
    assert v.status == "" and v.spacing > 0
    assert v.title.endswith(v.lesion_id)


# embedding map -----------------------------------------------------------------------------------
def test_map_traits_are_binary_and_aligned(lab):
    m = lab.map
    data: LabData = lab.model.data
    xy = np.frombuffer(m.xy, dtype="<f4").reshape(-1, 2)
    assert np.array_equal(xy, data.point_xy())
    codes = np.frombuffer(m.codes, dtype=np.uint8)
    names = [c["name"] for c in m.classes]
    assert [names[k] for k in codes] == list(lab.model.map.point_labels())
    assert len(m.point_visible) == m.n_points == data.n_points
    assert m.filter_options["splits"] == ["train", "val", "test"]


def test_map_click_shows_the_lesion_everywhere(lab):
    target = 5 if lab.map.current != 5 else 6
    lid = lab.model.map.lesion_at(target)
    from_front_end(lab.map, click={"point": target, "nonce": 1})
    assert lab.map.current == target and lab.map.clicks[-1] == lid
    assert lab.viewer.lesion_id == lid and lid in lab.viewer.title
    assert lab.gallery.query["lesion_id"] == lid
    assert lid not in [it["lesion_id"] for it in lab.gallery.items]


def test_lasso_selection_reaches_the_panel_and_drops_hidden_points(lab):
    from_front_end(lab.map, filters={"splits": ["train"], "labels": None, "patients": None,
                                     "size_mm": None, "noisy": "all"})
    vis = np.frombuffer(lab.map.point_visible, np.uint8).astype(bool)
    split = lab.model.data.lesions["split_name"].to_numpy()[lab.model.data.point_rows]
    assert np.array_equal(vis, split == "train")
    # a lasso around everything, as the browser sends it: one buffer of little-endian uint32
    lasso = np.arange(lab.map.n_points, dtype="<u4").tobytes()
    from_front_end(lab.map, selection=lasso)
    assert lab.map.selected.tolist() == [int(i) for i in np.flatnonzero(vis)]
    assert lab.corrections.selection_count == vis.sum()
    assert sum(lab.corrections.selection_labels.values()) == vis.sum()
    # what the kernel sends back (hidden points dropped) is binary too, and decodes the same
    assert np.frombuffer(lab.map.selection, "<u4").tolist() == np.flatnonzero(vis).tolist()
    from_front_end(lab.map, filters={"splits": None})


def test_lasso_arrives_as_uint32_bytes_and_selects_exactly_those_points(lab):
    """The binary selection path: the indices the page sends are the ones selected (not
    reordered, truncated, read with the wrong width or byte order), and the Python API
    (``selected``, assigning a list) sees the same selection."""
    rec = record(lab.map)
    n = lab.map.n_points
    pts = np.array([n - 1, 2, 0, 257 % n, 5 % n], dtype="<u4")  # unsorted; 257 needs 2 bytes
    from_front_end(lab.map, selection=pts.tobytes())
    want = sorted({int(p) for p in pts})
    assert lab.model.map.selection.tolist() == want
    assert lab.map.selected.tolist() == want
    assert lab.corrections.selection_count == len(want)
    # sorted and de-duplicated by the model: the kernel answers with the selection as a buffer
    assert any(["selection"] in d.get("buffer_paths", []) for d, _ in rec.sent)
    # a big-endian or int64 reading would give other points than these
    assert np.frombuffer(lab.map.selection, "<u4").tolist() == want
    # the Python API: a list in, bytes on the wire, the same points out
    lab.map.selected = [3, 1]
    assert lab.model.map.selection.tolist() == [1, 3] and lab.map.selection == np.array(
        [1, 3], "<u4").tobytes()
    # a selection from the model reaches the front end as bytes
    lab.model.map.select([4])
    assert lab.map.selected.tolist() == [4] and isinstance(lab.map.selection, bytes)
    with pytest.raises(t.TraitError, match="4 bytes each"):
        lab.map.selection = b"\x01\x00\x00"
    with pytest.raises(WidgetDataError, match="out of range"):
        lab.map.selected = [-1]
    from_front_end(lab.map, selection=b"")
    assert lab.model.map.selection.tolist() == [] and lab.corrections.selection_count == 0


def test_hover_answers_with_text_and_a_thumbnail(lab):
    from_front_end(lab.map, hover_point=3)
    h = lab.map.hover
    assert h["point"] == 3 and h["lesion_id"] == lab.model.map.lesion_at(3)
    assert len(lab.map.hover_thumb) == lab.map.thumb_size**2 and len(lab.map.hover_box) == 4


# corrections ------------------------------------------------------------------------------------
def test_relabel_request_changes_the_store_and_recolours_the_map(lab):
    rec = record(lab.map)
    from_front_end(lab.map, selection=[0, 1, 2, 3])
    ids = lab.model.map.selected_lesion_ids()
    from_front_end(lab.corrections, request={"op": "relabel", "label": "bone", "nonce": 7})
    assert lab.corrections.status["ok"] and lab.corrections.status["nonce"] == 7
    store = LabelStore.open(lab.model.run.label_db)
    cur = store.current_labels().set_index("lesion_id")
    assert (cur.loc[ids, "label"] == "bone").all() and (cur.loc[ids, "updated_by"] == "alice").all()
    store.close()
    codes = np.frombuffer(lab.map.codes, np.uint8)
    names = [c["name"] for c in lab.map.classes]
    assert all(names[codes[p]] == "bone" for p in range(4))
    assert any("codes" in str(d.get("buffer_paths")) for d, _ in rec.sent), "recolour was sent"
    assert lab.corrections.history[0]["user"] == "alice"
    assert lab.corrections.history[0]["op"] == "relabel"
    # undo through the panel
    from_front_end(lab.corrections, request={"op": "undo", "nonce": 8})
    assert lab.corrections.status["ok"], lab.corrections.status
    assert names[np.frombuffer(lab.map.codes, np.uint8)[0]] == lab.model.labels.labels[
        lab.model.data.point_rows[0]]


def test_bad_request_is_reported_not_written(lab):
    v0 = lab.store.version()
    from_front_end(lab.map, selection=[])
    from_front_end(lab.corrections, request={"op": "relabel", "label": "bone", "nonce": 1})
    assert lab.corrections.status == {"nonce": 1, "ok": False,
                                      "message": lab.corrections.status["message"]}
    assert "nothing selected" in lab.corrections.status["message"]
    from_front_end(lab.corrections, request={"op": "merge", "source": "x", "nonce": 2})
    assert lab.corrections.status["ok"] is False
    from_front_end(lab.corrections, request={"op": "rm -rf", "nonce": 3})
    assert "unknown request" in lab.corrections.status["message"]
    assert lab.store.version() == v0


def test_html_in_a_class_name_is_kept_as_text(lab):
    name = "<img src=x onerror=alert(1)>"
    from_front_end(lab.corrections, request={"op": "add_class", "name": name, "color": "#123456",
                                             "nonce": 1})
    assert lab.corrections.status["ok"], lab.corrections.status
    assert name in [c["name"] for c in lab.corrections.classes]
    js = ESM_FILES["CorrectionPanel"].read_text()
    assert "innerHTML" not in js, "the panel must set store text with textContent only"


def test_suggestion_click_shows_that_lesion(lab, tiny):
    from_front_end(lab.corrections, request={"op": "suggest", "nonce": 1})
    sug = lab.corrections.suggestions
    assert len(sug) == 20 and set(tiny.planted_wrong) <= {s["lesion_id"] for s in sug[:6]}
    pick = sug[0]["lesion_id"]
    from_front_end(lab.corrections, request={"op": "show", "lesion_id": pick, "nonce": 2})
    assert lab.viewer.lesion_id == pick and lab.map.current == sug[0]["point"]


def test_poll_brings_in_another_annotators_change(lab):
    other = LabelStore.open(lab.model.run.label_db)
    lid = lab.model.map.lesion_at(2)
    other.relabel([lid], "pelvis", "bob")
    other.close()
    before = lab.corrections.status
    from_front_end(lab.corrections, request={"op": "poll", "nonce": 5})
    names = [c["name"] for c in lab.map.classes]
    assert names[np.frombuffer(lab.map.codes, np.uint8)[2]] == "pelvis"
    assert lab.corrections.history[0]["user"] == "bob"
    from_front_end(lab.corrections, request={"op": "poll", "nonce": 6})
    assert lab.corrections.status["nonce"] == 5 != before.get("nonce"), "an idle poll is silent"


# gallery ----------------------------------------------------------------------------------------
def test_gallery_thumbnails_and_click(lab):
    g = lab.gallery
    k, s = len(g.items), g.thumb_size
    assert k == 8 and len(g.thumbs) == k * s * s
    assert all(it["box"] is not None and it["distance"] >= 0 for it in g.items)
    thumbs = np.frombuffer(g.thumbs, np.uint8).reshape(k, s, s)
    assert (thumbs.reshape(k, -1).std(axis=1) > 5).all(), "each thumbnail shows an image"
    pick = g.items[3]["lesion_id"]
    from_front_end(g, click={"index": 3, "lesion_id": pick, "nonce": 1})
    assert lab.viewer.lesion_id == pick and g.query["lesion_id"] == pick
    from_front_end(g, scope="same patient")
    pat = lab.model.data.row(pick)["patient_index"]
    assert g.items and all(it["patient"] == pat for it in g.items)


# the pieces on their own, and the ESM files ------------------------------------------------------
def test_pieces_work_on_their_own(tiny):
    m = EmbeddingMap.from_run(tiny.run_dir, user="solo")
    assert m.n_points == len(tiny.lesion_ids)
    from_front_end(m, click={"point": 2, "nonce": 1})
    assert m.clicks == [m.model.lesion_at(2)]
    v = SliceViewer.from_run(tiny.run_dir, tiny.lesion_ids[3])
    assert v.lesion_id == tiny.lesion_ids[3] and v.predictions


@pytest.mark.parametrize("name", sorted(ESM_FILES))
def test_esm_front_ends_are_self_contained(name, tmp_path):
    import widgets
    from widgets.lab_widget import esm_source

    js = esm_source(ESM_FILES[name])  # the module as the browser gets it (shared helpers in front)
    assert "export default" in js and "render" in js
    assert not re.search(r"^\s*import\s", js, re.M), "no imports: the ESM must stand alone"
    assert not re.search(r"https?://", js), "nothing fetched from a URL (no CDN)"
    assert "model.send(" not in js, "Panel's AnyWidgetComponent has no model.send"
    for fn in ("h", "bytesOf", "typed"):  # one definition of each helper the module calls
        calls = re.findall(rf"(?<![\w.]){fn}\(", js)
        defs = len(re.findall(rf"^function {fn}\(", js, re.M))
        assert defs == (1 if len(calls) > defs else defs) and defs <= 1, (fn, defs)
    assert str(getattr(widgets, name)._esm) == js, "the widget sends this module"
    node = shutil.which("node")
    if node:  # it parses as a module
        mod = tmp_path / f"{name}.mjs"
        mod.write_text(js)
        r = subprocess.run([node, "--check", str(mod)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr


def test_lab_layout(lab):
    assert lab.children == (lab.map, lab.viewer, lab.tasks, lab.gallery, lab.grid,
                            lab.finetune, lab.volume_panel)
    assert lab.tasks.children == (lab.corrections, lab.review)
    assert lab.user == "alice" and Path(lab.store.location).name == "labels.sqlite"
