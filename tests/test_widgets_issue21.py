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

from deeplesion_lab.run import RunDir
from widgets.data import LabData, WidgetDataError
from widgets.models import ViewerModel

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
