"""Training options of the detector added for issue 14 (session 7): hard-negative mining on
the CenterNet heatmap (``hard_negatives``), a moving average of the weights (``ema_decay``)
and the slice shift along the body axis (``slice_jitter_mm``).

Behaviour on tiny data only (which cells are mined, what the average holds, resume, parameter
checks), never accuracy.
"""

from __future__ import annotations

import pytest
import torch
from detector_fixtures import interrupt_fit, make_detection_data, train_dataset

from deeplesion_lab.detection.centernet import CenterNetLesion, hard_negative_loss
from deeplesion_lab.detection.train import LesionDetector, _ema_init, _ema_update
from deeplesion_lab.errors import LabError

torch.set_num_threads(1)

TINY = dict(arch="centernet", width=8, image_size=96, spacing_mm=1.0, batch_size=2, progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_detection_data(tmp_path_factory.mktemp("det_opts"))


def test_hard_negative_loss_takes_the_top_background_peaks() -> None:
    logits = torch.full((1, 8, 8), -5.0)
    logits[0, 1, 1] = 3.0  # a lesion cell: never mined
    logits[0, 5, 5] = 2.0  # the strongest background peak
    logits[0, 5, 6] = 1.9  # its neighbour: not a peak
    logits[0, 2, 6] = 1.0  # the second peak
    logits[0, 7, 0] = 0.5  # inside an ignore region: never mined
    background = torch.ones((1, 8, 8), dtype=torch.bool)
    background[0, 1, 1] = False
    background[0, 7, 0] = False
    got = hard_negative_loss(logits, background, 2)
    want = torch.nn.functional.softplus(torch.tensor([2.0, 1.0])).sum()
    assert torch.allclose(got, want)
    # k larger than the peaks: every background peak once (the flat -5 cells are peaks too)
    assert torch.isfinite(hard_negative_loss(logits, background, 1000))
    # no background at all: zero, and still differentiable
    x = logits.clone().requires_grad_(True)
    none = hard_negative_loss(x, torch.zeros_like(background), 4)
    none.backward()
    assert none.item() == 0.0 and x.grad is not None and x.grad.abs().sum() == 0


def test_hard_negatives_add_a_loss_term_with_gradients_at_the_peaks() -> None:
    torch.manual_seed(0)
    targets = [{"boxes": torch.tensor([[8.0, 12.0, 40.0, 36.0]]), "labels": torch.tensor([1])}]
    images = [torch.rand(3, 64, 64)]
    plain = CenterNetLesion(1, width=8)
    mined = CenterNetLesion(1, width=8, hard_negatives=4)
    mined.load_state_dict(plain.state_dict())
    plain.train()
    mined.train()
    lp, lm = plain(images, targets), mined(images, targets)
    assert set(lm) == set(lp) | {"loss_hard_negatives"}
    assert lm["loss_hard_negatives"] > 0
    # the other terms are those of the plain model
    for k in lp:
        assert torch.allclose(lp[k], lm[k]), k
    lm["loss_hard_negatives"].backward()
    assert mined.heatmap[-1].weight.grad.abs().sum() > 0
    assert mined.box[-1].weight.grad is None  # the term is on the heatmap only


def test_ema_update_follows_the_formula() -> None:
    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = _ema_init(m)
    assert "1.num_batches_tracked" not in ema  # integer buffers are not averaged
    start = {k: v.clone() for k, v in ema.items()}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    _ema_update(ema, m, 0.99, step=1)  # d = min(0.99, 2 / 11)
    d = 2.0 / 11.0
    w = m.state_dict()
    for k in ema:
        assert torch.allclose(ema[k], d * start[k] + (1 - d) * w[k]), k
    _ema_update(ema, m, 0.5, step=1000)  # d = 0.5 once the ramp is past
    for k in ema:
        assert torch.allclose(ema[k], 0.5 * (d * start[k] + (1 - d) * w[k]) + 0.5 * w[k]), k


def test_ema_fit_ends_with_the_average_and_resumes_identically(data, tmp_path) -> None:
    kw = dict(TINY, epochs=2, checkpoint_every=2, ema_decay=0.9, hard_negatives=4)
    straight = LesionDetector(**kw).fit(data.manifest, checkpoint_dir=tmp_path / "a")
    last = torch.load(tmp_path / "a" / "last.pt", map_location="cpu", weights_only=True)
    assert set(last["ema"]) <= set(last["model"])
    # the finished model holds the average, not the weights of the last step
    sd = straight.model_.state_dict()
    key = "heatmap.1.weight"
    assert torch.equal(sd[key], last["ema"][key])
    assert not torch.equal(last["model"][key], last["ema"][key])
    assert "loss_hard_negatives" in straight.history_[-1]

    interrupt_fit(kw, data.manifest, tmp_path / "b", at_step=5)
    resumed = LesionDetector(**kw).fit(data.manifest, checkpoint_dir=tmp_path / "b")
    assert resumed.n_iter_ == straight.n_iter_ == 6
    rb = resumed.model_.state_dict()
    for k in sd:
        assert torch.allclose(sd[k].float(), rb[k].float(), atol=1e-5), k
    # a finished model saves and loads with its options
    again = LesionDetector.load(tmp_path / "a")
    assert again.ema_decay == 0.9 and again.hard_negatives == 4
    assert again.model_.hard_negatives == 4


def test_without_ema_no_average_is_kept(data, tmp_path) -> None:
    LesionDetector(**dict(TINY, epochs=1)).fit(data.manifest, checkpoint_dir=tmp_path / "c")
    last = torch.load(tmp_path / "c" / "last.pt", map_location="cpu", weights_only=True)
    assert "ema" not in last


def _jitter_ds(data, jitter: float, augment: bool = True, crop: int | None = 64):
    return train_dataset(
        data, window="wide", augment=augment, crop=crop, slice_jitter_mm=jitter, seed=3
    )


def test_slice_jitter_limits_by_lesion_size_and_slice_spacing(data) -> None:
    # tiny series: 2 mm between slices, boxes of 22-26 px (1 mm/px): smallest radius 11 mm,
    # 0.4 x 11 = 4.4 mm, so 4 mm allows 2 slices, 2 mm one, 1 mm none
    assert (_jitter_ds(data, 4.0).max_shift == 2).all()
    assert (_jitter_ds(data, 2.0).max_shift == 1).all()
    assert (_jitter_ds(data, 1.0).max_shift == 0).all()
    assert (_jitter_ds(data, 0.0).max_shift == 0).all()
    ds = _jitter_ds(data, 4.0)
    seen = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            s = ds._shift(i)
            key = int(ds.rows[i]["key_slice_index"])
            # within the limit and inside the series (slices 1-5)
            assert abs(s) <= 2 and 1 <= key + s <= 5
            assert s == ds._shift(i)  # drawn from (seed, epoch, item)
            seen.add(s)
    assert len(seen) > 1
    # evaluation data (no augmentation) is never shifted
    plain = _jitter_ds(data, 4.0, augment=False)
    assert all(plain._shift(i) == 0 for i in range(len(plain)))


def test_slice_jitter_moves_the_context_and_keeps_the_boxes(data) -> None:
    ds, ref = _jitter_ds(data, 2.0, crop=None), _jitter_ds(data, 0.0, crop=None)
    i = next(k for k, r in enumerate(ds.rows) if int(r["key_slice_index"]) == 3)
    base, _ = ds._base(i, 0)
    up, _ = ds._base(i, 1)
    # the 3 slices 2 mm apart move one slice up: the old centre is the new first channel
    assert (up[0] == base[1]).all() and (up[1] == base[2]).all()
    assert not (up[2] == base[2]).all()
    # same draws: the items differ in the pixels only, never in their targets
    for epoch in range(4):
        ds.set_epoch(epoch)
        ref.set_epoch(epoch)
        for k in range(len(ds)):
            _, ta, _ = ds[k]
            _, tb, _ = ref[k]
            assert torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["labels"], tb["labels"])


def test_fit_with_slice_jitter(data, tmp_path) -> None:
    det = LesionDetector(**dict(TINY, epochs=1, train_crop=64, slice_jitter_mm=4.0))
    det.fit(data.manifest, checkpoint_dir=tmp_path / "j")
    assert det.history_ and LesionDetector.load(tmp_path / "j").slice_jitter_mm == 4.0


@pytest.mark.parametrize(
    "param, value",
    [
        ("ema_decay", 1.0),
        ("ema_decay", -0.1),
        ("hard_negatives", -1),
        ("hard_negatives", 2.5),
        ("slice_jitter_mm", -1.0),
    ],
)
def test_fit_refuses_bad_option_values(data, param, value) -> None:
    with pytest.raises(LabError, match=param):
        LesionDetector(**dict(TINY, epochs=1), **{param: value}).fit(data.manifest)
