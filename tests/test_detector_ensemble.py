"""CenterNet ensembles: head outputs averaged per cell, the members' decoder, clear errors.

Real (untrained and briefly trained) networks on tiny images; behaviour only, never accuracy.
"""

from __future__ import annotations

import pytest
import torch
from detector_fixtures import make_detection_data

from deeplesion_lab.detection.centernet import CenterNetLesion
from deeplesion_lab.detection.ensemble import CenterNetEnsemble, EnsembleError
from deeplesion_lab.detection.froc import PREDICTION_COLUMNS
from deeplesion_lab.detection.train import LesionDetector

torch.set_num_threads(1)


def _members(n: int, classes: int = 1) -> list[CenterNetLesion]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        m = CenterNetLesion(classes, width=8)
        with torch.no_grad():  # a heatmap that peaks somewhere (untrained ones are flat)
            m.heatmap[-1].bias.fill_(0.0)
        out.append(m.eval())
    return out


def test_one_member_detects_as_the_member_alone() -> None:
    (m,) = _members(1)
    images = [torch.rand(3, 64, 64), torch.rand(3, 70, 50)]
    a, b = m(images), CenterNetEnsemble([m]).eval()(images)
    assert len(a) == len(b) == 2
    for x, y in zip(a, b, strict=True):
        assert len(x["boxes"]) == len(y["boxes"]) > 0
        torch.testing.assert_close(x["boxes"], y["boxes"])
        torch.testing.assert_close(x["scores"], y["scores"], atol=1e-5, rtol=1e-4)


def test_heads_average_probabilities_boxes_and_class_log_probabilities() -> None:
    ms = _members(2, classes=3)
    x = torch.rand(1, 3, 64, 64)
    outs = [m.heads(x) for m in ms]
    avg = CenterNetEnsemble(ms).eval().heads(x)
    p = (torch.sigmoid(outs[0]["heatmap"]) + torch.sigmoid(outs[1]["heatmap"])) / 2
    torch.testing.assert_close(torch.sigmoid(avg["heatmap"]), p, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(avg["box"], (outs[0]["box"] + outs[1]["box"]) / 2)
    lp = (torch.log_softmax(outs[0]["classes"], 1) + torch.log_softmax(outs[1]["classes"], 1)) / 2
    torch.testing.assert_close(avg["classes"], lp)
    # not the mean of the logits: the two members' heatmaps differ, so the two averages do too
    assert not torch.allclose(avg["heatmap"], (outs[0]["heatmap"] + outs[1]["heatmap"]) / 2)


def test_members_of_other_classes_add_heatmap_and_boxes_not_classes() -> None:
    pseudo, other = _members(2, classes=3)
    single = CenterNetLesion(1, width=8).eval()
    x = torch.rand(1, 3, 64, 64)
    ens = CenterNetEnsemble([pseudo, single, other]).eval()
    assert ens.num_classes == 3 and ens.class_members == [0, 2]
    avg = ens.heads(x)
    outs = [m.heads(x) for m in (pseudo, single, other)]
    p = torch.stack([torch.sigmoid(o["heatmap"]) for o in outs]).mean(0)
    torch.testing.assert_close(torch.sigmoid(avg["heatmap"]), p, atol=1e-5, rtol=1e-4)
    lp = (torch.log_softmax(outs[0]["classes"], 1) + torch.log_softmax(outs[2]["classes"], 1)) / 2
    torch.testing.assert_close(avg["classes"], lp)
    # a single-class first member: the ensemble is single-class, whoever follows
    ens1 = CenterNetEnsemble([single, pseudo]).eval()
    assert ens1.num_classes == 1 and "classes" not in ens1.heads(x)
    dets = ens1([torch.rand(3, 64, 64)])[0]
    assert len(dets["labels"]) == 0 or set(dets["labels"].tolist()) == {1}


def test_members_that_cannot_be_averaged_and_training_are_clear_errors() -> None:
    with pytest.raises(EnsembleError, match="at least one member"):
        CenterNetEnsemble([])
    with pytest.raises(EnsembleError, match="only CenterNet"):
        CenterNetEnsemble([torch.nn.Conv2d(3, 1, 1)])
    ens = CenterNetEnsemble(_members(2))
    with pytest.raises(EnsembleError, match="for inference"):
        ens.train()
    with pytest.raises(EnsembleError, match="for inference"):
        ens([torch.rand(3, 64, 64)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])


def test_an_ensemble_of_saved_detectors_predicts_through_the_detector(tmp_path) -> None:
    data = make_detection_data(tmp_path / "data")
    tiny = dict(arch="centernet", width=8, image_size=96, spacing_mm=1.0, batch_size=2,
                progress=False, epochs=1, score_threshold=0.0)
    for seed in (0, 1):
        LesionDetector(seed=seed, **tiny).fit(data.manifest).save(tmp_path / f"m{seed}")
    dets = [LesionDetector.load(tmp_path / f"m{s}") for s in (0, 1)]
    one = dets[0].predict(data.manifest, "test")
    dets[0].model_ = CenterNetEnsemble([d.model_ for d in dets])
    both = dets[0].predict(data.manifest, "test")
    assert list(both.columns) == list(PREDICTION_COLUMNS)
    assert set(both["file_name"]) <= set(data.manifest["file_name"])
    assert len(both) and not both[["x1", "y1", "x2", "y2", "score"]].equals(
        one[["x1", "y1", "x2", "y2", "score"]])
