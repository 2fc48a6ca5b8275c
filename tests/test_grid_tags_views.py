"""The lesion grid's tags, saved views, confidence filter and per-class FROC cases, headless
(issue 21). The browser side is in ``tests/test_browser_grid.py``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from widgets_fixtures import make_tiny_run

from widgets.data import LabData, WidgetDataError
from widgets.models import CorrectionError, LabModel, froc_cases, froc_class_table

COLS = ["file_name", "x1", "y1", "x2", "y2", "score", "label"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("grid_tags"), source="hand")


@pytest.fixture
def run_copy(tiny, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny.run_dir, run, ignore=shutil.ignore_patterns("labels.sqlite*"))
    return run


def test_tags_on_the_selection_filter_the_map_and_grid_and_undo(run_copy):
    lab = LabModel(run_copy, user="alice")
    ids = [lab.map.lesion_at(i) for i in (1, 4, 6)]
    with pytest.raises(CorrectionError, match="nothing selected"):
        lab.map.clear_selection() or lab.tags.tag_selection("review")
    lab.map.select_lesions(ids)
    ev = lab.tags.tag_selection(["review", "hard"])
    assert ev is not None and lab.tags.counts() == {"hard": 3, "review": 3}
    rec = lab.labels.store.lesion_tags()
    assert set(rec["tagged_by"]) == {"alice"} and set(rec["event_id"]) == {ev}
    assert lab.tags.tag_selection("review") is None  # already tagged: nothing written
    # the grid shows the tags; the map's tag filter is what the grid lists
    items = {i["lesion_id"]: i for i in lab.grid.items(0, 100)[0]}
    assert sorted(items[ids[0]]["tags"]) == ["hard", "review"] and items[lab.map.lesion_at(0)]["tags"] == []
    lab.map.select_lesions(ids[:1])
    lab.tags.untag_selection("hard")
    lab.map.set_filters(tags=["hard"])
    got = [i["lesion_id"] for i in lab.grid.items(0, 100)[0]]
    assert sorted(got) == sorted(ids[1:]) and lab.map.visible().sum() == 2
    # one selection: what the grid marks is the map's selection, hidden lesions leave it
    assert lab.map.selected_lesion_ids() == [] and not any(i["selected"] for i in lab.grid.items()[0])
    lab.grid.open(lab.grid.items()[0][0])
    assert lab.map.selected_lesion_ids() == [lab.viewer.lesion_id] == [got[0]]
    # the user's undo takes back the last tag change; the filter follows at once
    res = lab.corrections.undo()
    assert res.target_op == "untag" and lab.map.visible().sum() == 3
    lab.corrections.undo()
    assert lab.tags.counts() == {} and lab.map.visible().sum() == 0
    lab.map.set_filters(tags=None)
    assert lab.map.visible().all()


def test_tags_of_another_user_arrive_on_poll(run_copy):
    alice = LabModel(run_copy, user="alice")
    bob = LabModel(run_copy, user="bob")
    bob.map.select_lesions([bob.map.lesion_at(2)])
    bob.tags.tag_selection("check")
    assert alice.tags.counts() == {}
    assert alice.labels.poll() and alice.tags.counts() == {"check": 1}
    assert alice.tags.tags_of(bob.map.lesion_at(2)) == ("check",)


def test_read_only_lab_has_no_tags_and_says_why(run_copy):
    lab = LabModel(run_copy, user="alice", store=None)
    lab.map.select_lesions([lab.map.lesion_at(0)])
    with pytest.raises(CorrectionError, match="no label store"):
        lab.tags.tag_selection("x")
    assert lab.tags.names() == [] and lab.views.views() == []


def test_confidence_filter_is_a_range_and_follows_corrections(run_copy):
    lab = LabModel(run_copy, user="alice")
    conf = lab.labels.confidence[lab.data.point_rows]
    lo, hi = np.nanquantile(conf, [0.25, 0.75])
    lab.map.set_filters(confidence=[lo, hi])
    want = int(((conf >= lo) & (conf <= hi)).sum())
    assert 0 < want < lab.data.n_points and lab.grid.items(0, 1000)[1] == want
    lab.grid.set(sort_by="confidence")
    shown = [lab.labels.confidence[lab.data.row_of[i["lesion_id"]]] for i in lab.grid.items(0, 1000)[0]]
    assert min(shown) >= lo and max(shown) <= hi and shown == sorted(shown)
    # a correction sets the confidence to 1.0: the lesion leaves a range below 1
    lid = lab.grid.items(0, 1)[0][0]["lesion_id"]
    lab.map.select_lesions([lid])
    lab.corrections.relabel_selection(lab.labels.class_names(assignable=True)[0])
    assert lab.grid.items(0, 1000)[1] == want - (1 if hi < 1.0 else 0)
    with pytest.raises(WidgetDataError, match="the range 0.9 to 0.1 is empty"):
        lab.map.set_filters(confidence=[0.9, 0.1])


def test_saved_views_restore_filters_sort_and_selection_for_everyone(run_copy):
    alice = LabModel(run_copy, user="alice")
    sel = [alice.map.lesion_at(i) for i in (0, 3)]
    alice.map.set_filters(splits=["train", "test"], confidence=[0.0, 0.99])
    alice.grid.set(sort_by="size", descending=True)
    alice.map.select_lesions(sel)
    alice.views.save("my review")
    with pytest.raises(Exception, match="already has a view 'my review'"):
        alice.views.save("my review")
    # everything changed, then the view brings it back
    alice.map.set_filters(splits=None, confidence=None)
    alice.grid.set(sort_by="label", descending=False)
    alice.map.clear_selection()
    msg = alice.views.load("my review")
    assert alice.map.filters["splits"] == ["train", "test"]
    assert alice.map.filters["confidence"] == (0.0, 0.99)
    assert (alice.grid.sort_by, alice.grid.descending) == ("size", True)
    assert sorted(alice.map.selected_lesion_ids()) == sorted(sel) and "2 selected" in msg
    # bob lists and loads alice's view (shared readable) but cannot delete it
    bob = LabModel(run_copy, user="bob")
    assert [(v["owner"], v["name"], v["mine"]) for v in bob.views.views()] == [
        ("alice", "my review", False)]
    bob.views.load("my review", owner="alice")
    assert sorted(bob.map.selected_lesion_ids()) == sorted(sel)
    with pytest.raises(Exception, match="only its owner can delete it"):
        bob.views.delete("my review")
    # a view whose selection is partly hidden by a filter says so
    alice.map.set_filters(splits=None, confidence=None)
    alice.map.select_lesions([alice.map.lesion_at(i) for i in range(alice.data.n_points)])
    alice.map.set_filters(splits=["test"])
    alice.views.save("test only")
    n_test = int((alice.data.lesions["split_name"] == "test").sum())
    assert alice.views.load("test only").endswith(f"{n_test} selected")
    alice.views.delete("my review")
    assert [v["name"] for v in bob.views.views()] == ["test only"]


def test_per_class_froc_table_and_its_cases(tiny, run_copy):
    les = LabData.from_run(tiny.run_dir).lesions
    test = les[(les["split_name"] == "test") & (les["possibly_noisy"].astype(int) == 0)]
    a, b, c = test.iloc[0], test.iloc[1], test.iloc[2]
    box = [float(a[k]) for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")]
    pred = pd.DataFrame([[a["file_name"], *box, 0.9, "liver"],
                         [a["file_name"], 1, 1, 9, 9, 0.8, "lung"],
                         [b["file_name"], 2, 2, 8, 8, 0.7, "lung"],
                         [c["file_name"], 2, 2, 8, 8, 0.6, "bone"]], columns=COLS)
    cases, _ = froc_cases(pred, les, "test", 16.0)
    table = froc_class_table(cases, les, "test").set_index("class")
    types = test["coarse_type_name"].astype(str).value_counts()
    for name, n in types.items():
        row = table.loc[name]
        hit = int(name == a["coarse_type_name"]) + 0  # only a's lesion is hit
        assert row["lesions"] == n and row["hit"] == hit and row["misses"] == n - hit
        assert row["sensitivity"] == pytest.approx(hit / n)
    assert table.loc["lung", "false_positives"] == 2 and table.loc["bone", "false_positives"] == 1
    assert table["false_positives"].sum() == (cases["kind"] == "false positive").sum()
    # the same numbers as the FROC's own per-class sensitivity
    from deeplesion_lab.detection.froc import evaluate_predictions

    res = evaluate_predictions(pred, les, "test")
    k = res.curve.operating_point(16.0)
    for name in types.index:
        mask = res.curve.gt_class == name
        assert table.loc[name, "sensitivity"] == pytest.approx(float(np.mean(res.curve.gt_first_hit[mask] < k)))
    # in the lab: a row's misses open in the viewer with the model's and the true boxes
    lab = LabModel(run_copy, user="alice")
    g = lab.grid
    g.set(model="pseudo")
    rows = g.class_table()
    fp_class = rows.loc[rows["false_positives"] > 0, "class"].iloc[0]
    g.open_class(fp_class, "false positives")
    items, total = g.items(0, 100)
    assert total == int(rows.set_index("class").loc[fp_class, "false_positives"]) > 0
    assert {i["kind"] for i in items} == {"false positive"}
    assert all(i["label"].startswith(fp_class) for i in items)
    g.open(items[0])
    ov = lab.viewer.overlays()
    assert lab.viewer.lesion_id == items[0]["lesion_id"] and ov["predictions"]
    assert lab.viewer.prediction_model == "pseudo" and lab.viewer.show["predictions"]
    with pytest.raises(WidgetDataError, match="no class 'nope'"):
        g.open_class("nope")
    g.set(class_name="")
    assert g.class_name is None and g.items(0, 1000)[1] >= total


# the widgets: what the front end writes -----------------------------------------------------------
def test_grid_widget_tags_filters_views_and_class_rows(run_copy):
    from widgets.lesion_grid import LesionGrid

    lab = LabModel(run_copy, user="alice")
    w = LesionGrid(lab.grid, views=lab.views)
    assert w.has_tags and w.has_views and w.user == "alice"
    ids = [it["lesion_id"] for it in w.items[:2]]
    w.click = {"index": 0, "nonce": 1}
    w.click = {"index": 1, "shift": True, "nonce": 2}
    assert w.selection_count == 2 and sorted(lab.map.selected_lesion_ids()) == sorted(ids)
    w.request = {"op": "tag", "tag": "follow-up", "nonce": 3}
    assert w.answer["ok"] and "tagged 2 lesion(s) follow-up" in w.answer["message"]
    assert w.tags == [{"tag": "follow-up", "n": 2}]
    assert all(it["tags"] == ["follow-up"] for it in w.items if it["lesion_id"] in ids)
    w.tag_filter = ["follow-up"]  # as the front end's select does
    assert w.total == 2 and lab.map.visible().sum() == 2, "the map shows what the grid shows"
    w.request = {"op": "tag", "tag": " ", "nonce": 4}
    assert not w.answer["ok"] and "tag: a non-empty name" in w.answer["message"]
    w.request = {"op": "save_view", "name": "fu", "nonce": 5}
    assert w.answer["ok"] and [v["name"] for v in w.views] == ["fu"] and w.views[0]["mine"]
    w.tag_filter = []
    w.confidence = [0.0, 0.0001]
    assert w.total == int((lab.labels.confidence[lab.data.point_rows] <= 0.0001).sum())
    w.request = {"op": "load_view", "name": "fu", "owner": "alice", "nonce": 6}
    assert w.answer["ok"] and w.total == 2 and w.tag_filter == ["follow-up"] and w.confidence == []
    w.request = {"op": "undo", "nonce": 7}
    assert "undone" in w.answer["message"] and w.tags == [] and w.total == 0
    w.request = {"op": "delete_view", "name": "fu", "nonce": 8}
    assert w.views == []
    w.tag_filter = []
    # the per-class table of a model's cases; a row's count lists that class's cases
    w.model_name = "pseudo"
    w.source = "false positives"
    rows = {r["class"]: r for r in w.class_table}
    assert rows and sum(r["false_positives"] for r in rows.values()) == w.total
    cls = next(c for c, r in rows.items() if r["false_positives"])
    w.request = {"op": "open_class", "class": cls, "kind": "false positives", "nonce": 9}
    assert w.answer["ok"] and w.class_name == cls and w.total == rows[cls]["false_positives"]
    w.class_name = ""
    assert lab.grid.class_name is None
    w.request = {"op": "fly", "nonce": 10}
    assert not w.answer["ok"] and "unknown request" in w.answer["message"]


def test_fine_tune_button_is_a_background_job_disabled_with_a_reason(run_copy):
    from deeplesion_lab import jobs
    from deeplesion_lab.run import RunDir
    from widgets.finetune_panel import FinetunePanel

    lab = LabModel(run_copy, user="alice")
    run = RunDir(run_copy)
    for p in run.detector_dir.glob("*/model.pt"):
        p.unlink()
    w = FinetunePanel(lab.finetune)
    assert w.job["state"] == "none" and w.job["blocked"].startswith("no detector yet")
    w.request = {"op": "start", "nonce": 1}
    assert not w.status["ok"] and "cannot fine-tune: no detector yet" in w.status["message"]
    assert jobs.read_job(run, "finetune") is None, "nothing was started"
    # a job of that name runs (e.g. started from the dashboard by bob): disabled, says who
    (run.detector_dir / "pseudo").mkdir(parents=True, exist_ok=True)
    (run.detector_dir / "pseudo" / "model.pt").write_bytes(b"not a checkpoint")
    lock = jobs._paths(run, "finetune")[1]
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = jobs._try_lock(lock)
    jobs._write(run, jobs.JobRecord(name="finetune", argv=[], state="running", user="bob",
                                    progress=0.4, eta_s=75, started_at=0.0))
    try:
        w.request = {"op": "poll", "nonce": 2}
        assert w.job["blocked"] == ("fine-tuning already runs (started by bob); it goes on if "
                                    "this tab closes")
        assert (w.job["state"], w.job["progress"], w.job["eta"]) == ("running", 0.4, "1m15s")
    finally:

        os.close(fd)
    # free again: the button starts the real `deeplesion-lab finetune` as the run's job, in its
    # own process (here it fails on the fake checkpoint, and the panel says so)
    w.request = {"op": "poll", "nonce": 3}
    assert w.job["blocked"] == "" and w.job["state"] == "interrupted"
    w.request = {"op": "start", "nonce": 4}
    assert w.status["ok"] and "goes on if this tab closes" in w.status["message"]
    rec = jobs.read_job(run, "finetune")
    assert rec.user == "alice" and rec.argv[:2] == ["finetune", "--run"] and "alice" in rec.argv
    assert rec.pid != os.getpid()
    (done,) = jobs.wait_for_jobs(run, ["finetune"], timeout=240)
    w.request = {"op": "poll", "nonce": 5}
    assert done.state == "failed" and w.job["state"] == "failed" and w.job["exit_code"] != 0
    assert w.job["blocked"] == ""


def test_the_maps_own_filters_leave_the_grids_filters_alone(run_copy):
    from widgets.embedding_map import EmbeddingMap

    lab = LabModel(run_copy, user="alice")
    m = EmbeddingMap(lab.map)
    lab.map.set_filters(confidence=[0.0, 0.5])
    assert m.filters["confidence"] == (0.0, 0.5)
    # the map's front end sends the filters it has controls for (readFilters in the ESM)
    m.filters = {"splits": ["test"], "labels": None, "patients": None, "size_mm": None,
                 "noisy": "all"}
    assert lab.map.filters["splits"] == ["test"] and lab.map.filters["confidence"] == (0.0, 0.5)
    conf = lab.labels.confidence[lab.data.point_rows]
    split = lab.data.lesions["split_name"].to_numpy()[lab.data.point_rows]
    assert lab.map.visible().sum() == int(((conf <= 0.5) & (split == "test")).sum())


def test_grid_filters_by_split_type_and_least_suggest_score(run_copy):
    from widgets.lesion_grid import LesionGrid

    lab = LabModel(run_copy, user="alice")
    w = LesionGrid(lab.grid, views=lab.views)
    les = lab.data.lesions.iloc[lab.data.point_rows]
    types = les["coarse_type_name"].astype(str).to_numpy()
    split = les["split_name"].astype(str).to_numpy()
    assert set(w.filter_options["types"]) == set(types) and w.filter_options["suggest"]
    t0 = sorted(set(types[split == "test"]))[0]
    w.split_filter = ["test"]  # as the front end's selects do
    w.type_filter = [t0]
    assert w.total == int(((split == "test") & (types == t0)).sum()) > 0
    assert lab.map.visible().sum() == w.total, "the map shows what the grid shows"
    w.split_filter, w.type_filter = [], []
    assert w.total == lab.data.n_points
    ranked = lab.corrections.suggestions(top=len(lab.data))
    cut = float(np.median(ranked["score"]))
    w.suggest_min = cut
    assert w.total == int((ranked["score"] >= cut).sum()) < lab.data.n_points
    lab.grid.set(sort_by="suggest", descending=True)
    shown = [i["lesion_id"] for i in lab.grid.items(0, 1000)[0]]
    want = ranked.loc[ranked["score"] >= cut].sort_values("score", ascending=False, kind="stable")
    assert set(shown) == set(want["lesion_id"])
    # a saved view keeps the least score too
    lab.views.save("suspicious")
    w.suggest_min = None
    assert w.total == lab.data.n_points
    lab.views.load("suspicious")
    assert lab.grid.suggest_min == cut and w.suggest_min == cut
