"""A CenterNet-style lesion detector for CPU training: a small U-Net and a centre heatmap.

Why: on a CPU, most of a Faster R-CNN training step is not convolution but the two-stage
machinery (anchor matching, proposal sampling and NMS, RoIAlign and its backward pass; see
``bench/results/detector_profile.md``). A dense one-stage detector whose targets are a few
Gaussians per image spends its time in a few convolutions, so it sees many more training
windows per CPU-second, and lesions (compact blobs, a few per slice) suit a centre heatmap.

Network (:class:`CenterNetLesion`)
    A residual encoder with strides 2-32 (``width``, 2 x, 4 x, 6 x and 8 x ``width`` channels,
    batch norm), an FPN-like top-down path back to stride 4, and three heads at stride 4:

    - ``heatmap``: one class-agnostic lesion logit per cell (the lesion score);
    - ``box``: distances from the cell to the box's four sides, as ``exp`` of the output times
      the stride (TTFNet's box encoding: any cell near the centre predicts the whole box);
    - ``classes``: logits over the lesion classes (multi-class training only; the class of a
      detection is the argmax at its peak). With pseudo-label classes the lesion task is the
      same as the single-class one, and the classes are an extra task for the same features.

Targets and losses (:func:`centernet_targets`, :meth:`CenterNetLesion.loss`)
    Each lesion puts an elliptical Gaussian on the heatmap (standard deviations a sixth of its
    box width and height in cells, at least half a cell), 1 at its centre cell; the heatmap
    loss is CenterNet's penalty-reduced focal loss, normalised by the number of lesions. The box
    head is trained with the GIoU loss at the cells where the Gaussian exceeds 0.3, weighted by
    it; the class head with cross-entropy at the same cells.

Ignore regions (targets with label < 0, see :mod:`~deeplesion_lab.detection.dataset`)
    Cells inside an ignore box are left out of the heatmap's negative term (they are neither
    lesion nor background), unless a real lesion's Gaussian reaches them.

Fine-tuning (:meth:`CenterNetLesion.reset_class_head`, :meth:`~CenterNetLesion.set_freeze_features`)
    On new classes, the class head keeps the rows of the classes it already has and each new
    class starts from the mean of the old rows. ``set_freeze_features`` trains the heads only.

Inference
    Sigmoid heatmap, 3 x 3 max-pool peaks, the top-scoring peaks above ``score_thresh``, their
    boxes, one class-agnostic NMS (``nms_thresh``), at most ``detections_per_img``. The model
    takes and returns what torchvision detectors do (a list of images; losses in training, a
    list of ``{"boxes", "scores", "labels"}`` at inference), so training, prediction and
    checkpoints are shared with the Faster R-CNN (:mod:`~deeplesion_lab.detection.train`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, generalized_box_iou_loss

__all__ = ["CenterNetLesion", "build_centernet", "centernet_targets", "hard_negative_loss",
           "self_ignore_mask"]

#: Output stride of the heads.
STRIDE = 4


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class _Block(nn.Module):
    """Two 3 x 3 convolutions with a residual connection (strided first convolution)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.a = _conv(cin, cout, stride)
        self.b = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.b(self.a(x)) + self.skip(x), inplace=True)


class CenterNetLesion(nn.Module):
    """CenterNet-style lesion detector (see the module docstring).

    Parameters
    ----------
    num_classes : int
        Lesion classes (1: single class, no class head).
    width : int, default 16
        Channels of the first stage (later stages 2, 4, 6 and 8 times as many).
    fpn_channels : int, default 64
        Channels of the top-down path and the heads.
    score_thresh, nms_thresh : float
        Lowest score kept and the NMS overlap at inference.
    detections_per_img : int, default 50
    ignore_iou : float, default 0.3
        Kept for the interface of the other architectures (a cell is ignored when it lies
        inside an ignore box).
    flip_test : bool, default False
        At inference, also run the horizontally mirrored image and average the two outputs
        (CenterNet's flip test; measured neutral on the demo, ``bench/results/detector_arch.md``).
    hard_negatives : int, default 0
        Online hard-negative mining on the heatmap: in training, the ``hard_negatives``
        highest-scoring background *peaks* of each image (3 x 3 local maxima of the logits
        outside every lesion's Gaussian (< 0.05) and outside ignore regions: what would become
        false positives at inference) add a plain, not penalty-reduced, ``-log(1 - p)`` term
        to the heatmap loss (normalised by the number of lesions like the rest). 0: off.
    class_loss_weight : float, default 1.0
        Weight of the class loss (multi-class training) in the total loss: how strongly the
        lesion classes shape the features that the class-agnostic heatmap shares.
    self_ignore : float, default 0
        Online mining of unannotated lesions (DeepLesion marks one or a few lesions per slice
        and leaves the others unmarked, so they are background to the loss): once training is
        ``self_ignore_start`` of the way through, every background peak the network itself
        scores at least ``self_ignore`` (at most ``self_ignore_peaks`` per image, outside
        every lesion's Gaussian) becomes an ignore region for that step: the cells inside its
        predicted box leave the heatmap's negative term (:func:`self_ignore_mask`). 0: off.
    self_ignore_start : float, default 0.5
        Fraction of the training steps after which ``self_ignore`` acts (the training loop
        sets :attr:`train_progress`).
    self_ignore_peaks : int, default 4
        Most peaks made ignore regions per image.
    """

    arch = "centernet"

    def __init__(
        self,
        num_classes: int,
        *,
        width: int = 16,
        fpn_channels: int = 64,
        score_thresh: float = 0.01,
        nms_thresh: float = 0.5,
        detections_per_img: int = 50,
        ignore_iou: float = 0.3,
        flip_test: bool = False,
        hard_negatives: int = 0,
        class_loss_weight: float = 1.0,
        self_ignore: float = 0.0,
        self_ignore_start: float = 0.5,
        self_ignore_peaks: int = 4,
    ):
        super().__init__()
        w = int(width)
        chans = [w, 2 * w, 4 * w, 6 * w, 8 * w]
        self.stem = nn.Sequential(_conv(3, w, 2), _conv(w, w))  # stride 2
        self.stages = nn.ModuleList(
            [
                _Block(chans[0], chans[1], 2),  # 4
                _Block(chans[1], chans[2], 2),  # 8
                _Block(chans[2], chans[3], 2),  # 16
                _Block(chans[3], chans[4], 2),  # 32
            ]
        )
        d = int(fpn_channels)
        self.lateral = nn.ModuleList([nn.Conv2d(c, d, 1) for c in chans[1:]])
        self.smooth = _conv(d, d)
        self.heatmap = nn.Sequential(_conv(d, d), nn.Conv2d(d, 1, 1))
        self.box = nn.Sequential(_conv(d, d), nn.Conv2d(d, 4, 1))
        self.num_classes = int(num_classes)
        self.classes = nn.Conv2d(d, self.num_classes, 1) if self.num_classes > 1 else None
        nn.init.constant_(self.heatmap[-1].bias, -math.log((1 - 0.01) / 0.01))
        nn.init.constant_(self.box[-1].bias, math.log(2.0))
        self.score_thresh = float(score_thresh)
        self.nms_thresh = float(nms_thresh)
        self.detections_per_img = int(detections_per_img)
        self.ignore_iou = float(ignore_iou)
        self.flip_test = bool(flip_test)
        self.hard_negatives = int(hard_negatives)
        self.class_loss_weight = float(class_loss_weight)
        self.self_ignore = float(self_ignore)
        self.self_ignore_start = float(self_ignore_start)
        self.self_ignore_peaks = int(self_ignore_peaks)
        #: Fraction of the training steps done (set by the training loop; 1 outside it).
        self.train_progress = 1.0
        self.freeze_features = False
        # channels-last convolutions: about a fifth less CPU time per training step (oneDNN)
        self.to(memory_format=torch.channels_last)

    def reset_class_head(
        self,
        num_classes: int,
        old_classes: list[str] | None = None,
        new_classes: list[str] | None = None,
    ) -> None:
        """A class head for ``num_classes`` classes (fine-tuning on new classes).

        With the class names (``old_classes`` of the model, ``new_classes`` wanted), a class the
        model has keeps its row of the head; every other row starts from the mean of the old
        rows (no preference). Without them, or from a single-class model, the head is new.
        """
        d = self.smooth[0].out_channels
        dev = self.smooth[0].weight.device
        old = self.classes
        self.num_classes = int(num_classes)
        if self.num_classes <= 1:
            self.classes = None
            return
        new = nn.Conv2d(d, self.num_classes, 1).to(dev, memory_format=torch.channels_last)
        index = {str(c): i for i, c in enumerate(old_classes or [])}
        if old is not None and new_classes and len(index) == old.out_channels:
            with torch.no_grad():
                for k, name in enumerate(new_classes[: self.num_classes]):
                    i = index.get(str(name))
                    new.weight[k] = old.weight[i] if i is not None else old.weight.mean(0)
                    new.bias[k] = old.bias[i] if i is not None else old.bias.mean()
        self.classes = new

    def set_freeze_features(self, freeze: bool = True) -> None:
        """Train only the heads (fine-tuning): the encoder and top-down path keep their weights
        and batch-norm statistics, and run without gradients (cheaper steps)."""
        self.freeze_features = bool(freeze)
        for name, p in self.named_parameters():
            if not name.startswith(("heatmap.", "box.", "classes.")):
                p.requires_grad_(not self.freeze_features)
        self.train(self.training)

    def train(self, mode: bool = True):  # frozen features stay in eval mode
        super().train(mode)
        if getattr(self, "freeze_features", False):
            for mod in (self.stem, self.stages, self.lateral, self.smooth):
                mod.eval()
        return self

    # ------------------------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Stride-4 features of a batch ``(B, 3, H, W)`` (H, W multiples of 32)."""
        x = self.stem((x - 0.5).contiguous(memory_format=torch.channels_last))
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        y = self.lateral[-1](feats[-1])
        for lat, f in zip(self.lateral[-2::-1], feats[-2::-1], strict=True):
            y = lat(f) + F.interpolate(y, size=f.shape[-2:], mode="nearest")
        return self.smooth(y)

    def heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw head outputs of a batch: heatmap logits, box distances (px), class logits."""
        if self.freeze_features:
            with torch.no_grad():
                f = self.features(x)
        else:
            f = self.features(x)
        out = {
            "heatmap": self.heatmap(f)[:, 0],
            "box": torch.exp(self.box(f).clamp(max=6.0)) * STRIDE,
        }
        if self.classes is not None:
            out["classes"] = self.classes(f)
        return out

    @staticmethod
    def _batch(images: list[torch.Tensor]) -> torch.Tensor:
        h = max(im.shape[-2] for im in images)
        w = max(im.shape[-1] for im in images)
        h, w = 32 * math.ceil(h / 32), 32 * math.ceil(w / 32)
        out = images[0].new_zeros((len(images), 3, h, w))
        for i, im in enumerate(images):
            out[i, :, : im.shape[-2], : im.shape[-1]] = im
        return out

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        """Losses (training, with ``targets``) or detections (inference), as torchvision's."""
        x = self._batch(images)
        out = self.heads(x)
        if self.training:
            if targets is None:
                raise ValueError("training needs targets")
            return self.loss(out, targets)
        if self.flip_test:
            # the mirrored image's heatmap logits, box sides (left and right swapped) and class
            # logits mirrored back and averaged with the plain ones
            fl = self.heads(x.flip(-1))
            out = {
                k: (v + (fl[k].flip(-1)[:, [2, 1, 0, 3]] if k == "box" else fl[k].flip(-1))) / 2
                for k, v in out.items()
            }
        sizes = [tuple(im.shape[-2:]) for im in images]
        return self.decode(out, sizes)

    # ------------------------------------------------------------------------------------------
    def loss(self, out: dict[str, torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        """Focal heatmap loss, GIoU box loss and (multi-class) class loss of a batch."""
        hm_logit = out["heatmap"]
        b, h, w = hm_logit.shape
        tg = [centernet_targets(t["boxes"], t["labels"], h, w) for t in targets]
        gt = torch.stack([t[0] for t in tg])
        ign = torch.stack([t[1] for t in tg])
        if self.self_ignore > 0 and self.train_progress >= self.self_ignore_start:
            ign = ign | self_ignore_mask(
                hm_logit.detach(), out["box"].detach(), gt, ign, self.self_ignore,
                self.self_ignore_peaks,
            )
        p = torch.sigmoid(hm_logit).clamp(1e-4, 1 - 1e-4)
        pos = gt >= 1.0
        n_pos = max(int(pos.sum()), 1)
        pos_loss = -(torch.log(p) * (1 - p) ** 2)[pos].sum()
        neg_w = (1 - gt) ** 4 * (~pos) * (~ign)
        neg_loss = -(torch.log(1 - p) * p**2 * neg_w).sum()
        losses = {"loss_heatmap": (pos_loss + neg_loss) / n_pos}
        if self.hard_negatives > 0:
            losses["loss_hard_negatives"] = (
                hard_negative_loss(hm_logit, (gt < 0.05) & ~ign, self.hard_negatives) / n_pos
            )

        # box and class losses at the cells near each lesion's centre
        ys, xs = torch.meshgrid(
            torch.arange(h, device=gt.device), torch.arange(w, device=gt.device), indexing="ij"
        )
        cx = (xs.float() + 0.5) * STRIDE
        cy = (ys.float() + 0.5) * STRIDE
        pred_b, tgt_b, wts, cls_logit, cls_t, cls_w = [], [], [], [], [], []
        for i, (_, _, weight, owner) in enumerate(tg):
            sel = weight > 0.3
            if not sel.any():
                continue
            real = targets[i]["labels"] > 0
            boxes = targets[i]["boxes"][real]
            labels = targets[i]["labels"][real]
            d = out["box"][i][:, sel]  # (4, n)
            px, py = cx[sel], cy[sel]
            pred_b.append(torch.stack([px - d[0], py - d[1], px + d[2], py + d[3]], 1))
            tgt_b.append(boxes[owner[sel]])
            wts.append(weight[sel])
            if "classes" in out:
                cls_logit.append(out["classes"][i][:, sel].T)
                cls_t.append(labels[owner[sel]] - 1)
                # lesions that train no class (pasted ones, KeySliceDataset(paste_classes=False))
                cw = targets[i].get("class_weight")
                cls_w.append(weight[sel] if cw is None else weight[sel] * cw[real][owner[sel]])
        if pred_b:
            pb, tb, wt = torch.cat(pred_b), torch.cat(tgt_b), torch.cat(wts)
            giou = generalized_box_iou_loss(pb, tb, reduction="none")
            losses["loss_box"] = 2.0 * (giou * wt).sum() / wt.sum().clamp(min=1e-6)
            if cls_logit:
                ce = F.cross_entropy(torch.cat(cls_logit), torch.cat(cls_t), reduction="none")
                cwt = torch.cat(cls_w)
                losses["loss_classes"] = (
                    self.class_loss_weight * (ce * cwt).sum() / cwt.sum().clamp(min=1e-6))
        else:
            losses["loss_box"] = out["box"].sum() * 0.0
        if "classes" in out and "loss_classes" not in losses:
            losses["loss_classes"] = out["classes"].sum() * 0.0
        return losses

    @torch.no_grad()
    def decode(self, out: dict[str, torch.Tensor], sizes: list[tuple[int, int]]) -> list[dict]:
        """Detections per image from the head outputs (see the module docstring)."""
        heat = torch.sigmoid(out["heatmap"])
        peaks = heat * (F.max_pool2d(heat[:, None], 3, 1, 1)[:, 0] == heat)
        b, h, w = heat.shape
        results = []
        k = min(4 * self.detections_per_img, h * w)
        for i in range(b):
            score, idx = peaks[i].flatten().topk(k)
            keep = score > self.score_thresh
            score, idx = score[keep], idx[keep]
            yy, xx = idx // w, idx % w
            px, py = (xx.float() + 0.5) * STRIDE, (yy.float() + 0.5) * STRIDE
            d = out["box"][i][:, yy, xx]
            boxes = torch.stack([px - d[0], py - d[1], px + d[2], py + d[3]], 1)
            hh, ww = sizes[i]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, ww)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, hh)
            if "classes" in out:
                labels = out["classes"][i][:, yy, xx].argmax(0) + 1
            else:
                labels = torch.ones_like(idx)
            ok = (boxes[:, 2] - boxes[:, 0] > 1e-2) & (boxes[:, 3] - boxes[:, 1] > 1e-2)
            boxes, score, labels = boxes[ok], score[ok], labels[ok]
            keep = batched_nms(boxes, score, torch.zeros_like(labels), self.nms_thresh)
            keep = keep[: self.detections_per_img]
            results.append(
                {"boxes": boxes[keep], "scores": score[keep], "labels": labels[keep].long()}
            )
        return results


@torch.no_grad()
def self_ignore_mask(
    logits: torch.Tensor,
    box: torch.Tensor,
    gt: torch.Tensor,
    ignore: torch.Tensor,
    threshold: float,
    k: int = 4,
) -> torch.Tensor:
    """Cells inside the predicted boxes of confident background peaks (likely unannotated).

    Parameters
    ----------
    logits : (B, h, w) tensor
        Heatmap logits.
    box : (B, 4, h, w) tensor
        Predicted distances to the box sides (pixels), as the box head gives them.
    gt : (B, h, w) tensor
        Heatmap targets: a peak must lie outside every lesion's Gaussian (< 0.05), and the
        cells it marks too (a real lesion's Gaussian keeps its negative term).
    ignore : (B, h, w) bool tensor
        Cells already ignored (their peaks are not mined again).
    threshold : float
        Lowest sigmoid score of a mined peak.
    k : int, default 4
        Most peaks per image.

    Returns
    -------
    (B, h, w) bool tensor
    """
    b, h, w = logits.shape
    background = (gt < 0.05) & ~ignore
    masked = logits.masked_fill(~background, float("-inf"))
    peak = (masked == F.max_pool2d(masked[:, None], 3, 1, 1)[:, 0]) & background
    score = torch.sigmoid(masked).masked_fill(~peak, 0.0).flatten(1)
    top, idx = score.topk(min(int(k), h * w), dim=1)
    out = torch.zeros_like(ignore)
    for i in range(b):
        for s, j in zip(top[i].tolist(), idx[i].tolist(), strict=True):
            if s < threshold:
                break
            y, x = divmod(j, w)
            d = box[i, :, y, x] / STRIDE  # in cells
            x0 = max(int(math.floor(x + 0.5 - float(d[0]))), 0)
            y0 = max(int(math.floor(y + 0.5 - float(d[1]))), 0)
            x1 = min(int(math.ceil(x + 0.5 + float(d[2]))), w)
            y1 = min(int(math.ceil(y + 0.5 + float(d[3]))), h)
            out[i, y0:max(y1, y + 1), x0:max(x1, x + 1)] = True
    return out & (gt <= 0.05)


def hard_negative_loss(logits: torch.Tensor, background: torch.Tensor, k: int) -> torch.Tensor:
    """Sum over images of ``-log(1 - sigmoid(logit))`` at the ``k`` highest background peaks.

    Parameters
    ----------
    logits : (B, h, w) tensor
        Heatmap logits.
    background : (B, h, w) bool tensor
        Cells that may be mined (no lesion nearby, not ignored).
    k : int
        Peaks per image (fewer where an image has fewer background peaks).
    """
    masked = logits.masked_fill(~background, float("-inf"))
    with torch.no_grad():
        peak = (masked == F.max_pool2d(masked[:, None], 3, 1, 1)[:, 0]) & background
        score = masked.detach().masked_fill(~peak, float("-inf")).flatten(1)
        top, idx = score.topk(min(int(k), score.shape[1]), dim=1)
        ok = torch.isfinite(top)
    picked = logits.flatten(1).gather(1, idx)[ok]
    # -log(1 - sigmoid(x)) = softplus(x)
    return F.softplus(picked).sum()


def centernet_targets(boxes: torch.Tensor, labels: torch.Tensor, h: int, w: int):
    """Heatmap targets of one image on an ``h`` x ``w`` stride-4 grid.

    Parameters
    ----------
    boxes : (N, 4) tensor
        Target boxes in input pixels (``x1, y1, x2, y2``).
    labels : (N,) tensor
        Classes (> 0) or ignore regions (< 0).
    h, w : int
        Grid size.

    Returns
    -------
    heatmap : (h, w) tensor
        Gaussian of every lesion (their maximum), 1 at each lesion's centre cell.
    ignore : (h, w) bool tensor
        Cells inside an ignore box that no lesion's Gaussian reaches (> 0.05).
    weight : (h, w) tensor
        The largest Gaussian at each cell (where the box loss applies above 0.3).
    owner : (h, w) long tensor
        Index among the lesions (``labels > 0``) of that Gaussian.
    """
    dev = boxes.device
    ys = torch.arange(h, device=dev, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(w, device=dev, dtype=torch.float32)[None, :] + 0.5
    real = boxes[labels > 0] / STRIDE
    heat = torch.zeros((h, w), device=dev)
    owner = torch.zeros((h, w), dtype=torch.long, device=dev)
    if len(real):
        cx, cy = (real[:, 0] + real[:, 2]) / 2, (real[:, 1] + real[:, 3]) / 2
        sx = ((real[:, 2] - real[:, 0]) / 6).clamp(min=0.5)
        sy = ((real[:, 3] - real[:, 1]) / 6).clamp(min=0.5)
        g = torch.exp(
            -((xs[None] - cx[:, None, None]) ** 2) / (2 * sx[:, None, None] ** 2)
            - ((ys[None] - cy[:, None, None]) ** 2) / (2 * sy[:, None, None] ** 2)
        )
        ix = cx.floor().long().clamp(0, w - 1)
        iy = cy.floor().long().clamp(0, h - 1)
        g[torch.arange(len(real), device=dev), iy, ix] = 1.0
        heat, owner = g.max(0)
    ignore = torch.zeros((h, w), dtype=torch.bool, device=dev)
    for b in boxes[labels < 0] / STRIDE:
        x0, y0 = int(b[0].floor().clamp(0, w)), int(b[1].floor().clamp(0, h))
        x1, y1 = int(b[2].ceil().clamp(0, w)), int(b[3].ceil().clamp(0, h))
        ignore[y0:y1, x0:x1] = True
    ignore &= heat <= 0.05
    return heat, ignore, heat, owner


def build_centernet(
    num_classes: int,
    *,
    image_size: int = 512,
    width: int = 16,
    box_score_thresh: float = 0.01,
    box_nms_thresh: float = 0.5,
    detections_per_img: int = 50,
    ignore_iou: float = 0.3,
    hard_negatives: int = 0,
    class_loss_weight: float = 1.0,
    self_ignore: float = 0.0,
    self_ignore_start: float = 0.5,
) -> CenterNetLesion:
    """A :class:`CenterNetLesion` with random weights (``image_size`` is unused: any size)."""
    from .model import ModelError

    if num_classes < 1:
        raise ModelError("a detector needs at least one lesion class")
    return CenterNetLesion(
        num_classes,
        width=width,
        score_thresh=box_score_thresh,
        nms_thresh=box_nms_thresh,
        detections_per_img=detections_per_img,
        ignore_iou=ignore_iou,
        hard_negatives=hard_negatives,
        class_loss_weight=class_loss_weight,
        self_ignore=self_ignore,
        self_ignore_start=self_ignore_start,
    )
