"""The detector commands as a user runs them: train-detector, detect, evaluate-detector, finetune.

On the demo data (``generate_demo``, 4 patients, 256 px); the networks are real and tiny (128 px
canvas, 1 epoch).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from deeplesion_lab.cli import main
from deeplesion_lab.detection.froc import PREDICTION_COLUMNS
from deeplesion_lab.errors import LabError
from deeplesion_lab.lesion_types import COARSE_TYPES
from deeplesion_lab.manifest import read_manifest, write_manifest
from deeplesion_lab.run import RunDir

torch.set_num_threads(1)

KEYS = {"0.5", "1", "2", "4", "8", "16"}
SMALL = ["--image-size", "128", "--spacing-mm", "3.2", "--box-head", "64", "--batch-size", "4",
         "--threads", "1", "--no-progress"]
RUNTIME = ["--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(manifest path, lesion_id -> true type name)."""
    out = tmp_path_factory.mktemp("demo")
    from deeplesion_lab.demo import generate_demo

    res = generate_demo(out, n_patients=4, seed=0, size=256, progress=False)
    write_manifest(res.csv_path, out / "manifest.parquet")
    truth = pd.read_parquet(res.truth_path)
    truth = truth[truth["annotated"] & truth["lesion_id"].notna()]
    types = dict(zip(truth["lesion_id"].astype(str),
                     truth["coarse_type"].map(COARSE_TYPES), strict=True))
    return out / "manifest.parquet", types


def _new_run(tmp_path: Path, manifest: Path, types: dict | None = None) -> RunDir:
    run = RunDir(tmp_path / "run").init(manifest)
    if types is not None:
        m = read_manifest(manifest)
        ids = m["lesion_id"].astype(str)
        pd.DataFrame({
            "lesion_id": ids,
            "cluster": pd.array(ids.map(lambda i: hash(types.get(i, "x")) % 7), dtype="int64"),
            "label": ids.map(lambda i: types.get(i, "liver")),
            "confidence": 0.9,
        }).to_parquet(run.pseudo_labels)
    return run


@pytest.fixture(scope="module")
def pseudo_run(demo, tmp_path_factory):
    """A run with pseudo-labels and a trained 'pseudo' detector (copied by each test)."""
    manifest, types = demo
    run = _new_run(tmp_path_factory.mktemp("pseudo"), manifest, types)
    assert main(["train-detector", "--run", str(run.path), "--classes", "pseudo", "--epochs", "1",
                 *SMALL]) == 0
    return run


def _copy_run(run: RunDir, tmp_path: Path) -> RunDir:
    import shutil

    shutil.copytree(run.path, tmp_path / "run")
    return RunDir(tmp_path / "run")


def _metrics(run: RunDir) -> dict:
    return json.loads(run.metrics.read_text())


def test_help_does_not_import_torch() -> None:
    code = ("import sys; from deeplesion_lab.cli import build_parser; build_parser(); "
            "assert 'torch' not in sys.modules, 'torch imported by --help'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_model_options_and_cpu_defaults() -> None:
    import argparse

    from deeplesion_lab.commands._detector_options import (
        add_model_arguments,
        add_training_arguments,
        params_from_args,
    )
    from deeplesion_lab.detection.workflow import detector_params, parse_window
    from deeplesion_lab.errors import LabError

    assert parse_window("Soft Tissue") == "soft tissue" and parse_window("wide") == "wide"
    assert parse_window("-160,240") == (-160.0, 240.0)
    for bad, msg in [("240,-160", "LOW must be below"), ("a,b", "LOW,HIGH"),
                     ("tissue", "unknown preset")]:
        with pytest.raises(LabError, match=msg):
            parse_window(bad)
    p = argparse.ArgumentParser()
    add_model_arguments(p)
    add_training_arguments(p)
    cpu = params_from_args(p.parse_args([]), new=True)
    assert (cpu["optimizer"], cpu["lr"], cpu["window"]) == ("adamw", 0.001, "soft tissue")
    assert (cpu["image_size"], cpu["spacing_mm"], cpu["train_crop"], cpu["box_batch_size"]) \
        == (512, 0.8, 128, 32)
    gpu = params_from_args(p.parse_args(["--device", "cuda", "--optimizer", "sgd"]), new=True)
    assert (gpu["train_crop"], gpu["box_batch_size"], gpu["lr"]) == (None, 128, 0.02)
    small = params_from_args(p.parse_args(["--image-size", "96"]), new=True)
    assert small["train_crop"] is None  # the default window is never larger than the canvas
    assert params_from_args(p.parse_args(["--train-crop", "0"]), new=True)["train_crop"] is None
    assert cpu["norm"] == "batch"
    # the library function gives the same without argparse (notebooks, the pipeline)
    assert detector_params(new=True) == cpu
    assert detector_params(new=True, device="cuda", optimizer="sgd") == gpu
    assert detector_params(new=False, epochs=3, threads=2) == {
        "device": "cpu", "num_threads": 2, "progress": True, "epochs": 3}
    assert params_from_args(p.parse_args(["--norm", "group"]), new=True)["norm"] == "group"
    # copy-paste is on by default for a new centernet only; a loaded model keeps its own
    assert cpu["copy_paste"] == 2
    assert params_from_args(p.parse_args(["--arch", "fasterrcnn"]), new=True)["copy_paste"] == 0
    assert params_from_args(p.parse_args(["--copy-paste", "0"]), new=True)["copy_paste"] == 0
    assert "copy_paste" not in params_from_args(p.parse_args([]), new=False)
    assert params_from_args(p.parse_args(["--copy-paste", "1"]), new=False)["copy_paste"] == 1
    # the class-loss weight likewise (listed architectures only; the others keep 1.0)
    from deeplesion_lab.detection.workflow import CLASS_LOSS_WEIGHT

    assert cpu["class_loss_weight"] == CLASS_LOSS_WEIGHT["centernet"]
    assert "class_loss_weight" not in params_from_args(p.parse_args(["--arch", "fasterrcnn"]),
                                                       new=True)
    assert params_from_args(p.parse_args(["--class-loss-weight", "0.5"]),
                            new=True)["class_loss_weight"] == 0.5
    assert "class_loss_weight" not in params_from_args(p.parse_args([]), new=False)
    # the context slices' distance: 4 mm for a new centernet, 2 for the others; a loaded
    # model keeps its own
    from deeplesion_lab.detection.workflow import SLICE_SPACING_MM

    assert cpu["slice_spacing_mm"] == SLICE_SPACING_MM["centernet"] == 4.0
    assert params_from_args(p.parse_args(["--arch", "fasterrcnn"]),
                            new=True)["slice_spacing_mm"] == 2.0
    assert params_from_args(p.parse_args(["--slice-spacing-mm", "3"]),
                            new=True)["slice_spacing_mm"] == 3.0
    assert "slice_spacing_mm" not in params_from_args(p.parse_args([]), new=False)
    # the pasted lesions' own scale range: default for a new centernet that pastes
    from deeplesion_lab.detection.workflow import PASTE_SCALE_RANGE

    assert cpu.get("paste_scale_range") == PASTE_SCALE_RANGE.get("centernet")
    for argv in (["--copy-paste", "0"], ["--arch", "fasterrcnn"]):
        assert "paste_scale_range" not in params_from_args(p.parse_args(argv), new=True)
    assert params_from_args(p.parse_args(["--paste-scale", "0.8,1.2"]),
                            new=True)["paste_scale_range"] == (0.8, 1.2)
    assert "paste_scale_range" not in params_from_args(p.parse_args([]), new=False)
    for bad in ("2,1", "0,1", "1", "a,b"):
        with pytest.raises(SystemExit):
            p.parse_args(["--paste-scale", bad])


def test_train_detect_evaluate(demo, tmp_path, capsys) -> None:
    manifest, types = demo
    run = _new_run(tmp_path, manifest, types)
    assert main(["train-detector", "--run", str(run.path), "--classes", "single", "--epochs", "1",
                 *SMALL]) == 0
    model = run.detector_dir / "single" / "model.pt"
    assert model.is_file()
    cfg = json.loads((run.detector_dir / "single" / "config.json").read_text())
    assert cfg["classes"] == ["lesion"] and cfg["lineage"]["labels_source"] == "single class"
    assert _metrics(run)["detector_training"]["single"]["train_images_per_s"] > 0

    pred = tmp_path / "pred.csv"
    assert main(["detect", "--run", str(run.path), "--out", str(pred), *RUNTIME]) == 0
    header = pred.read_text().splitlines()[0]
    assert header == ",".join(PREDICTION_COLUMNS)
    df = pd.read_csv(pred)
    m = read_manifest(manifest)
    assert set(df["file_name"]) <= set(m.loc[m["split"] == 3, "file_name"])

    capsys.readouterr()
    assert main(["evaluate-detector", str(pred), "--manifest", str(manifest), "--run",
                 str(run.path), "--name", "single"]) == 0
    out = capsys.readouterr().out
    assert "FPs/image" in out and "mean(0.5-4)" in out
    det = _metrics(run)["detection"]["single"]
    assert set(det["sensitivity"]) == KEYS
    assert 0.0 <= det["mean_sensitivity_0_5_to_4"] <= 1.0
    low, high = det["interval95"]["interval"]["mean_0.5-4"]
    assert low <= det["mean_sensitivity_0_5_to_4"] <= high
    assert f"95 % interval [{low:.3f}, {high:.3f}]" in out
    assert det["n_images"] == m.loc[(m["split"] == 3) & (m["possibly_noisy"] == 0),
                                    "file_name"].nunique()
    assert Path(det["plot_png"]).is_file() and Path(det["plot_html"]).is_file()
    # without --manifest: the one run.json records, the same numbers
    assert main(["evaluate-detector", str(pred), "--run", str(run.path), "--name", "again",
                 "--no-plot"]) == 0
    assert _metrics(run)["detection"]["again"]["sensitivity"] == det["sensitivity"]
    capsys.readouterr()
    assert main(["evaluate-detector", str(pred), "--no-plot"]) == 2
    assert "--manifest" in capsys.readouterr().err

    # the same command again: already trained, nothing retrained, same model
    # (compared by content: the file's size moves by pickle memoisation when the finished
    # run is saved again from its resumed state)
    before = torch.load(model, map_location="cpu", weights_only=True)
    assert main(["train-detector", "--run", str(run.path), "--epochs", "1", *SMALL]) == 0
    again = torch.load(model, map_location="cpu", weights_only=True)
    assert again["n_iter"] == before["n_iter"] and again["history"] == before["history"]
    assert all(torch.equal(v, again["state_dict"][k]) for k, v in before["state_dict"].items())
    # other settings under the same name: a clear error, nothing overwritten
    capsys.readouterr()
    assert main(["train-detector", "--run", str(run.path), "--epochs", "1", "--lr", "0.5",
                 *SMALL]) == 2
    assert "other settings" in capsys.readouterr().err


def test_pseudo_classes_and_finetune_from_a_labels_table(demo, pseudo_run, tmp_path,
                                                         capsys) -> None:
    manifest, _ = demo
    run = _copy_run(pseudo_run, tmp_path)
    pseudo = pd.read_parquet(run.pseudo_labels)
    m = read_manifest(manifest)
    train_ids = set(m.loc[m["split"] == 1, "lesion_id"].astype(str))
    expected = sorted(set(pseudo.loc[pseudo["lesion_id"].isin(train_ids), "label"]))
    cfg = json.loads((run.detector_dir / "pseudo" / "config.json").read_text())
    assert cfg["classes"] == expected

    # corrected labels: two training lesions changed to another existing class
    labels = pseudo[["lesion_id", "label"]].copy()
    changed = labels.index[labels["lesion_id"].isin(train_ids)][:2]
    for i in changed:
        labels.loc[i, "label"] = next(c for c in expected if c != labels.loc[i, "label"])
    table = tmp_path / "corrected.csv"
    labels.to_csv(table, index=False)
    capsys.readouterr()
    assert main(["finetune", "--run", str(run.path), "--labels", str(table), "--epochs", "1",
                 "--batch-size", "4", *RUNTIME]) == 0
    out = capsys.readouterr().out
    assert "before" in out and "after" in out and "mean 0.5-4" in out
    ft = _metrics(run)["finetune"]
    assert set(ft["before"]["sensitivity"]) == KEYS and set(ft["after"]["sensitivity"]) == KEYS
    assert "mean_sensitivity_0_5_to_4" in ft["before"] and "mean_sensitivity_0_5_to_4" in ft["after"]
    # the change with a paired bootstrap interval over the same key slices
    d = ft["difference"]
    assert d["difference"]["mean_0.5-4"] == pytest.approx(
        ft["after"]["mean_sensitivity_0_5_to_4"] - ft["before"]["mean_sensitivity_0_5_to_4"])
    low, high = d["interval"]["mean_0.5-4"]
    assert low <= d["difference"]["mean_0.5-4"] <= high and 0 <= d["p_le_zero"]["mean_0.5-4"] <= 1
    assert "after - before, mean 0.5-4 FP" in out
    # the class-aware figure (a hit needs the lesion's type: what corrections act on), with its
    # interval and the paired after - before difference; a wrong type only removes hits
    for k in ("before", "after"):
        ca = ft[k]["class_aware"]
        assert set(ca["sensitivity"]) == KEYS and "interval95" in ca
        assert ca["n_lesions"] == ft[k]["n_lesions"]  # every test lesion of the demo is typed
        assert all(ca["sensitivity"][f] <= ft[k]["sensitivity"][f] for f in KEYS)
    cd = ft["class_aware_difference"]
    assert cd["difference"]["mean_0.5-4"] == pytest.approx(
        ft["after"]["class_aware"]["mean_sensitivity_0_5_to_4"]
        - ft["before"]["class_aware"]["mean_sensitivity_0_5_to_4"])
    assert ft["parent"] == "pseudo" and ft["corrected"] == 2
    # no lesion embedder in this run: the class head names the types
    assert ft["typed_by"] == ft["before_typed_by"] == "class head"
    assert "after_class_head" not in ft and "before_class_head" not in ft
    assert ft["labels_source"] == str(table.resolve()) and ft["label_snapshot_id"] is None
    new = run.detector_dir / ft["model"]
    cfg = json.loads((new / "config.json").read_text())
    assert cfg["lineage"]["finetuned_from"] == "pseudo"
    assert cfg["lineage"]["parent"]["labels_source"] == str(pseudo_run.pseudo_labels)
    assert (new / "froc_before_after.png").is_file()
    assert ft["model"] in _metrics(run)["detection"]
    # the CenterNet fine-tunes its heads only: features and their batch-norm statistics kept
    import torch

    assert ft["heads_only"] is True
    base = torch.load(run.detector_dir / "pseudo" / "model.pt", weights_only=True)["state_dict"]
    after = torch.load(new / "model.pt", weights_only=True)["state_dict"]
    for k in ("stem.0.0.weight", "stem.0.1.running_mean", "smooth.0.weight"):
        assert torch.equal(base[k], after[k]), k
    assert not torch.equal(base["heatmap.1.weight"], after["heatmap.1.weight"])


def test_finetune_bad_inputs(demo, pseudo_run, tmp_path, capsys) -> None:
    manifest, types = demo
    run = _new_run(tmp_path, manifest, types)
    # no model yet
    empty = tmp_path / "empty.csv"
    empty.write_text("lesion_id,label\n")
    assert main(["finetune", "--run", str(run.path), "--labels", str(empty), *RUNTIME]) == 2
    assert "empty" in capsys.readouterr().err
    table = tmp_path / "labels.csv"
    pd.read_parquet(run.pseudo_labels)[["lesion_id", "label"]].to_csv(table, index=False)
    assert main(["finetune", "--run", str(run.path), "--labels", str(table), *RUNTIME]) == 2
    assert "no trained multi-class detector" in capsys.readouterr().err
    # no labels at all and no label store
    assert main(["finetune", "--run", str(run.path), *RUNTIME]) == 2
    assert "--labels" in capsys.readouterr().err

    run = _copy_run(pseudo_run, tmp_path / "trained")
    classes = json.loads((run.detector_dir / "pseudo" / "config.json").read_text())["classes"]
    # a label the model does not know: clear error naming the remedies, nothing written
    lab = pd.read_csv(table)
    m = read_manifest(manifest)
    first_train = m.loc[m["split"] == 1, "lesion_id"].astype(str).iloc[0]
    lab.loc[lab["lesion_id"] == first_train, "label"] = "lymph node"
    lab.to_csv(table, index=False)
    models = sorted(p.name for p in run.detector_dir.iterdir())
    capsys.readouterr()
    assert main(["finetune", "--run", str(run.path), "--labels", str(table), *RUNTIME]) == 2
    err = capsys.readouterr().err
    assert "lymph node" in err and "--class-map" in err and "--reset-head" in err
    assert sorted(p.name for p in run.detector_dir.iterdir()) == models
    # a class map naming a label nobody has
    assert main(["finetune", "--run", str(run.path), "--labels", str(table), "--class-map",
                 "kidney stone=liver", *RUNTIME]) == 2
    assert "no lesion has" in capsys.readouterr().err
    assert "finetune" not in _metrics(run)
    # with a class map onto a known class it runs
    assert main(["finetune", "--run", str(run.path), "--labels", str(table), "--class-map",
                 f"lymph node={classes[0]}", "--epochs", "1", "--batch-size", "4",
                 *RUNTIME]) == 0
    assert _metrics(run)["finetune"]["classes"] == classes


def test_finetune_reset_head_keeps_the_known_classes(demo, pseudo_run, tmp_path,
                                                     capsys) -> None:
    """--reset-head with a new class: known classes keep their row of the class head, the new
    one starts from the mean of the old ones (lr 0: the head is left as set up)."""
    import torch

    manifest, _ = demo
    run = _copy_run(pseudo_run, tmp_path)
    base = torch.load(run.detector_dir / "pseudo" / "model.pt", weights_only=True)
    classes = base["classes"]
    w = base["state_dict"]["classes.weight"]
    labels = pd.read_parquet(run.pseudo_labels)[["lesion_id", "label"]]
    m = read_manifest(manifest)
    first_train = m.loc[m["split"] == 1, "lesion_id"].astype(str).iloc[0]
    labels.loc[labels["lesion_id"] == first_train, "label"] = "aaa new class"
    table = tmp_path / "labels.csv"
    labels.to_csv(table, index=False)
    assert main(["finetune", "--run", str(run.path), "--labels", str(table), "--reset-head",
                 "--epochs", "1", "--lr", "0", "--batch-size", "4", *RUNTIME]) == 0
    ft = _metrics(run)["finetune"]
    train_ids = set(m.loc[m["split"] == 1, "lesion_id"].astype(str))
    expected = sorted(set(labels.loc[labels["lesion_id"].isin(train_ids), "label"]))
    assert ft["classes"] == expected and "aaa new class" in expected
    after = torch.load(run.detector_dir / ft["model"] / "model.pt", weights_only=True)
    nw = after["state_dict"]["classes.weight"]
    assert nw.shape[0] == len(expected)
    for k, c in enumerate(expected):
        assert torch.allclose(nw[k], w[classes.index(c)] if c in classes else w.mean(0))


def test_missing_images_fail_before_anything_is_written(demo, tmp_path, capsys) -> None:
    import shutil

    manifest, _ = demo
    m = read_manifest(manifest)
    images = tmp_path / "Images_png"
    shutil.copytree(m.attrs["images_root"], images)
    victim = m[m["split"] == 1].iloc[0]
    from deeplesion_lab.images import key_slice_path

    key_slice_path(images, victim["file_name"]).unlink()
    src = Path(m.attrs["source"])
    copy = tmp_path / "manifest.parquet"
    write_manifest(src, copy, images)
    run = _new_run(tmp_path, copy)
    assert main(["train-detector", "--run", str(run.path), "--epochs", "1", *SMALL]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and victim["file_name"][:-8] in err and str(victim["lesion_id"]) in err
    assert not (run.detector_dir / "single").exists()


def test_finetune_from_the_label_store(demo, pseudo_run, tmp_path, capsys) -> None:
    labels_mod = pytest.importorskip("deeplesion_lab.labels")
    manifest, _ = demo
    run = _copy_run(pseudo_run, tmp_path)
    m = read_manifest(manifest)
    store = labels_mod.LabelStore.open(run.label_db, dataset=m)
    pseudo = pd.read_parquet(run.pseudo_labels)
    store.init_pseudo_labels(pseudo, run_id="test")
    train = pseudo[pseudo["lesion_id"].isin(m.loc[m["split"] == 1, "lesion_id"].astype(str))]
    classes = sorted(set(train["label"]))
    lid = str(train["lesion_id"].iloc[0])
    new = next(c for c in classes if c != train["label"].iloc[0])
    store.relabel([lid], new, "alice")
    # an accepted proposal: a new lesion on a training key slice, added through the store
    key = m.loc[m["lesion_id"].astype(str) == lid].iloc[0]
    x1, y1 = (5.0, 5.0) if key["bbox_x1"] > 40 else (float(key["image_width"]) - 35, 5.0)
    store.add_lesions(pd.DataFrame([{
        "lesion_id": "added-1", "file_name": key["file_name"],
        **{c: int(key[c]) for c in ("patient_index", "study_index", "series_id",
                                    "key_slice_index")},
        "bbox_x1": x1, "bbox_y1": y1, "bbox_x2": x1 + 20, "bbox_y2": y1 + 20,
    }]), "alice", label=classes[0])
    store.close()

    assert main(["finetune", "--run", str(run.path), "--epochs", "1", "--batch-size", "4",
                 "--user", "bob", *RUNTIME]) == 0
    assert "1 lesions people added" in capsys.readouterr().out
    ft = _metrics(run)["finetune"]
    sid = ft["label_snapshot_id"]
    assert sid is not None and ft["model"] == f"pseudo-ft{sid}" and ft["corrected"] == 1
    assert ft["added_lesions"] == 1
    cfg = json.loads((run.detector_dir / ft["model"] / "config.json").read_text())
    assert cfg["lineage"]["label_snapshot_id"] == sid
    assert cfg["lineage"]["n_added_lesions"] == 1
    store = labels_mod.LabelStore.open(run.label_db)
    snaps = store.list_snapshots()
    snap = store.snapshot_labels(sid)
    store.close()
    assert snaps.loc[snaps["snapshot_id"] == sid, "created_by"].item() == "bob"
    assert snap.set_index("lesion_id").loc[lid, "label"] == new
    # the recorded snapshot can be named explicitly (same labels: the finished model is reused)
    assert main(["finetune", "--run", str(run.path), "--snapshot", str(sid), "--epochs", "1",
                 "--batch-size", "4", *RUNTIME]) == 0


def test_finetune_types_detections_with_the_lesion_embedder(demo, pseudo_run, tmp_path,
                                                            capsys) -> None:
    """With the run's lesion embedder, the fine-tuned model's detections are named by the
    nearest labelled training lesions; its folder keeps those labels, and ``detect`` uses them."""
    manifest, _ = demo
    run = _copy_run(pseudo_run, tmp_path)
    assert main(["embed", str(manifest), "--run", str(run.path), "--epochs", "0",
                 "--no-progress", "--threads", "1"]) == 0
    m = read_manifest(manifest)
    train_ids = set(m.loc[m["split"] == 1, "lesion_id"].astype(str))
    labels = pd.read_parquet(run.pseudo_labels)[["lesion_id", "label"]]
    labels.loc[labels["lesion_id"].isin(train_ids), "label"] = "kidney"  # one name for all
    from deeplesion_lab.detection.workflow import run_finetune

    said = []
    # as `finetune --labels` does, with every peak kept (this one-epoch detector scores low)
    run_finetune(run, labels, {"labels_source": "kidney.csv"}, name="typed", reset_head=True,
                 params={"epochs": 1, "batch_size": 4, "num_threads": 1, "progress": False,
                         "score_threshold": 0.0}, out=said.append)
    assert any("lesion embedder" in line for line in said)
    ft = _metrics(run)["finetune"]
    assert ft["typed_by"] == "lesion embedder"
    assert set(ft["after_class_head"]["sensitivity"]) == KEYS
    # before is named the same way, by the base model's own training labels (the run's
    # pseudo-labels it was trained on), so after - before compares like with like
    assert ft["before_typed_by"] == "lesion embedder"
    assert set(ft["before_class_head"]["sensitivity"]) == KEYS
    assert any("by its own training labels" in line for line in said)
    before = pd.read_csv(ft["before"]["predictions"])
    pseudo = pd.read_parquet(run.pseudo_labels)
    assert len(before) and set(before["label"]) <= set(
        pseudo.loc[pseudo["lesion_id"].isin(train_ids), "label"])
    assert ft["before"]["n_detections"] == ft["before_class_head"]["n_detections"] == len(before)
    kept = pd.read_parquet(run.detector_dir / "typed" / "typer.parquet")
    assert set(kept["lesion_id"]) == train_ids and set(kept["label"]) == {"kidney"}
    after = pd.read_csv(ft["after"]["predictions"])
    assert len(after) and set(after["label"]) == {"kidney"}
    # the boxes are the detector's (scores times the vote share when the typer rescores)
    assert ft["after"]["n_detections"] == ft["after_class_head"]["n_detections"] == len(after)
    conf = json.loads((run.detector_dir / "typed" / "typer.json").read_text())
    from deeplesion_lab.detection.workflow import TYPER_NEIGHBORS, TYPER_RESCORE

    assert conf["n_neighbors"] == TYPER_NEIGHBORS and conf["rescore"] is TYPER_RESCORE
    if not TYPER_RESCORE:
        assert ft["after"]["sensitivity"] == ft["after_class_head"]["sensitivity"]
    # detect names them the same way, from the labels kept beside the model
    out = tmp_path / "pred.csv"
    assert main(["detect", "--run", str(run.path), "--model", "typed", "--out", str(out),
                 *RUNTIME]) == 0
    assert set(pd.read_csv(out)["label"]) == {"kidney"}
    kept.assign(label="bone").to_parquet(run.detector_dir / "typed" / "typer.parquet")
    assert main(["detect", "--run", str(run.path), "--model", "typed", "--out", str(out),
                 *RUNTIME]) == 0
    assert set(pd.read_csv(out)["label"]) == {"bone"}
    # pseudo-labels other than those the base was trained on: its class head names "before"
    pseudo.assign(label=pseudo["label"].iloc[::-1].to_numpy()).to_parquet(run.pseudo_labels)
    said.clear()
    run_finetune(run, labels, {"labels_source": "kidney.csv"}, base="pseudo", name="typed2",
                 reset_head=True,
                 params={"epochs": 1, "batch_size": 4, "num_threads": 1, "progress": False,
                         "score_threshold": 0.0}, out=said.append)
    ft = _metrics(run)["finetune"]
    assert ft["typed_by"] == "lesion embedder" and ft["before_typed_by"] == "class head"
    assert "before_class_head" not in ft
    assert any("not known here" in line for line in said)
    # without the run's embeddings: a clear error, no predictions written
    run.embeddings.unlink()
    out.unlink()
    capsys.readouterr()
    assert main(["detect", "--run", str(run.path), "--model", "typed", "--out", str(out),
                 *RUNTIME]) == 2
    assert "lesion embedder" in capsys.readouterr().err and not out.exists()


def test_detect_with_two_models_as_one_ensemble(demo, pseudo_run, tmp_path, capsys) -> None:
    """``--model a+b`` averages two CenterNets: the first names the types; a model that cannot
    be averaged, an unknown member or fine-tuning an ensemble are clear errors."""
    run = _copy_run(pseudo_run, tmp_path)
    assert main(["train-detector", "--run", str(run.path), "--classes", "single", "--epochs", "1",
                 *SMALL]) == 0
    from deeplesion_lab.detection.workflow import ENSEMBLE_MODEL, ensemble_ready, run_finetune

    assert ENSEMBLE_MODEL == "pseudo+single" and ensemble_ready(run)
    from deeplesion_lab.detection.ensemble import CenterNetEnsemble
    from deeplesion_lab.detection.workflow import load_detector

    # every peak kept (these one-epoch detectors score low)
    pred = {}
    for name in ("pseudo", "single", ENSEMBLE_MODEL):
        got, det = load_detector(run, name, score_threshold=0.0, num_threads=1, progress=False)
        assert got == name
        pred[name] = det.predict(run.load_manifest(), "test")
    assert isinstance(det.model_, CenterNetEnsemble) and det.lineage_["ensemble"] == [
        "pseudo", "single"]
    classes = json.loads((run.detector_dir / "pseudo" / "config.json").read_text())["classes"]
    assert det.classes_ == classes
    assert len(pred[ENSEMBLE_MODEL]) and set(pred[ENSEMBLE_MODEL]["label"]) <= set(classes)
    for one in ("pseudo", "single"):  # neither model alone
        assert not pred[ENSEMBLE_MODEL][["x1", "y1", "score"]].equals(pred[one][["x1", "y1",
                                                                                   "score"]])
    # through the commands: detect says what it averages; it is evaluated like any model
    out = tmp_path / "ens.csv"
    capsys.readouterr()
    assert main(["detect", "--run", str(run.path), "--model", ENSEMBLE_MODEL, "--out", str(out),
                 *RUNTIME]) == 0
    assert "an ensemble of pseudo, single" in capsys.readouterr().out and out.is_file()
    assert main(["evaluate-detector", str(out), "--run", str(run.path),
                 "--name", ENSEMBLE_MODEL]) == 0
    assert set(_metrics(run)["detection"][ENSEMBLE_MODEL]["sensitivity"]) == KEYS
    # errors: an unknown member, a Faster R-CNN member, fine-tuning an ensemble
    bad = tmp_path / "bad.csv"
    assert main(["detect", "--run", str(run.path), "--model", "pseudo+nope", "--out", str(bad),
                 *RUNTIME]) == 2
    assert "no such model" in capsys.readouterr().err and not bad.exists()
    assert main(["train-detector", "--run", str(run.path), "--classes", "single", "--name",
                 "frcnn", "--arch", "fasterrcnn", "--epochs", "1", *SMALL]) == 0
    assert not ensemble_ready(run, "pseudo+frcnn")
    capsys.readouterr()
    assert main(["detect", "--run", str(run.path), "--model", "pseudo+frcnn", "--out", str(bad),
                 *RUNTIME]) == 2
    err = capsys.readouterr().err
    assert "only CenterNet" in err and "frcnn: fasterrcnn" in err and not bad.exists()
    with pytest.raises(LabError, match="cannot fine-tune the ensemble"):
        run_finetune(run, pd.read_parquet(run.pseudo_labels)[["lesion_id", "label"]],
                     {"labels_source": "x"}, base=ENSEMBLE_MODEL)
