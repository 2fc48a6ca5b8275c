"""Online mining of unannotated lesions in the CenterNet's loss (``self_ignore``, issue 14,
session 10): confident background peaks of the network become ignore regions of the step.

Behaviour on tiny data only (which cells are ignored, when the option acts, the loss it
changes, parameter checks, checkpoints), never accuracy.
"""

from __future__ import annotations

import pytest
import torch
from detector_fixtures import make_detection_data

from deeplesion_lab.detection.centernet import STRIDE, CenterNetLesion, self_ignore_mask
from deeplesion_lab.detection.model import ModelError
from deeplesion_lab.detection.train import LesionDetector
from deeplesion_lab.errors import LabError

torch.set_num_threads(1)

TINY = dict(arch="centernet", width=8, image_size=96, spacing_mm=1.0, batch_size=2, progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_detection_data(tmp_path_factory.mktemp("det_selfign"))


def _box(h: int, w: int, side_px: float) -> torch.Tensor:
    return torch.full((1, 4, h, w), side_px)


def test_mask_covers_the_predicted_box_of_a_confident_background_peak() -> None:
    h = w = 16
    logits = torch.full((1, h, w), -6.0)
    logits[0, 10, 4] = 2.0  # confident background peak (p 0.88)
    logits[0, 3, 12] = -0.5  # a weak peak (p 0.38): below the threshold
    gt = torch.zeros((1, h, w))
    ign = torch.zeros((1, h, w), dtype=torch.bool)
    box = _box(h, w, 2 * STRIDE)  # two cells to every side
    got = self_ignore_mask(logits, box, gt, ign, threshold=0.5)
    want = torch.zeros((1, h, w), dtype=torch.bool)
    want[0, 8:13, 2:7] = True  # ceil/floor of (x + 0.5) -/+ 2 cells
    assert torch.equal(got, want)
    # a lower threshold takes the weak peak too; k=1 only the strongest
    assert got.sum() < self_ignore_mask(logits, box, gt, ign, threshold=0.3).sum()
    assert torch.equal(self_ignore_mask(logits, box, gt, ign, threshold=0.3, k=1), want)


def test_mask_never_touches_a_lesion_or_an_ignored_peak() -> None:
    h = w = 16
    logits = torch.full((1, h, w), -6.0)
    logits[0, 5, 5] = 3.0  # on a lesion's Gaussian: not background
    logits[0, 12, 12] = 3.0  # already ignored: not mined again
    gt = torch.zeros((1, h, w))
    gt[0, 3:8, 3:8] = 0.5
    gt[0, 5, 5] = 1.0
    ign = torch.zeros((1, h, w), dtype=torch.bool)
    ign[0, 11:14, 11:14] = True
    box = _box(h, w, 3 * STRIDE)
    assert not self_ignore_mask(logits, box, gt, ign, threshold=0.5).any()
    # a background peak whose box reaches the lesion: the lesion's cells keep their targets
    logits[0, 5, 9] = 3.0
    got = self_ignore_mask(logits, box, gt, ign, threshold=0.5)
    assert got.any() and not (got & (gt > 0.05)).any()


def _pair(**kw):
    torch.manual_seed(0)
    plain = CenterNetLesion(1, width=8)
    other = CenterNetLesion(1, width=8, **kw)
    other.load_state_dict(plain.state_dict())
    with torch.no_grad():  # a confident heatmap everywhere: many background peaks
        for m in (plain, other):
            m.heatmap[-1].bias.fill_(2.0)
    plain.train()
    other.train()
    return plain, other


def test_self_ignore_lowers_the_heatmap_loss_only_after_its_start() -> None:
    targets = [{"boxes": torch.tensor([[8.0, 12.0, 30.0, 30.0]]), "labels": torch.tensor([1])}]
    images = [torch.rand(3, 64, 64)]
    plain, mined = _pair(self_ignore=0.5, self_ignore_start=0.5)
    mined.train_progress = 0.25  # before the start: the plain loss
    assert torch.allclose(mined(images, targets)["loss_heatmap"],
                          plain(images, targets)["loss_heatmap"])
    mined.train_progress = 0.75
    lm, lp = mined(images, targets), plain(images, targets)
    assert lm["loss_heatmap"] < lp["loss_heatmap"]
    assert torch.allclose(lm["loss_box"], lp["loss_box"])  # the box term is untouched


def test_fit_sets_the_progress_and_keeps_the_option(data, tmp_path) -> None:
    det = LesionDetector(**dict(TINY, epochs=2, train_crop=64, self_ignore=0.4,
                                self_ignore_start=0.3))
    det.fit(data.manifest, checkpoint_dir=tmp_path / "m")
    steps = det.n_iter_
    # the last step's progress, (steps - 1) / steps: the loop set it
    assert det.model_.train_progress == pytest.approx((steps - 1) / steps)
    back = LesionDetector.load(tmp_path / "m")
    assert back.self_ignore == 0.4 and back.self_ignore_start == 0.3
    assert back.model_.self_ignore == 0.4


def test_other_architectures_refuse_it(data) -> None:
    det = LesionDetector(**dict(TINY, arch="fasterrcnn", epochs=1, self_ignore=0.5))
    with pytest.raises(ModelError, match="self_ignore"):
        det.fit(data.manifest)


@pytest.mark.parametrize("param, value", [("self_ignore", 1.5), ("self_ignore", -0.1),
                                          ("self_ignore_start", 2.0)])
def test_fit_refuses_bad_values(data, param, value) -> None:
    with pytest.raises(LabError, match=param):
        LesionDetector(**dict(TINY, epochs=1), **{param: value}).fit(data.manifest)
