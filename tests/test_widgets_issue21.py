"""What a newcomer met in the lab (issue 21), headless: predictions of every model in the viewer,
one colour per overlay, the simulated annotator kept out of the user's own history, plain numbers.

The browser side of the same bugs is in ``tests/test_browser_lab.py``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from widgets_fixtures import make_tiny_run

from deeplesion_lab.errors import LabError
from deeplesion_lab.run import RunDir
from widgets.data import LabData, WidgetDataError
from widgets.models import LabModel, ViewerModel

REPO = Path(__file__).resolve().parents[1]
COLS = ["file_name", "x1", "y1", "x2", "y2", "score", "label"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("issue21"), source="hand")


@pytest.fixture
def run_copy(tiny, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny.run_dir, run, ignore=shutil.ignore_patterns("labels.sqlite*"))
    return run


# bug 2: the pipeline's prediction files reach the viewer -----------------------------------------
def test_pipeline_and_finetune_name_predictions_only_through_the_run_layout():
    for rel in ("deeplesion_lab/pipeline.py", "deeplesion_lab/detection/workflow.py"):
        src = (REPO / rel).read_text()
        assert not re.search(r"""["']predictions_[^"']*\.csv""", src), f"{rel} names a file itself"
        assert not re.search(r"""f["']predictions_""", src), f"{rel} names a file itself"


def test_run_layout_lists_every_model_widest_split_first(tmp_path):
    run = RunDir(tmp_path)
    for name in ("single", "pseudo", "pseudo-ft1"):
        (run.detector_dir / name).mkdir(parents=True)
        (run.detector_dir / name / "model.pt").write_bytes(b"")
    empty = pd.DataFrame(columns=COLS)
    for path in (run.predictions_file("single", "test"), run.predictions_file("pseudo", "test"),
                 run.predictions_file("pseudo", "all"), run.model_predictions_file("pseudo-ft1"),
                 run.model_predictions_file("pseudo-ft1", before=True)):
        empty.to_csv(path, index=False)
    files = run.prediction_files()
    assert set(files) == {"single", "pseudo", "pseudo-ft1"}
    assert [s for s, _ in files["pseudo"]] == ["all", "test"]
    # the fine-tuned model's "before" table is its parent's, not listed under its name
    assert files["pseudo-ft1"] == [("test", run.model_predictions_file("pseudo-ft1"))]


def test_viewer_shows_any_model_of_the_run(tiny):
    data = LabData.from_run(tiny.run_dir)
    assert set(data.prediction_sets) == {"pseudo", "single"}
    assert data.prediction_model == "pseudo", "default: the model covering the most key images"
    v = ViewerModel(data)
    test_lesion = str(data.lesions.loc[data.lesions["split_name"] == "test", "lesion_id"].iloc[0])
    v.show_lesion(test_lesion)
    assert v.overlays()["predictions"] and all(
        p["label"] != "lesion" for p in v.overlays()["predictions"])
    seen = []
    v.overlays_changed.connect(lambda: seen.append(1))
    v.set_prediction_model("single")
    assert seen and v.prediction_model == "single"
    preds = v.overlays()["predictions"]
    assert preds and {p["label"] for p in preds} == {"lesion"} and {p["score"] for p in preds} == {0.6}
    with pytest.raises(WidgetDataError, match="no predictions of model 'nope'"):
        v.set_prediction_model("nope")


def test_slice_viewer_widget_offers_the_models(tiny):
    from widgets import SliceViewer

    w = SliceViewer.from_run(tiny.run_dir)
    assert sorted(w.prediction_models) == ["pseudo", "single"] and w.prediction_model == "pseudo"
    w.prediction_model = "single"  # as the front end's select does
    assert w.model.prediction_model == "single"
    assert all(p["label"] == "lesion" for p in w.predictions)


# bug 5: the pipeline's simulated annotator is not the user ---------------------------------------
def _truth(tiny, path: Path) -> Path:
    from deeplesion_lab.lesion_types import COARSE_TYPES

    code = {v: k for k, v in COARSE_TYPES.items()}
    pd.DataFrame({"lesion_id": list(tiny.true_label), "annotated": True,
                  "coarse_type": [code[v] for v in tiny.true_label.values()]}).to_parquet(path)
    return path


def test_simulated_corrections_stay_out_of_the_users_history_and_undo(tiny, run_copy, tmp_path):
    from deeplesion_lab.pipeline import simulate_corrections
    from widgets import CorrectionPanel

    LabModel(run_copy, user="pipeline").labels.close()  # the store, filled with pseudo-labels
    n = simulate_corrections(run_copy, _truth(tiny, tmp_path / "truth.parquet"), 1.0,
                             "demo-annotator", 0)
    assert n >= 2
    lab = LabModel(run_copy, user="alice")
    panel = CorrectionPanel(lab.corrections)
    assert panel.simulated["events"] >= 1 and panel.simulated["lesions"] == n
    assert panel.simulated["users"] == ["demo-annotator"]
    assert all(h["tool"] != "pipeline-simulated" for h in panel.history)
    panel.handle({"op": "show_simulated", "show": True})  # the front end's checkbox
    assert any(h["user"] == "demo-annotator" for h in panel.history)
    panel.handle({"op": "show_simulated", "show": False})
    assert all(h["tool"] != "pipeline-simulated" for h in panel.history)
    # alice's own work is listed, and her undo touches only it
    lab.map.select_lesions(tiny.lesion_ids[:2])
    lab.corrections.relabel_selection("bone")
    assert [h["user"] for h in panel.history][:1] == ["alice"]
    before = lab.labels.labels.copy()
    lab.corrections.undo()
    with pytest.raises(LabError):
        lab.corrections.undo()  # nothing more of alice's to undo: demo-annotator's stay
    changed = before != lab.labels.labels
    assert {lab.data.lesion_ids[i] for i in changed.nonzero()[0]} <= set(tiny.lesion_ids[:2])


# bug 6: the login name --------------------------------------------------------------------------
def test_user_defaults_to_the_login_name_in_widgets_and_notebooks(tiny, run_copy, monkeypatch):
    import getpass
    import json as _json

    monkeypatch.delenv("USER", raising=False)
    lab = LabModel(run_copy)
    assert lab.user == getpass.getuser() != "annotator"
    for nb in sorted((REPO / "lab").glob("*.ipynb")):
        src = "\n".join("".join(c["source"]) for c in _json.loads(nb.read_text())["cells"])
        assert "getpass.getuser()" in src and '"annotator"' not in src, nb.name
        # the text says "set X = True" only where the code has such a line
        for name in re.findall(r"[Ss]et `?([A-Z_]+) = True", src):
            assert re.search(rf"^{name} = False", src, re.M), f"{nb.name}: no {name} to set"


# the lesion grid and click-through from the FROC ----------------------------------------------------
def test_froc_cases_are_the_frocs_misses_and_false_positives(tiny):
    from deeplesion_lab.detection.froc import evaluate_predictions
    from widgets.models import froc_cases

    les = LabData.from_run(tiny.run_dir).lesions
    test = les[(les["split_name"] == "test") & (les["possibly_noisy"].astype(int) == 0)]
    a, b = test.iloc[0], test.iloc[1]
    box = [float(a[c]) for c in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")]
    pred = pd.DataFrame([[a["file_name"], *box, 0.9, "liver"],
                         [a["file_name"], 1, 1, 9, 9, 0.8, "lung"],
                         [b["file_name"], 2, 2, 8, 8, 0.1, "lung"]], columns=COLS)
    for rate, n_fp in ((16.0, 2), (1.0 / 64, 0)):
        cases, thr = froc_cases(pred, les, "test", rate)
        res = evaluate_predictions(pred, les, "test", fp_rates=[rate])
        miss = cases[cases["kind"] == "miss"]
        assert len(miss) == round(res.n_lesions * (1 - res.sensitivity[next(iter(res.sensitivity))]))
        assert a["lesion_id"] not in set(miss["lesion_id"]) and b["lesion_id"] in set(miss["lesion_id"])
        fp = cases[cases["kind"] == "false positive"]
        assert len(fp) == n_fp
        assert thr == (0.1 if rate == 16.0 else 0.9)
    fp = froc_cases(pred, les, "test", 16.0)[0].query("kind == 'false positive'")
    assert fp.iloc[0][["x1", "score", "lesion_id"]].tolist() == [1.0, 0.8, a["lesion_id"]]


def test_grid_follows_the_map_and_opens_in_the_viewer(tiny, run_copy):
    lab = LabModel(run_copy, user="alice")
    g = lab.grid
    g.set(sort_by="confidence")
    items, total = g.items(0, 100)
    assert total == lab.data.n_points
    conf = [lab.labels.confidence[lab.data.row_of[it["lesion_id"]]] for it in items]
    assert conf == sorted(conf)
    label = items[0]["label"]
    lab.map.set_filters(labels=[label])
    items, total = g.items(0, 100)
    assert total == int((lab.map.point_labels() == label).sum()) and {i["label"] for i in items} == {label}
    lab.map.set_filters(labels=None)
    it = g.items(0, 5)[0][3]
    g.open(it)
    assert lab.viewer.lesion_id == it["lesion_id"] == lab.map.selected_lesion_ids()[0]
    assert [i["lesion_id"] for i in g.items(0, 100)[0] if i["selected"]] == [it["lesion_id"]]
    g.set(only_selected=True)
    assert g.items()[1] == 1
    with pytest.raises(WidgetDataError, match="sort by one of"):
        g.set(sort_by="colour")


def test_grid_false_positives_open_with_the_models_boxes(tiny, run_copy):
    from widgets.lesion_grid import LesionGrid

    lab = LabModel(run_copy, user="alice")
    w = LesionGrid(lab.grid)
    assert w.total == lab.data.n_points and w.source == "map"
    w.model_name = "pseudo"
    w.source = "false positives"  # as the front end's selects do
    assert w.items and {i["kind"] for i in w.items} == {"false positive"}
    assert all(i["label"].startswith("lung 0.20") for i in w.items)  # the fixture's stray boxes
    assert 0 < w.threshold <= 0.2
    lab.viewer.set_prediction_model("single")
    w.click = {"index": 0, "nonce": 1}
    first = w.items[0]
    assert lab.viewer.lesion_id == first["lesion_id"]
    assert lab.viewer.prediction_model == "pseudo"
    assert lab.viewer.score_threshold == pytest.approx(w.threshold)
    shown = [p for p in lab.viewer.overlays()["predictions"] if p["score"] >= w.threshold]
    assert any(p["box"] == first["box"] for p in shown)
    w.source = "misses"
    assert w.total == 0, "the fixture's 0.9 boxes hit every test lesion"


def test_history_says_1_lesion_not_1_lesions():
    from widgets.correction_panel import history_records

    ev = pd.DataFrame({"event_id": [2, 1], "created_at": ["", ""], "user": ["a", "a"],
                       "tool": ["t", "t"], "op": ["relabel", "relabel"], "n_changes": [1, 11],
                       "comment": [None, None], "undone_by": [pd.NA, pd.NA],
                       "detail": ["1 lesions -> liver", "11 lesions -> liver"]})
    assert [r["detail"] for r in history_records(ev)] == ["1 lesion -> liver",
                                                          "11 lesions -> liver"]


def test_grid_front_end_is_self_contained():
    js = (REPO / "widgets" / "lesion_grid.js").read_text()
    assert "export default" in js and "render" in js
    assert not re.search(r"^\s*import\s", js, re.M) and not re.search(r"https?://", js)
    assert "model.send(" not in js and "innerHTML" not in js


# buttons where users expect them: snapshot and export in LesionLab -------------------------------
def test_lesion_lab_snapshots_and_exports_but_a_bare_panel_refuses(run_copy):
    from widgets import CorrectionPanel, LesionLab

    lab = LesionLab(run_copy, user="alice")
    panel = lab.corrections
    assert panel.lab_actions
    msg = panel.handle({"op": "snapshot", "name": "review 1"})
    snaps = lab.store.list_snapshots()
    assert "review 1" in set(snaps["name"]) and "--snapshot" in msg
    msg = panel.handle({"op": "export", "format": "csv"})
    path = Path(msg.rsplit(" ", 1)[-1])
    assert path.parent == run_copy / "exports" and path.suffix == ".csv"
    assert len(pd.read_csv(path)) == len(lab.model.data)
    coco = Path(panel.handle({"op": "export", "format": "coco"}).rsplit(" ", 1)[-1])
    assert coco.name.endswith(".coco.json") and coco.is_file()
    with pytest.raises(LabError, match="csv or coco"):
        panel.handle({"op": "export", "format": "xml"})
    bare = CorrectionPanel(lab.model.corrections)  # e.g. the dashboard's: its own, role-checked
    with pytest.raises(LabError, match="not offered here"):
        bare.handle({"op": "snapshot", "name": "sneaky"})
    assert "sneaky" not in set(lab.store.list_snapshots()["name"])
