"""The lab end to end: the pipeline on tiny demo data, its report, and every notebook headless."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from deeplesion_lab.cli import main
from deeplesion_lab.demo import generate_demo

REPO = Path(__file__).resolve().parents[1]
# The module fixture trains real models (a few minutes on 2 quiet cores); its setup counts
# toward the first test's timeout, so allow for a loaded machine.
pytestmark = pytest.mark.timeout(1800)
NOTEBOOKS = sorted((REPO / "lab").glob("*.ipynb"))
PLOTS = re.compile(r"\bplt\.|\bpx\.|go\.Figure")
FIGURES = {"image/png", "application/vnd.plotly.v1+json"}


def pipeline_argv(d: Path) -> list[str]:
    return [
        "pipeline", "--csv", str(d / "demo" / "DL_info.csv"), "--manifest", str(d / "m.parquet"),
        "--run", str(d / "run"), "--truth", str(d / "demo" / "truth.parquet"),
        "--embed-epochs", "1", "--detector-epochs", "1", "--finetune-epochs", "1",
    ]


@pytest.fixture(scope="module")
def tiny_lab(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("lab")
    generate_demo(d / "demo", n_patients=8, seed=5, size=256)
    assert main(pipeline_argv(d)) == 0
    return d


def test_pipeline_writes_every_figure(tiny_lab: Path) -> None:
    import pandas as pd

    run = tiny_lab / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("nmi", "purity"):
        assert 0.0 <= metrics["mining"][key] <= 1.0
    # the test split, on which the detectors and the fine-tuning are scored, is held out of the
    # mining: its lesions' types name no cluster
    from deeplesion_lab.lesion_types import SPLIT_CODES
    from deeplesion_lab.run import RunDir

    manifest = RunDir(run).load_manifest()
    n_test_typed = int(((manifest["split"] == SPLIT_CODES["test"])
                        & (manifest["coarse_type"] > 0)).sum())
    assert metrics["mining"]["hold_out"] == "test"
    assert metrics["mining"]["n_types_held_out"] == n_test_typed > 0
    # nor do they lend the embedding's sampler a type
    rec = json.loads((run / "embedder.json").read_text())["training"]
    assert rec["hold_out"] == "test" and metrics["embedding"]["hold_out"] == "test"
    # the fine-tuned model names its detections with the lesion embedder
    assert metrics["finetune"]["typed_by"] == "lesion embedder"
    # and its base (the pseudo-label model) the same way, by the pseudo-labels it learnt
    assert metrics["finetune"]["before_typed_by"] == "lesion embedder"
    assert (run / "detector" / metrics["finetune"]["model"] / "typer.parquet").is_file()
    for key in ("embedding_accuracy", "location_only_accuracy", "raw_intensity_accuracy",
                "untrained_accuracy"):
        assert 0.0 <= metrics["classification"][key] <= 1.0
    for name in ("single", "pseudo", "pseudo+single"):  # the two, and both as one ensemble
        sens = metrics["detection"][name]["sensitivity"]
        assert set(sens) == {"0.5", "1", "2", "4", "8", "16"}
        # FROC sensitivity never falls as more false positives are allowed
        vals = [sens[k] for k in ("0.5", "1", "2", "4", "8", "16")]
        assert vals == sorted(vals)
    assert set(metrics["finetune"]["before"]["sensitivity"]) == set(sens)
    if (os.cpu_count() or 1) > 1:  # the two detectors trained side by side, one job each
        from deeplesion_lab.jobs import read_job

        for name in ("single", "pseudo"):
            rec = read_job(run, f"train-detector-{name}")
            assert rec.state == "done" and rec.progress == 1.0, rec
            assert f"detector/{name}" in Path(rec.log).read_text()
    # the latest model is the fine-tuned one, made from the pseudo-label detector
    latest = json.loads((run / "detector" / "latest.json").read_text())["name"]
    assert latest == metrics["finetune"]["model"] and metrics["finetune"]["parent"] == "pseudo"
    assert set(metrics["finetune"]["after"]["sensitivity"]) == set(sens)
    for key in ("precision", "recall", "f1", "auc"):
        assert 0.0 <= metrics["matching"][key] <= 1.0
    for key in ("recall_at_1", "recall_at_2"):
        assert 0.0 <= metrics["missing_annotations"][key] <= 1.0
    # the graph's proposals come from the ensemble's detections on every key slice
    ens = pd.read_csv(run / "detector" / "predictions_pseudo+single_all.csv")
    props = pd.read_parquet(run / "graph" / "proposals.parquet")
    assert len(ens) and set(props["file_name"].astype(str)) <= set(ens["file_name"].astype(str))
    # simulated corrections went through the label store, and fine-tuning recorded a snapshot
    from deeplesion_lab.labels import LabelStore
    from deeplesion_lab.lesion_types import COARSE_TYPES

    truth = pd.read_parquet(tiny_lab / "demo" / "truth.parquet")
    truth = truth[truth["annotated"] & truth["lesion_id"].notna()]
    true = dict(zip(truth["lesion_id"].astype(str), truth["coarse_type"].map(COARSE_TYPES),
                    strict=True))
    pseudo = pd.read_parquet(run / "pseudo_labels.parquet")
    wrong = sum(str(lab) != true[i] for i, lab in zip(pseudo["lesion_id"].astype(str),
                                                      pseudo["label"], strict=True) if i in true)
    assert wrong > 0, "the tiny demo's pseudo-labels are all right: nothing to correct"
    with LabelStore.open(run / "labels.sqlite") as store:
        hist = store.history(user="demo-annotator")
        sim = hist[hist["tool"] == "pipeline-simulated"]
        current = store.current_labels().set_index("lesion_id")["label"]
        assert len(store.list_snapshots()) >= 1
    # half the wrong pseudo-labels (--correction-share 0.5), each set to its true type
    assert len(sim) == round(wrong * 0.5) and sim["lesion_id"].is_unique
    assert (sim["label_after"] == sim["lesion_id"].map(true)).all()
    assert (sim["label_before"] != sim["label_after"]).all()
    assert (current.loc[sim["lesion_id"]].to_numpy() == sim["label_after"].to_numpy()).all()


def test_report_is_self_contained(tiny_lab: Path) -> None:
    html = (tiny_lab / "run" / "report.html").read_text()
    assert "Fine-tuning from corrected labels" in html
    assert "FROC" in html and "embedding map" in html
    # nothing loads from the network: no src/href to http(s)
    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", html)
    assert 'alt="choosing K"' in html and 'alt="accuracy"' in html
    assert html.count("<th>mean 0.5-4</th>") >= 2  # detection and before/after tables
    assert html.count("95 % interval (bootstrap over slices)") >= 2
    assert "After minus before, mean sensitivity 0.5-4 FPs per image" in html
    assert html.count("data:image/png;base64,") >= 5


def test_second_pipeline_run_reuses_everything(tiny_lab: Path, capsys) -> None:
    t = time.perf_counter()
    assert main(pipeline_argv(tiny_lab)) == 0
    out = capsys.readouterr().out
    assert time.perf_counter() - t < 30
    assert out.count("already done, skipped") >= 8
    assert "[pipeline] embed ..." not in out


def test_notebooks_are_committed_without_outputs() -> None:
    assert len(NOTEBOOKS) == 5
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_headless(path: Path, tiny_lab: Path, monkeypatch) -> None:
    monkeypatch.setenv("DLLAB_RUN", str(tiny_lab / "run"))
    monkeypatch.setenv("DLLAB_MANIFEST", str(tiny_lab / "m.parquet"))
    monkeypatch.setenv("DLLAB_TRUTH", str(tiny_lab / "demo" / "truth.parquet"))
    monkeypatch.setenv("DLLAB_USER", "notebook-tester")
    monkeypatch.setenv("DLLAB_DEMO_EDIT", "1")
    monkeypatch.setenv("DLLAB_ACCEPT", "1")
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # as in JupyterLab: the inline backend
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO / "lab")}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors, errors
    shown = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert shown, "the notebook displayed nothing"
    # every cell that draws shows its figure: an image (matplotlib inline) or a plotly figure
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and PLOTS.search(cell.source):
            kinds = {k for o in cell.outputs for k in o.get("data", {})}
            assert kinds & FIGURES, f"{path.name} cell {i} draws but shows no figure ({kinds})"
    if path.stem.startswith("05"):
        # the review widget is shown, and its scripted accept is a store event of the user
        from deeplesion_lab.graph import read_proposals
        from deeplesion_lab.labels import LabelStore

        kinds = {k for c in nb.cells if c.cell_type == "code" for o in c.outputs
                 for k in o.get("data", {})}
        assert "application/vnd.jupyter.widget-view+json" in kinds
        assert len(read_proposals(tiny_lab / "run")) > 0
        with LabelStore.for_run(tiny_lab / "run") as store:
            ev = store.events(limit=20)
            mine = ev[(ev["op"] == "add_lesions") & (ev["user"] == "notebook-tester")]
            assert len(mine) and (mine["tool"] == "review").all()


def test_side_by_side_jobs_report_failures_with_their_log(tmp_path) -> None:
    from deeplesion_lab.errors import LabError
    from deeplesion_lab.pipeline import _jobs
    from deeplesion_lab.run import RunDir

    with pytest.raises(LabError) as err:
        _jobs(RunDir(tmp_path), {"ok": ["--help"], "bad": ["train-detector", "--run",
                                                          tmp_path / "none", "--classes", "single"]})
    msg = str(err.value)
    assert "`bad` failed (2)" in msg and "`ok`" not in msg
    assert str(tmp_path / "jobs" / "bad.log") in msg
    assert "usage" in (tmp_path / "jobs" / "ok.log").read_text()
