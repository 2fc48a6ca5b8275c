"""Detector architectures: the CenterNet-style detector, FCOS, ``arch`` in checkpoints.

Real networks on tiny images (64-96 px, a few steps) and the series of ``detector_fixtures``.
Behaviour only (shapes, ignore regions, resume, checkpoint errors), never accuracy.
"""

from __future__ import annotations

import json

import pytest
import torch
from detector_fixtures import interrupt_fit, make_detection_data, true_types

from deeplesion_lab.detection.centernet import STRIDE, CenterNetLesion, centernet_targets
from deeplesion_lab.detection.froc import PREDICTION_COLUMNS
from deeplesion_lab.detection.model import ModelError, build_model, reset_class_head
from deeplesion_lab.detection.train import CheckpointError, LesionDetector

torch.set_num_threads(1)

TINY = dict(arch="centernet", width=8, image_size=96, spacing_mm=1.0, batch_size=2,
            progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_detection_data(tmp_path_factory.mktemp("det_arch"))


@pytest.fixture(scope="module")
def fitted(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ck_arch") / "cn"
    det = LesionDetector(epochs=2, **TINY).fit(data.manifest, true_types(data.manifest),
                                               checkpoint_dir=folder)
    return det, folder


def _targets(n: int = 2):
    return [{"boxes": torch.tensor([[8.0, 12.0, 40.0, 36.0], [44.0, 40.0, 60.0, 60.0]]),
             "labels": torch.tensor([2, -1])} for _ in range(n)]


def test_centernet_shapes_losses_and_detections() -> None:
    m = CenterNetLesion(3, width=8)
    m.train()
    losses = m([torch.rand(3, 64, 64), torch.rand(3, 64, 64)], _targets())
    assert set(losses) == {"loss_heatmap", "loss_box", "loss_classes"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    assert m.classes.weight.grad is not None and m.box[-1].weight.grad.abs().sum() > 0
    m.eval()
    # any size: padded to a multiple of 32 inside, boxes clipped to each image
    out = m([torch.rand(3, 70, 50), torch.rand(3, 64, 64)])
    assert len(out) == 2
    for o, (h, w) in zip(out, [(70, 50), (64, 64)], strict=True):
        assert o["boxes"].shape[1] == 4 and len(o["boxes"]) == len(o["scores"]) == len(o["labels"])
        assert len(o["boxes"]) <= m.detections_per_img
        assert (o["boxes"][:, 2] <= w).all() and (o["boxes"][:, 3] <= h).all()
        assert (o["boxes"] >= 0).all() and ((o["labels"] >= 1) & (o["labels"] <= 3)).all()
        assert (o["scores"][:-1] >= o["scores"][1:]).all()
    single = CenterNetLesion(1, width=8)
    assert single.classes is None
    single.train()
    assert "loss_classes" not in single([torch.rand(3, 64, 64)], _targets(1))


def test_class_loss_weight_scales_the_class_loss_only() -> None:
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    losses = {}
    for w in (1.0, 0.25):
        torch.manual_seed(0)
        m = CenterNetLesion(3, width=8, class_loss_weight=w)
        m.train()
        losses[w] = m(images, _targets())
    assert losses[1.0]["loss_classes"] > 0
    torch.testing.assert_close(losses[0.25]["loss_classes"], 0.25 * losses[1.0]["loss_classes"])
    for k in ("loss_heatmap", "loss_box"):
        torch.testing.assert_close(losses[0.25][k], losses[1.0][k])


def test_class_loss_weight_is_saved_and_centernet_only(data, tmp_path) -> None:
    det = LesionDetector(epochs=1, class_loss_weight=0.3, **TINY).fit(
        data.manifest, true_types(data.manifest), checkpoint_dir=tmp_path / "w")
    back = LesionDetector.load(tmp_path / "w" / "model.pt")
    assert back.get_params()["class_loss_weight"] == 0.3 and back.model_.class_loss_weight == 0.3
    assert det.model_.class_loss_weight == 0.3
    # continuing the training follows the estimator's weight, not the one the network was built with
    det.set_params(class_loss_weight=0.6, warm_start=True).fit(
        data.manifest, true_types(data.manifest), checkpoint_dir=tmp_path / "w2")
    assert det.model_.class_loss_weight == 0.6
    assert det.lineage_["params"]["class_loss_weight"] == 0.6
    with pytest.raises(ModelError, match="class_loss_weight=0.5 is a CenterNet option"):
        LesionDetector(arch="fasterrcnn", class_loss_weight=0.5, epochs=1, image_size=96,
                       progress=False).fit(data.manifest, checkpoint_dir=tmp_path / "frcnn")
    assert not (tmp_path / "frcnn" / "model.pt").exists()


def test_centernet_targets_peaks_and_ignore_regions() -> None:
    boxes = torch.tensor([[8.0, 8.0, 24.0, 24.0], [40.0, 40.0, 60.0, 60.0]])
    heat, ignore, weight, owner = centernet_targets(boxes, torch.tensor([1, -1]), 16, 16)
    assert heat.shape == ignore.shape == owner.shape == (16, 16)
    cy, cx = int(16 / STRIDE), int(16 / STRIDE)  # centre cell of the lesion
    assert heat[cy, cx] == 1.0 and (heat >= 1.0).sum() == 1
    # the ignore box covers cells 10..15 and gets no Gaussian; the lesion's cells are not ignored
    assert ignore[10:15, 10:15].all() and not ignore[cy, cx] and heat[12, 12] < 0.05
    assert ignore.sum() == 25
    assert torch.equal(weight, heat) and (owner == 0).all()
    # nothing but an ignore region: no lesion anywhere
    heat, ignore, _, _ = centernet_targets(boxes[1:], torch.tensor([-1]), 16, 16)
    assert heat.max() == 0 and ignore.sum() == 25


def test_centernet_ignore_regions_are_not_background() -> None:
    """Heatmap outputs inside an ignore box get no gradient; outside it they do."""
    torch.manual_seed(0)
    m = CenterNetLesion(1, width=8)
    m.train()
    out = m.heads(torch.rand(1, 3, 64, 64))
    logits = out["heatmap"].detach().requires_grad_(True)
    out["heatmap"] = logits
    t = [{"boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0], [36.0, 36.0, 60.0, 60.0]]),
          "labels": torch.tensor([1, -1])}]
    m.loss(out, t)["loss_heatmap"].backward()
    g = logits.grad[0]
    assert g[10:14, 10:14].abs().max() == 0  # cells 9..14 lie in the ignore box [36, 60] / 4
    assert g[0, 12].abs() > 0  # background cell away from both


def test_multi_class_head_reset() -> None:
    m = build_model("centernet", 3, width=8)
    reset_class_head(m, 5)
    assert m.classes.out_channels == 5
    reset_class_head(m, 1)
    assert m.classes is None
    with pytest.raises(ModelError, match="unknown detector architecture"):
        build_model("yolo", 1)
    with pytest.raises(ModelError, match="at least one lesion class"):
        build_model("centernet", 0)


def test_class_head_reset_by_name_keeps_the_known_classes() -> None:
    m = build_model("centernet", 3, width=8)
    w, b = m.classes.weight.detach().clone(), m.classes.bias.detach().clone()
    m.reset_class_head(3, ["bone", "liver", "lung"], ["kidney", "lung", "liver"])
    nw, nb = m.classes.weight.detach(), m.classes.bias.detach()
    assert torch.equal(nw[1], w[2]) and torch.equal(nw[2], w[1]) and nb[1] == b[2]
    assert torch.allclose(nw[0], w.mean(0)) and torch.isclose(nb[0], b.mean())


def test_frozen_features_train_the_heads_only() -> None:
    torch.manual_seed(0)
    m = CenterNetLesion(3, width=8)
    m.set_freeze_features(True)
    m.train()
    assert not m.stem.training and not m.stages.training and m.heatmap.training
    stats = m.stem[0][1].running_mean.clone()
    losses = m([torch.rand(3, 64, 64)], _targets(1))
    sum(losses.values()).backward()
    assert m.stem[0][0].weight.grad is None and m.smooth[0].weight.grad is None
    assert m.heatmap[-1].weight.grad.abs().sum() > 0 and m.classes.weight.grad is not None
    assert torch.equal(m.stem[0][1].running_mean, stats)  # batch-norm statistics kept
    m.set_freeze_features(False)
    assert all(p.requires_grad for p in m.parameters())


def test_flip_test_is_the_mean_of_the_image_and_its_mirror() -> None:
    torch.manual_seed(0)
    m = CenterNetLesion(1, width=8).eval()
    x = torch.rand(3, 64, 64)
    with torch.no_grad():
        plain = m.heads(x[None])
        mirror = m.heads(x.flip(-1)[None])
        heat = torch.sigmoid((plain["heatmap"] + mirror["heatmap"].flip(-1)) / 2)[0]
        box = ((plain["box"] + mirror["box"].flip(-1)[:, [2, 1, 0, 3]]) / 2)[0]
        m.flip_test = True
        got = m([x])[0]
    iy, ix = divmod(int(heat.flatten().argmax()), heat.shape[1])
    cx, cy = (ix + 0.5) * STRIDE, (iy + 0.5) * STRIDE
    d = box[:, iy, ix]
    want = torch.tensor([cx - d[0], cy - d[1], cx + d[2], cy + d[3]]).clamp(0, 64)
    assert torch.isclose(got["scores"][0], heat.max())
    assert torch.allclose(got["boxes"][0], want, atol=1e-4)


def test_fcos_drops_ignore_regions_from_its_targets() -> None:
    m = build_model("fcos", 3, image_size=64, anchor_sizes=(8, 16, 32, 64))
    assert m.arch == "fcos"
    m.train()
    losses = m([torch.rand(3, 64, 64)], _targets(1))  # label -1 would break torchvision's FCOS
    assert all(torch.isfinite(v) for v in losses.values())
    m.eval()
    out = m([torch.rand(3, 64, 64)])
    assert set(out[0]) == {"boxes", "scores", "labels"}


def test_centernet_fit_predict_save_load(fitted, data) -> None:
    det, folder = fitted
    assert det.classes_ == sorted(set(true_types(data.manifest)["label"]))
    assert det.model_.arch == "centernet" and det.n_iter_ > 0
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["arch"] == "centernet" and cfg["params"]["arch"] == "centernet"
    assert torch.load(folder / "model.pt", weights_only=True)["arch"] == "centernet"
    pred = det.predict(data.manifest, "test")
    assert list(pred.columns) == list(PREDICTION_COLUMNS)
    assert set(pred["label"]) <= set(det.classes_)
    again = LesionDetector.load(folder, progress=False)
    assert again.arch == "centernet"
    assert again.predict(data.manifest, "test").equals(pred)


def test_loading_as_another_architecture_is_a_clear_error(fitted, tmp_path) -> None:
    _, folder = fitted
    with pytest.raises(CheckpointError, match="is a centernet detector, not fasterrcnn"):
        LesionDetector.load(folder, arch="fasterrcnn")
    assert LesionDetector.load(folder, arch="centernet").arch == "centernet"
    # checkpoints made before `arch` existed are Faster R-CNNs: loading one as such names it
    ck = torch.load(folder / "model.pt", weights_only=True)
    del ck["arch"], ck["params"]["arch"]
    torch.save(ck, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="arch fasterrcnn"):
        LesionDetector.load(tmp_path / "old.pt")


def test_warm_start_refuses_another_architecture(fitted, data) -> None:
    det, _ = fitted
    other = LesionDetector.load(fitted[1], progress=False)
    other.set_params(warm_start=True, epochs=1, arch="fasterrcnn")
    with pytest.raises(ModelError, match="cannot continue training a centernet"):
        other.fit(data.manifest, true_types(data.manifest))
    assert det.arch == "centernet"


def test_resume_retraces_and_refuses_another_architecture(data, tmp_path) -> None:
    kw = dict(TINY, epochs=2, checkpoint_every=2)
    straight = LesionDetector(**kw).fit(data.manifest, checkpoint_dir=tmp_path / "a")

    interrupt_fit(kw, data.manifest, tmp_path / "b", at_step=5)
    resumed = LesionDetector(**kw).fit(data.manifest, checkpoint_dir=tmp_path / "b")
    assert resumed.n_iter_ == straight.n_iter_ == 6
    sa, sb = straight.model_.state_dict(), resumed.model_.state_dict()
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=1e-5), k
    with pytest.raises(CheckpointError, match=r"differs in: params\.arch\)"):
        LesionDetector(**dict(kw, arch="fasterrcnn")).fit(data.manifest,
                                                          checkpoint_dir=tmp_path / "b")
    # options added later are left out of the fingerprint at their old behaviour, so a last.pt
    # written before they existed resumes; set otherwise, they are a difference
    saved = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    assert "class_loss_weight" not in json.dumps(saved, default=str)
    interrupt_fit(kw, data.manifest, tmp_path / "c", at_step=5)
    with pytest.raises(CheckpointError, match=r"params\.class_loss_weight"):
        LesionDetector(**dict(kw, class_loss_weight=0.5)).fit(data.manifest,
                                                              checkpoint_dir=tmp_path / "c")


@pytest.mark.parametrize("s", [1.0, 0.87, 1.13])
def test_windows_are_resampled_like_the_whole_rescaled_image(s) -> None:
    import numpy as np
    import torch.nn.functional as F

    from deeplesion_lab.detection.dataset import resample_window

    base = np.random.default_rng(0).random((3, 90, 70)).astype(np.float16)
    whole = base.astype(np.float32)
    if s != 1.0:
        whole = F.interpolate(torch.from_numpy(whole)[None], scale_factor=s, mode="bilinear",
                              align_corners=False, recompute_scale_factor=False)[0].numpy()
    for x0, y0 in [(0, 0), (5, 17), (whole.shape[2] - 32, whole.shape[1] - 32)]:
        win = resample_window(base, s, x0, y0, 32)
        assert win.shape == (3, 32, 32)
        np.testing.assert_allclose(win, whole[:, y0:y0 + 32, x0:x0 + 32], atol=1e-5)


def test_cli_train_detect_with_arch(data, tmp_path, capsys) -> None:
    import pandas as pd

    from deeplesion_lab.cli import main
    from deeplesion_lab.run import RunDir

    run = RunDir(tmp_path / "run").init(data.manifest_path)
    small = ["--image-size", "96", "--spacing-mm", "1.0", "--batch-size", "2", "--width", "8",
             "--threads", "1", "--no-progress"]
    assert main(["train-detector", "--run", str(run.path), "--classes", "single", "--epochs",
                 "1", "--arch", "centernet", *small]) == 0
    cfg = json.loads((run.detector_dir / "single" / "config.json").read_text())
    assert cfg["arch"] == "centernet" and cfg["params"]["width"] == 8
    metrics = json.loads(run.metrics.read_text())
    assert metrics["detector_training"]["single"]["train_images_per_s"] > 0
    pred = tmp_path / "pred.csv"
    assert main(["detect", "--run", str(run.path), "--out", str(pred), "--threads", "1",
                 "--no-progress"]) == 0
    assert list(pd.read_csv(pred).columns) == list(PREDICTION_COLUMNS)
    # the same name with another architecture: a clear error, nothing overwritten
    before = (run.detector_dir / "single" / "model.pt").read_bytes()
    capsys.readouterr()
    code = main(["train-detector", "--run", str(run.path), "--classes", "single", "--epochs",
                 "1", "--arch", "fasterrcnn", *small])
    assert code == 2 and "params.arch" in capsys.readouterr().err
    assert (run.detector_dir / "single" / "model.pt").read_bytes() == before


def test_command_defaults_per_architecture() -> None:
    import argparse

    from deeplesion_lab.commands._detector_options import (
        add_model_arguments,
        add_training_arguments,
        params_from_args,
    )
    from deeplesion_lab.detection.workflow import DEFAULT_ARCH, TRAIN_EPOCHS

    p = argparse.ArgumentParser()
    add_model_arguments(p)
    add_training_arguments(p)
    d = params_from_args(p.parse_args([]), new=True)
    assert d["arch"] == DEFAULT_ARCH and d["epochs"] == TRAIN_EPOCHS[DEFAULT_ARCH]
    f = params_from_args(p.parse_args(["--arch", "fasterrcnn"]), new=True)
    assert (f["arch"], f["epochs"]) == ("fasterrcnn", TRAIN_EPOCHS["fasterrcnn"])
    assert params_from_args(p.parse_args(["--epochs", "7"]), new=True)["epochs"] == 7
    with pytest.raises(SystemExit):
        p.parse_args(["--arch", "yolo"])
    # a loaded model keeps its epochs unless --epochs is given
    ft = argparse.ArgumentParser()
    add_training_arguments(ft, finetune=True)
    assert "epochs" not in params_from_args(ft.parse_args([]), new=False)


@pytest.mark.parametrize(
    ("param", "value", "allowed"),
    [("arch", "yolo", "among"), ("batch_size", 0, r"range \[1, inf\)"),
     ("micro_batches", 0, r"range \[1, inf\)"), ("crop_lesion_p", 1.5, r"range \[0.0, 1.0\]"),
     ("unannotated", "all", "among"), ("class_loss_weight", 0.0, r"range \(0.0, inf\)")],
)
def test_fit_refuses_bad_parameters(param, value, allowed, tmp_path):
    """Validated in ``fit`` (scikit-learn's style), the parameter named, nothing written."""
    import pandas as pd

    from deeplesion_lab.detection.train import LesionDetector
    from deeplesion_lab.errors import LabError

    det = LesionDetector(**{param: value})
    with pytest.raises(LabError, match=rf"'{param}' parameter of LesionDetector.*{allowed}.*Got"):
        det.fit(pd.DataFrame(), checkpoint_dir=tmp_path / "model")
    assert not (tmp_path / "model").exists() and not hasattr(det, "model_")
