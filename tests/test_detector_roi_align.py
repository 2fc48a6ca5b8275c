"""The separable RoIAlign used in training matches torchvision's kernel, values and gradients."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from deeplesion_lab.detection.model import build_detector
from deeplesion_lab.detection.roi_align import SeparableRoIAlign, roi_align_separable


def _rois(n_images: int, n: int, side: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * side * 1.2 - 0.1 * side  # some start outside the map
    wh = torch.rand(n, 2, generator=g) * side * 0.5 + 0.2
    idx = torch.randint(0, n_images, (n, 1), generator=g).float()
    return torch.cat([idx, xy, xy + wh], dim=1)


@pytest.mark.parametrize(("size", "scale", "ratio"), [(16, 1 / 8, 2), (9, 1 / 4, 1), (5, 1 / 16, 3)])
def test_values_and_gradients_match_torchvision(size, scale, ratio) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 5, size, size, dtype=torch.float64, requires_grad=True)
    rois = _rois(3, 40, size / scale, seed=size).double()
    rois[0, 1:] = torch.tensor([10.0, 10.0, 10.2, 10.3])  # thinner than a pixel: width 1
    rois[1, 1:] = torch.tensor([-300.0, -300.0, -200.0, -200.0])  # wholly outside: zeros
    want = roi_align(x, rois, 7, scale, ratio)
    got = roi_align_separable(x, rois, 7, scale, ratio)
    assert torch.allclose(got, want, atol=1e-10)
    assert got[1].abs().max() == 0
    w = torch.randn_like(want)
    g_want, = torch.autograd.grad((want * w).sum(), x)
    g_got, = torch.autograd.grad((got * w).sum(), x)
    assert torch.allclose(g_got, g_want, atol=1e-10)


def test_empty_rois_and_bad_ratio() -> None:
    x = torch.randn(1, 2, 8, 8)
    assert roi_align_separable(x, torch.zeros(0, 5), 7, 0.5, 2).shape == (0, 2, 7, 7)
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align_separable(x, torch.zeros(1, 5), 7, 0.5, 0)


def test_multiscale_pooler_matches_in_training_and_uses_the_kernel_otherwise() -> None:
    torch.manual_seed(1)
    feats = {str(i): torch.randn(2, 4, 64 // 2**i, 64 // 2**i, requires_grad=True)
             for i in range(3)}
    feats["pool"] = torch.randn(2, 4, 4, 4)
    g = torch.Generator().manual_seed(3)
    boxes = []
    for _ in range(2):
        xy = torch.rand(30, 2, generator=g) * 200
        boxes.append(torch.cat([xy, xy + 4 + torch.rand(30, 2, generator=g) * 300], 1))
    shapes = [(512, 512)] * 2
    stock = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    ours = SeparableRoIAlign(["0", "1", "2", "3"], 7, 2)
    want = stock(feats, boxes, shapes)
    got = ours(feats, boxes, shapes)
    assert torch.allclose(got, want, atol=1e-4)
    levels = ours.map_levels(boxes)
    assert set(levels.tolist()) == {0, 1}  # the boxes really span several levels
    used = [feats["0"], feats["1"]]
    gw = torch.autograd.grad(want.square().sum(), used)
    gg = torch.autograd.grad(got.square().sum(), used)
    for a, b in zip(gw, gg, strict=True):
        assert torch.allclose(a, b, atol=1e-4)
    with torch.no_grad():
        assert torch.equal(ours(feats, boxes, shapes), want)  # the kernel itself


def test_the_detector_pools_with_it_and_group_norm_option() -> None:
    m = build_detector(1, image_size=64, box_head_size=32)
    assert isinstance(m.roi_heads.box_roi_pool, SeparableRoIAlign)
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in m.backbone.body.modules())
    gn = build_detector(1, image_size=64, box_head_size=32, norm="group")
    kinds = {type(x) for x in gn.backbone.body.modules()}
    assert torch.nn.GroupNorm in kinds and torch.nn.BatchNorm2d not in kinds
    gn.train()
    target = {"boxes": torch.tensor([[10.0, 12.0, 30.0, 34.0]]), "labels": torch.tensor([1])}
    losses = gn([torch.rand(3, 64, 64)], [target])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    from deeplesion_lab.detection.model import ModelError

    with pytest.raises(ModelError, match="unknown norm"):
        build_detector(1, norm="layer")
