"""RoIAlign whose backward pass is matrix products: the same numbers, several times faster on a CPU.

torchvision's ``roi_align`` backward on the CPU scatters every sample point's gradient into the
feature map one at a time, on one thread; with 32-128 proposals per image it was the largest
single cost of a CPU training step of the lesion detector (``bench/results/detector_configs.md``).

Bilinear interpolation is separable, and so is RoIAlign's average over its ``sampling_ratio``
x ``sampling_ratio`` sample points per bin: the pooled value of bin ``(i, j)`` of a box is
``sum_yx Wy[i, y] * F[c, y, x] * Wx[j, x]``, where ``Wy`` and ``Wx`` hold each axis's averaged
interpolation weights (torchvision's rules: sample points beyond one pixel outside the map count
0, others are clamped to the border). :func:`roi_align_separable` computes exactly that with two
``einsum`` calls per image and level, whose gradients are ordinary (multi-threaded) matrix
products. :class:`SeparableRoIAlign` uses it while gradients are being recorded on a CPU
(training) and torchvision's kernel otherwise (inference on whole canvases, where the forward
pass of the kernel is cheaper, and GPUs, whose kernel is fast). The two agree to float
rounding (``tests/test_detector_roi_align.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

__all__ = ["SeparableRoIAlign", "roi_align_separable"]


def _axis_weights(start: Tensor, length: Tensor, n: int, out: int, sampling_ratio: int) -> Tensor:
    """``(R, out, n)``: averaged bilinear weights of each output bin over the ``n`` map cells."""
    grid = (torch.arange(out * sampling_ratio, dtype=start.dtype, device=start.device) + 0.5)
    pos = start[:, None] + (length[:, None] / out) * (grid[None] / sampling_ratio)
    inside = ((pos >= -1.0) & (pos <= n)).to(start.dtype)
    pos = pos.clamp(min=0.0)
    low = pos.floor().clamp(max=n - 1)
    pos = torch.where(low >= n - 1, low, pos)
    high = (low + 1).clamp(max=n - 1)
    frac = pos - low
    w = torch.zeros(pos.shape[0], pos.shape[1], n, dtype=start.dtype, device=start.device)
    w.scatter_add_(2, low.long()[..., None], ((1.0 - frac) * inside)[..., None])
    w.scatter_add_(2, high.long()[..., None], (frac * inside)[..., None])
    return w.reshape(pos.shape[0], out, sampling_ratio, n).mean(dim=2)


def roi_align_separable(
    features: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int
) -> Tensor:
    """torchvision's ``roi_align`` (``aligned=False``, ``sampling_ratio > 0``) as matrix products.

    Parameters
    ----------
    features : Tensor
        ``(N, C, H, W)`` feature maps.
    rois : Tensor
        ``(R, 5)``: image index, x1, y1, x2, y2 in image pixels.
    output_size : int
        Bins per side.
    spatial_scale : float
        Feature-map pixels per image pixel.
    sampling_ratio : int
        Sample points per bin and axis (at least 1).

    Returns
    -------
    Tensor
        ``(R, C, output_size, output_size)``.
    """
    if sampling_ratio < 1:
        raise ValueError("roi_align_separable needs a fixed sampling_ratio >= 1")
    n, c, h, w = features.shape
    out = features.new_zeros((rois.shape[0], c, output_size, output_size))
    if rois.shape[0] == 0:
        return out
    box = rois[:, 1:].to(features.dtype) * spatial_scale
    wy = _axis_weights(box[:, 1], (box[:, 3] - box[:, 1]).clamp(min=1.0), h, output_size,
                       sampling_ratio)
    wx = _axis_weights(box[:, 0], (box[:, 2] - box[:, 0]).clamp(min=1.0), w, output_size,
                       sampling_ratio)
    image = rois[:, 0].long()
    for b in range(n):
        idx = torch.where(image == b)[0]
        if idx.numel() == 0:
            continue
        rows = torch.einsum("rih,chw->rciw", wy[idx], features[b])
        out = out.index_copy(0, idx, torch.einsum("rciw,rjw->rcij", rows, wx[idx]))
    return out


class SeparableRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` with :func:`roi_align_separable` in training.

    Same parameters, levels and outputs as ``MultiScaleRoIAlign``; no learnable weights, so
    checkpoints are interchangeable with the stock pooler.
    """

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> Tensor:
        feats = _filter_input(x, self.featmap_names)
        if (not torch.is_grad_enabled() or self.sampling_ratio < 1
                or feats[0].device.type != "cpu"):
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                feats, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = _convert_to_roi_format(boxes)
        size = self.output_size[0]
        if len(feats) == 1:
            return roi_align_separable(feats[0], rois, size, self.scales[0], self.sampling_ratio)
        levels = self.map_levels(boxes)
        out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], size, size))
        for level, (feat, scale) in enumerate(zip(feats, self.scales, strict=True)):
            idx = torch.where(levels == level)[0]
            if idx.numel():
                pooled = roi_align_separable(feat, rois[idx], size, scale, self.sampling_ratio)
                out = out.index_copy(0, idx, pooled.to(out.dtype))
        return out
