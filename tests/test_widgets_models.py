"""Headless models of the widgets (no browser, no widget classes) and the mislabel ranking.

Every test works on a tiny run written by ``tests/widgets_fixtures.py`` (real PNG slices, a real
manifest, a real SQLite label store); tests that write copy the run first.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from widgets_fixtures import make_tiny_run

from deeplesion_lab.errors import LabError
from deeplesion_lab.images import WINDOW_PRESETS, load_hu, slice_path
from deeplesion_lab.labels import LabelStore
from deeplesion_lab.suggest import MislabelRanker, SuggestError
from widgets.data import LabData, thumbnail
from widgets.models import CorrectionError, LabModel, Signal

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("widgets_models"), source="hand")


@pytest.fixture
def lab(tiny, tmp_path) -> LabModel:
    """A LabModel on a private copy of the tiny run (its own label store)."""
    run = tmp_path / "run"
    shutil.copytree(tiny.run_dir, run, ignore=shutil.ignore_patterns("labels.sqlite*"))
    return LabModel(run, user="alice")


def _store_labels(run_dir) -> pd.Series:
    store = LabelStore.open(Path(run_dir) / "labels.sqlite")
    try:
        return store.current_labels().set_index("lesion_id")["label"]
    finally:
        store.close()


# the mislabel ranking (core) ------------------------------------------------------------------
def _blobs(seed=0, n=60):
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0, 0, 0], [6, 0, 0, 0], [0, 6, 0, 0]], float)
    X = np.vstack([c + rng.normal(0, 1, (n, 4)) for c in centres]).astype(np.float32)
    clusters = np.repeat([0, 1, 2], n)
    labels = np.array(["liver", "lung", "bone"])[clusters].astype(object)
    conf = rng.uniform(0.8, 1.0, len(X))
    ids = [f"L{i:04d}" for i in range(len(X))]
    return ids, X, clusters, labels, conf


def test_ranker_puts_planted_mislabels_first():
    ids, X, clusters, labels, conf = _blobs()
    wrong = [5, 70, 130, 140, 33]
    for i in wrong:
        labels[i] = "kidney"  # a label its neighbours do not share
        conf[i] = 0.3
    r = MislabelRanker(n_neighbors=10).fit(ids, X, clusters)
    top = r.rank(labels, conf, top=5)
    assert set(top["lesion_id"]) == {ids[i] for i in wrong}
    assert (np.diff(top["score"]) <= 0).all()
    assert top["disagree"].min() >= 0.9
    full = r.rank(labels, conf)
    assert len(full) == len(ids) and full["score"].between(0, 1).all()


def test_ranker_signals_each_count():
    ids, X, clusters, labels, conf = _blobs(1)
    X[7] = X[7] + 9.0  # far from its cluster centre, label agrees with nobody near it either
    r = MislabelRanker(weights=(1, 0, 0)).fit(ids, X, clusters)
    assert r.rank(labels, conf, top=1)["lesion_id"][0] == ids[7]
    assert "cluster centre" in r.rank(labels, conf, top=1)["reason"][0]
    conf[99] = 0.01
    r2 = MislabelRanker(weights=(0, 0, 1)).fit(ids, X, clusters)
    assert r2.rank(labels, conf, top=1)["lesion_id"][0] == ids[99]
    # excluded (already reviewed) lesions are left out
    assert ids[99] not in set(r2.rank(labels, conf, exclude=[ids[99]])["lesion_id"])


def test_ranker_bad_input():
    ids, X, clusters, labels, conf = _blobs(2, n=5)
    X[3, 1] = np.nan
    with pytest.raises(SuggestError, match=ids[3]):
        MislabelRanker().fit(ids, X, clusters)
    with pytest.raises(SuggestError, match="one row per lesion"):
        MislabelRanker().fit(ids[:4], X, clusters)
    with pytest.raises(SuggestError, match="not fitted"):
        MislabelRanker().rank(labels)
    X[3, 1] = 0
    r = MislabelRanker().fit(ids, X, clusters)
    with pytest.raises(SuggestError, match="labels given"):
        r.rank(labels[:3])
    with pytest.raises(SuggestError, match="weights"):
        MislabelRanker(weights=(1, -1, 0)).fit(ids, X, clusters)


# data ----------------------------------------------------------------------------------------
def test_lab_data_joins_umap_labels_embeddings(tiny):
    d = LabData.from_run(tiny.run_dir)
    assert len(d) == len(tiny.lesion_ids) == d.n_points
    um = pd.read_parquet(Path(tiny.run_dir) / "umap.parquet").set_index("lesion_id")
    lid = str(d.lesion_ids[d.point_rows[5]])
    assert np.allclose(d.point_xy()[5], um.loc[lid, ["x", "y"]].to_numpy(np.float32))
    assert d.embeddings.shape[0] == len(d) and np.isfinite(d.embeddings).all()
    assert d.predictions is not None and d.candidates is not None


def test_thumbnail_box_lands_on_the_box():
    hu = np.full((100, 100), -1000, np.int16)
    hu[40:60, 30:50] = 400  # the "lesion", above the window
    img, box = thumbnail(hu, (30, 40, 50, 60), (-160, 240), size=64)
    assert img.shape == (64, 64) and img.dtype == np.uint8
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    inner = img[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2]
    assert inner.min() == 255, "the bright lesion fills the box"
    assert img[: y1 - 2].max() == 0 and img[y2 + 2 :].max() == 0


# viewer ------------------------------------------------------------------------------------------
def test_viewer_series_window_and_overlays(lab, tiny):
    v = lab.viewer
    first = tiny.lesion_ids[0]
    lab.show_lesion(first)
    row = lab.data.row(first)
    assert v.slice_index == v.key_slice == int(row["key_slice_index"])
    assert v.slices == [9, 10, 11, 12, 13]
    assert v.preset == "dicom" and (v.level, v.width) == (40.0, 400.0)
    hu = v.current_hu()
    ref = load_hu(slice_path(lab.data.images_root, row["file_name"], v.slice_index))
    assert np.array_equal(hu, ref)
    ov = v.overlays()
    ann = ov["annotations"]
    assert len(ann) == 2, "two lesions share this key image"
    cur = [a for a in ann if a["current"]]
    assert len(cur) == 1 and cur[0]["lesion_id"] == first
    assert cur[0]["box"] == [float(row[c]) for c in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")]
    assert cur[0]["long_mm"] == pytest.approx(row["long_diameter_px"] * row["spacing_x"], abs=0.05)
    assert cur[0]["label"] == lab.labels.label_of(first)
    assert {p["score"] for p in ov["predictions"]} == {0.9, 0.2}
    assert len(ov["candidates"]) == 2
    # scroll: snap to present slices, clamp at the ends
    seen = []
    v.slice_changed.connect(seen.append)
    assert v.set_slice(30) == 13 and v.step(-1) == 12 and v.step(-10) == 9
    assert seen == [13, 12, 9]
    assert v.overlays()["annotations"] == [], "no lesion is annotated on slice 9"
    v.set_preset("lung")
    assert (v.level, v.width) == WINDOW_PRESETS["lung"]
    v.set_window(100, 50)
    assert v.preset == "custom"
    with pytest.raises(LabError, match="unknown window preset"):
        v.set_preset("sinus")
    with pytest.raises(LabError, match="positive width"):
        v.set_window(0, -5)


def test_viewer_on_real_deeplesion_slices(real_dir, tmp_path):
    from deeplesion_lab.manifest import write_manifest
    from widgets.models import ViewerModel

    res = write_manifest(real_dir / "DL_info_test.csv", tmp_path / "real.parquet",
                         images_root=real_dir / "Images_png")
    data = LabData.from_manifest(res.manifest_path)
    with_img = data.lesions[data.lesions["has_image"]]
    assert len(with_img) >= 10
    v = ViewerModel(data)
    row = with_img.iloc[0]
    v.show_lesion(row["lesion_id"])
    hu = v.current_hu()
    assert hu.shape == (512, 512) and hu.dtype == np.int16
    assert -2100 <= hu.min() < -900, "air / outside the scan field"
    ann = [a for a in v.overlays()["annotations"] if a["current"]]
    assert ann and ann[0]["box"] == [float(row[c]) for c in
                                     ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")]
    assert v.preset == "dicom"
    lo, hi = float(row["window_low"]), float(row["window_high"])
    assert (v.level, v.width) == ((lo + hi) / 2, hi - lo)


# map -------------------------------------------------------------------------------------------
def test_click_links_viewer_map_and_gallery(lab):
    clicked = []
    lab.map.clicked.connect(clicked.append)
    lid = lab.map.click(7)
    assert clicked == [lid] and lab.viewer.lesion_id == lid
    assert lab.map.current == 7 and lab.gallery.query == lid
    with pytest.raises(LabError, match="out of range"):
        lab.map.click(lab.map.n_points)


def test_filters_and_selection(lab):
    m = lab.map
    les = lab.data.lesions.iloc[lab.data.point_rows]
    mask = m.set_filters(splits=["test"])
    assert np.array_equal(mask, (les["split_name"] == "test").to_numpy())
    m.select(range(m.n_points))
    assert len(m.selection) == mask.sum(), "hidden points are never selected"
    noisy = les["possibly_noisy"].to_numpy(bool)
    assert noisy.sum() == 1 and mask[noisy].all()
    m.set_filters(noisy="exclude")
    assert len(m.selection) == mask.sum() - 1, "the selection drops what the filter hides"
    m.set_filters(splits=None, noisy="only")
    assert np.array_equal(m.visible(), noisy)
    m.set_filters(noisy="all", patients=[2, 3])
    assert set(les["patient_index"][m.visible()]) == {2, 3}
    size = les["long_diameter_px"] * les["spacing_x"]
    m.set_filters(patients=None, size_mm=(10, 14))
    assert np.array_equal(m.visible(), ((size >= 10) & (size <= 14)).to_numpy())
    m.set_filters(size_mm=None)
    m.select([1, 2, 3])
    m.select([3, 4], "add")
    assert list(m.selection) == [1, 2, 3, 4]
    m.select([1], "subtract")
    assert m.selected_lesion_ids() == [str(lab.data.lesion_ids[lab.data.point_rows[i]])
                                       for i in (2, 3, 4)]
    with pytest.raises(LabError, match="noisy filter"):
        m.set_filters(noisy="maybe")
    info = m.hover(2)
    assert info["lesion_id"] == m.lesion_at(2) and info["label"] == lab.labels.label_of(info["lesion_id"])


# corrections ---------------------------------------------------------------------------------------
def test_relabel_selection_goes_through_the_store(lab):
    m, c = lab.map, lab.corrections
    recolours = []
    m.colors_changed.connect(lambda: recolours.append(m.codes().copy()))
    m.select([0, 1, 2])
    ids = m.selected_lesion_ids()
    ev = c.relabel_selection("lung", comment="checked")
    cur = _store_labels(lab.run.path)
    assert all(cur[i] == "lung" for i in ids)
    names = lab.labels.class_names()
    assert recolours and all(names[k] == "lung" for k in recolours[-1][[0, 1, 2]])
    h = lab.labels.store.history(lesion_id=ids[0])
    assert h.iloc[0]["user"] == "alice" and int(h.iloc[0]["event_id"]) == ev
    assert c.history().iloc[0]["comment"] == "checked"
    c.undo()
    assert _store_labels(lab.run.path)[ids[0]] == lab.data.row(ids[0])["pseudo_label"]
    c.redo()
    assert _store_labels(lab.run.path)[ids[0]] == "lung"


def test_bad_corrections_write_nothing(lab):
    store = lab.labels.store
    v0 = store.version()
    lab.map.clear_selection()
    with pytest.raises(CorrectionError, match="nothing selected"):
        lab.corrections.relabel_selection("lung")
    lab.map.select([0])
    with pytest.raises(CorrectionError, match="unknown class 'tumour'"):
        lab.corrections.relabel_selection("tumour")
    with pytest.raises(CorrectionError, match="unknown cluster"):
        lab.corrections.relabel_cluster(99, "lung")
    with pytest.raises(CorrectionError, match="into itself"):
        lab.corrections.merge_clusters(1, 1)
    lab.map.select([0, 5])  # two clusters
    with pytest.raises(CorrectionError, match="spans clusters"):
        lab.corrections.split_selection("cyst")
    with pytest.raises(LabError):
        lab.corrections.add_class("Liver", "#123456")  # exists, ignoring case
    assert store.version() == v0


def test_cluster_operations(lab):
    c = lab.corrections
    cl = c.clusters().set_index("cluster")
    c.relabel_cluster(0, "kidney")
    assert (lab.labels.labels[lab.labels.clusters == 0] == "kidney").all()
    n_target = int(cl.loc[4, "n"])
    target_label = c.cluster_label(4)
    c.merge_clusters(3, 4)
    assert not (lab.labels.clusters == 3).any()
    merged = lab.labels.clusters == 4
    assert merged.sum() == n_target + int(cl.loc[3, "n"])
    assert (lab.labels.labels[merged] == target_label).all()
    lab.map.select_cluster(2)
    lab.map.select(lab.map.selection[:2])
    ids = lab.map.selected_lesion_ids()
    new = c.split_selection("cyst", "#ff00ff")
    assert "cyst" in lab.labels.class_names()
    rows = [lab.data.row_of[i] for i in ids]
    assert (lab.labels.clusters[rows] == new).all() and (lab.labels.labels[rows] == "cyst").all()
    assert lab.labels.color_of("cyst") == "#ff00ff"
    lab.map.select([1])
    c.mark_selection("not a lesion")
    assert lab.labels.labels[lab.data.point_rows[1]] == "not a lesion"


def test_suggestions_find_planted_mislabels(lab, tiny):
    s = lab.corrections.suggestions(top=6)
    assert set(tiny.planted_wrong) <= set(s["lesion_id"]), s
    assert (np.diff(s["score"]) <= 0).all()
    first = s["lesion_id"][0]
    lab.map.select_lesions([first])
    lab.corrections.relabel_selection(tiny.true_label[first])
    assert first not in set(lab.corrections.suggestions(top=50)["lesion_id"]), "reviewed: left out"


def test_other_annotators_changes_arrive_on_poll(lab):
    other = LabelStore.open(lab.run.label_db)
    lid = lab.map.lesion_at(3)
    other.relabel([lid], "pelvis", "bob")
    other.close()
    assert lab.labels.poll() is True
    assert lab.labels.label_of(lid) == "pelvis"
    assert lab.labels.poll() is False


# gallery ----------------------------------------------------------------------------------------
def test_gallery_nearest_lesions(lab):
    g = lab.gallery
    q = lab.map.lesion_at(4)
    res = g.set_query(q)
    assert len(res) == 8 and q not in set(res["lesion_id"])
    assert (np.diff(res["distance"]) >= 0).all()
    emb = lab.data.embeddings
    r = lab.data.row_of[q]
    d = np.linalg.norm(emb - emb[r], axis=1)
    d[r] = np.inf
    assert res["distance"].iloc[0] == pytest.approx(d.min(), abs=1e-5)
    pat = lab.data.row(q)["patient_index"]
    g.set_scope("same patient")
    assert (g.results["patient"] == pat).all() and len(g.results) == 5
    g.set_scope("other patients")
    assert (g.results["patient"] != pat).all()
    with pytest.raises(LabError, match="scope"):
        g.set_scope("everyone")


def test_signal():
    s, got = Signal(), []
    cb = s.connect(got.append)
    s.emit(1)
    s.disconnect(cb)
    s.emit(2)
    assert got == [1]


def test_core_and_models_import_no_ui_libraries():
    code = (
        "import sys; import deeplesion_lab.suggest, widgets.models, widgets.data; "
        "bad = [m for m in ('ipywidgets', 'anywidget', 'panel', 'bokeh', 'playwright') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    # widgets/__init__ imports the widget classes; load the two modules without it
    code = code.replace("widgets.models, widgets.data", "importlib")
    code = (
        "import importlib.util, sys, types; "
        f"pkg = types.ModuleType('widgets'); pkg.__path__ = [{str(REPO / 'widgets')!r}]; "
        "sys.modules['widgets'] = pkg; import widgets.models, widgets.data; " + code
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
