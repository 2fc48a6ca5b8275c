"""The lesion detector network: torchvision Faster R-CNN with ignore regions and a lesion score.

Two changes to torchvision's Faster R-CNN, both small subclasses:

- **Ignore regions** (the missing-annotation strategy, see :mod:`deeplesion_lab.detection.dataset`):
  target boxes whose label is negative are not objects to find, but must not be learnt as
  background either. :class:`LesionRPN` drops anchors that would be negatives but overlap an
  ignore box by ``ignore_iou`` from the objectness loss, and :class:`LesionRoIHeads` does the
  same for the box head's proposals (label ``-1``, which torchvision's sampler skips). Boxes
  with positive labels train as usual.
- **Class-agnostic lesion score**: :meth:`LesionRoIHeads.postprocess_detections` scores each
  proposal by ``1 - p(background)`` (the sum of the class probabilities), takes the box of the
  most likely class and its label, and runs one class-agnostic NMS. For a single-class model
  this is torchvision's usual output; for a multi-class model (pseudo-label classes) it gives
  the lesion-vs-non-lesion score the DeepLesion evaluation needs, plus a class.

Weights only come from local files or from training here: the networks are built with
``weights=None`` and ``weights_backbone=None``; :func:`load_backbone_weights` loads an optional
local classification checkpoint (e.g. an ImageNet MobileNetV3 state dict) into the backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import boxes as box_ops
from torchvision.ops import misc as misc_nn_ops

from ..errors import LabError
from .config import BACKBONES, NORMS
from .roi_align import SeparableRoIAlign

__all__ = [
    "BACKBONES",
    "NORMS",
    "ModelError",
    "LesionRPN",
    "LesionRoIHeads",
    "build_detector",
    "build_fcos",
    "build_model",
    "load_backbone_weights",
]


class ModelError(LabError, ValueError):
    """A detector configuration or weights file that cannot be used."""


def _ignore_mask(boxes: torch.Tensor, ignore: torch.Tensor, iou: float) -> torch.Tensor:
    """Rows of ``boxes`` overlapping some ``ignore`` box by at least ``iou``."""
    if ignore.numel() == 0 or boxes.numel() == 0:
        return torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    return box_ops.box_iou(ignore, boxes).max(dim=0).values >= iou


class LesionRPN(RegionProposalNetwork):
    """Region proposal network whose negatives skip ignore regions (targets with label < 0)."""

    ignore_iou: float = 0.3

    def assign_targets_to_anchors(self, anchors, targets):  # torchvision's signature
        real = []
        ignores = []
        for t in targets:
            keep = t["labels"] > 0
            real.append({"boxes": t["boxes"][keep], "labels": t["labels"][keep]})
            ignores.append(t["boxes"][~keep])
        labels, matched = super().assign_targets_to_anchors(anchors, real)
        for lab, anc, ign in zip(labels, anchors, ignores, strict=True):
            if ign.numel():
                drop = _ignore_mask(anc, ign, self.ignore_iou) & (lab == 0)
                lab[drop] = -1.0
        return labels, matched


class LesionRoIHeads(RoIHeads):
    """Box head with ignore regions in training and a class-agnostic lesion score at inference."""

    ignore_iou: float = 0.3

    def assign_targets_to_proposals(self, proposals, gt_boxes, gt_labels):
        matched_idxs, labels = [], []
        for props, boxes, labs in zip(proposals, gt_boxes, gt_labels, strict=True):
            keep = torch.where(labs > 0)[0]
            sub_idx, sub_lab = super().assign_targets_to_proposals(
                [props], [boxes[keep]], [labs[keep]]
            )
            idx, lab = sub_idx[0], sub_lab[0]
            # map matches back to indices of the full target list (for regression targets)
            idx = keep[idx] if keep.numel() else torch.zeros_like(idx)
            ign = boxes[labs <= 0]
            if ign.numel():
                lab[_ignore_mask(props, ign, self.ignore_iou) & (lab == 0)] = -1
            matched_idxs.append(idx)
            labels.append(lab)
        return matched_idxs, labels

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
        boxes_per_image = [p.shape[0] for p in proposals]
        pred_boxes = self.box_coder.decode(box_regression, proposals)
        probs = F.softmax(class_logits, -1)
        all_boxes, all_scores, all_labels = [], [], []
        for boxes, p, shape in zip(
            pred_boxes.split(boxes_per_image, 0),
            probs.split(boxes_per_image, 0),
            image_shapes,
            strict=True,
        ):
            boxes = box_ops.clip_boxes_to_image(boxes, shape)
            fg = p[:, 1:]
            score = fg.sum(dim=1)
            cls = fg.argmax(dim=1) + 1
            box = boxes[torch.arange(boxes.shape[0], device=boxes.device), cls]
            keep = torch.where(score > self.score_thresh)[0]
            box, score, cls = box[keep], score[keep], cls[keep]
            keep = box_ops.remove_small_boxes(box, min_size=1e-2)
            box, score, cls = box[keep], score[keep], cls[keep]
            keep = box_ops.nms(box, score, self.nms_thresh)[: self.detections_per_img]
            all_boxes.append(box[keep])
            all_scores.append(score[keep])
            all_labels.append(cls[keep])
        return all_boxes, all_scores, all_labels


class CanvasTransform(GeneralizedRCNNTransform):
    """torchvision's input transform without its resizing.

    The dataset already resamples every slice to the detector's pixel spacing, so the network
    must take images at their size: whole canvases at inference, smaller crops in training
    (:class:`~deeplesion_lab.detection.dataset.KeySliceDataset` ``crop``). Normalisation and
    batching (padding to a multiple of 32) are torchvision's.
    """

    def resize(self, image, target=None):  # torchvision's signature
        return image, target


def group_norm(channels: int) -> nn.GroupNorm:
    """Group normalisation with 8 groups (or fewer, so that the groups divide ``channels``)."""
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def _backbone(
    name: str, pretrained_file: bool, trainable_layers: int | None, norm_name: str = "batch"
) -> nn.Module:
    from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone

    if norm_name not in NORMS:
        raise ModelError(f"unknown norm {norm_name!r}; choose one of {', '.join(NORMS)}")
    if norm_name == "group":
        norm = group_norm
    else:
        # torchvision freezes batch norm only for pretrained backbones (tiny detection batches)
        norm = misc_nn_ops.FrozenBatchNorm2d if pretrained_file else nn.BatchNorm2d
    if name.startswith("mobilenet"):
        layers = 6 if trainable_layers is None else trainable_layers
        # torchvision's default returns two stride-32 maps only, far too coarse for lesions of
        # 10-30 px; stages 2, 3, 4 give strides 8, 16 and 32 (plus the pooled stride 64)
        return mobilenet_backbone(
            backbone_name=name[: -len("_fpn")],
            weights=None,
            fpn=True,
            norm_layer=norm,
            trainable_layers=layers,
            returned_layers=[2, 3, 4],
        )
    layers = 5 if trainable_layers is None else trainable_layers
    return resnet_fpn_backbone(
        backbone_name=name[: -len("_fpn")], weights=None, norm_layer=norm, trainable_layers=layers
    )


def load_backbone_weights(model: FasterRCNN, path: str | Path) -> dict[str, int]:
    """Load a local classification checkpoint into the detector's backbone.

    Accepts a state dict, or a dict holding one under ``state_dict`` or ``model``, with keys
    as torchvision names them (``features.*`` for MobileNet, ``layer1.*`` for ResNet) or as a
    detector does (``backbone.body.*``). Heads that the detector does not have are skipped.

    Returns
    -------
    dict
        ``{"loaded": n, "skipped": m}``.

    Raises
    ------
    ModelError
        Missing or unreadable file, or fewer than half of the backbone's tensors matched.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: backbone weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors vary
        raise ModelError(f"{path}: not a readable torch checkpoint ({exc})") from exc
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: expected a state dict, found {type(obj).__name__}")
    body = model.backbone.body
    target = body.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    skipped = 0
    for k, v in obj.items():
        name = str(k)
        for prefix in ("module.", "backbone.body.", "features."):
            if name.startswith(prefix):
                name = name[len(prefix) :]
        if name in target and tuple(target[name].shape) == tuple(v.shape):
            mapped[name] = v
        else:
            skipped += 1
    wanted = [k for k in target if not k.endswith("num_batches_tracked")]
    if len([k for k in mapped if k in wanted]) < 0.5 * len(wanted):
        raise ModelError(
            f"{path}: only {len(mapped)} of the backbone's {len(wanted)} tensors match by name "
            "and shape; is it a checkpoint of the same backbone?"
        )
    body.load_state_dict(mapped, strict=False)
    return {"loaded": len(mapped), "skipped": skipped}


def build_detector(
    num_classes: int,
    *,
    backbone: str = "mobilenet_v3_large_fpn",
    image_size: int = 512,
    backbone_weights: str | Path | None = None,
    trainable_layers: int | None = None,
    norm: str = "batch",
    anchor_sizes: Sequence[int] = (16, 32, 64, 128, 256),
    ignore_iou: float = 0.3,
    rpn_fg_iou: float = 0.7,
    rpn_pre_nms_top_n: tuple[int, int] = (600, 300),
    rpn_post_nms_top_n: tuple[int, int] = (300, 150),
    box_batch_size_per_image: int = 128,
    box_head_size: int = 1024,
    box_score_thresh: float = 0.01,
    box_nms_thresh: float = 0.5,
    detections_per_img: int = 50,
) -> FasterRCNN:
    """A Faster R-CNN lesion detector with random or locally loaded weights.

    Parameters
    ----------
    num_classes : int
        Lesion classes, background excluded (1 for the single-class detector).
    backbone : str, default "mobilenet_v3_large_fpn"
        One of :data:`BACKBONES`.
    image_size : int, default 512
        Side of the square images the dataset makes; the network's own resizing keeps it.
    backbone_weights : path, optional
        Local classification checkpoint for the backbone (see :func:`load_backbone_weights`).
    trainable_layers : int, optional
        Backbone stages to train (torchvision's meaning); default all.
    norm : {"batch", "group"}, default "batch"
        Normalisation layers of the backbone: batch norm (frozen when ``backbone_weights`` are
        loaded, as torchvision does) or group norm, which does not depend on the batch and
        so behaves the same on small training windows and on whole canvases at inference.
    anchor_sizes : sequence of int
        Base anchor side of each feature level in pixels, smallest (finest level) first; each
        level also gets a size ``sqrt(2)`` larger, with aspect ratios 0.5, 1 and 2. MobileNet
        backbones use the first 4 (strides 8-64), ResNet ones 5 (strides 4-64). DeepLesion
        lesions are small: 16 px by default.
    ignore_iou : float, default 0.3
        Overlap with an ignore region that removes a negative anchor or proposal from the loss.
    rpn_fg_iou : float, default 0.7
        Overlap that makes an anchor a positive of the proposal network (below 0.3 it is a
        negative). Each lesion also gets its best-overlapping anchors as positives.
    rpn_pre_nms_top_n, rpn_post_nms_top_n : (train, test)
        Proposal counts (lower than torchvision's COCO defaults: a few lesions per slice, and
        CPU time).
    box_head_size : int, default 1024
        Width of the box head's two fully connected layers (torchvision's is 1024; 256 is
        4 times lighter for CPU training).
    box_batch_size_per_image, box_score_thresh, box_nms_thresh, detections_per_img
        Box head settings (see torchvision's ``FasterRCNN``).
    """
    if backbone not in BACKBONES:
        raise ModelError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    if num_classes < 1:
        raise ModelError("a detector needs at least one lesion class")
    body = _backbone(backbone, backbone_weights is not None, trainable_layers, norm)
    # feature levels: MobileNet strides 8, 16, 32, 64; ResNet strides 4, 8, 16, 32, 64
    n_levels = 4 if backbone.startswith("mobilenet") else 5
    sizes = tuple(int(s) for s in anchor_sizes)
    if len(sizes) < n_levels:
        raise ModelError(
            f"{backbone} has {n_levels} feature levels and needs {n_levels} anchor sizes "
            f"(smallest first), got {len(sizes)}"
        )
    per_level = tuple((s, int(round(s * 2**0.5))) for s in sizes[:n_levels])
    anchors = AnchorGenerator(per_level, ((0.5, 1.0, 2.0),) * n_levels)
    resolution = 7  # torchvision's RoI pooling size
    model = FasterRCNN(
        body,
        box_roi_pool=SeparableRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(body.out_channels * resolution**2, box_head_size),
        box_predictor=FastRCNNPredictor(box_head_size, num_classes + 1),
        min_size=image_size,
        max_size=image_size,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n[0],
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n[1],
        rpn_post_nms_top_n_train=rpn_post_nms_top_n[0],
        rpn_post_nms_top_n_test=rpn_post_nms_top_n[1],
        box_batch_size_per_image=box_batch_size_per_image,
        box_score_thresh=box_score_thresh,
        box_nms_thresh=box_nms_thresh,
        box_detections_per_img=detections_per_img,
    )
    t = model.transform
    model.transform = CanvasTransform(image_size, image_size, t.image_mean, t.image_std)
    rpn, heads = model.rpn, model.roi_heads
    new_rpn = LesionRPN(
        rpn.anchor_generator,
        rpn.head,
        fg_iou_thresh=rpn_fg_iou,
        bg_iou_thresh=min(0.3, rpn_fg_iou),
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_top_n=dict(rpn._pre_nms_top_n),
        post_nms_top_n=dict(rpn._post_nms_top_n),
        nms_thresh=rpn.nms_thresh,
        score_thresh=rpn.score_thresh,
    )
    new_rpn.ignore_iou = float(ignore_iou)
    new_heads = LesionRoIHeads(
        heads.box_roi_pool,
        heads.box_head,
        heads.box_predictor,
        fg_iou_thresh=0.5,
        bg_iou_thresh=0.5,
        batch_size_per_image=box_batch_size_per_image,
        positive_fraction=0.25,
        bbox_reg_weights=None,
        score_thresh=box_score_thresh,
        nms_thresh=box_nms_thresh,
        detections_per_img=detections_per_img,
    )
    new_heads.ignore_iou = float(ignore_iou)
    model.rpn, model.roi_heads = new_rpn, new_heads
    if backbone_weights is not None:
        load_backbone_weights(model, backbone_weights)
    return model


def reset_class_head(model: nn.Module, num_classes: int) -> None:
    """Replace the classification layer with a fresh one for ``num_classes`` lesion classes."""
    if hasattr(model, "reset_class_head"):  # CenterNet, FCOS
        model.reset_class_head(num_classes)
        return
    old = model.roi_heads.box_predictor
    model.roi_heads.box_predictor = FastRCNNPredictor(old.cls_score.in_features, num_classes + 1)


class LesionFCOS(nn.Module):
    """torchvision FCOS (a dense one-stage detector) with ignore regions dropped from targets.

    torchvision's FCOS has no ignore label: targets with label < 0 are removed before the loss
    (they then count as background, a known weakness of this candidate), and every positive
    target trains one class-agnostic "lesion" class; the class of a detection is unused.
    """

    arch = "fcos"

    def __init__(self, fcos: nn.Module, num_classes: int):
        super().__init__()
        self.fcos = fcos
        self.num_classes = int(num_classes)

    def reset_class_head(self, num_classes: int) -> None:
        self.num_classes = int(num_classes)

    def forward(self, images, targets=None):  # torchvision's interface
        if targets is not None:
            targets = [
                {
                    "boxes": t["boxes"][t["labels"] > 0],
                    "labels": torch.ones(
                        int((t["labels"] > 0).sum()), dtype=torch.int64, device=t["boxes"].device
                    ),
                }
                for t in targets
            ]
        return self.fcos(images, targets)


def build_fcos(
    num_classes: int,
    *,
    backbone: str = "mobilenet_v3_large_fpn",
    image_size: int = 512,
    norm: str = "batch",
    anchor_sizes: Sequence[int] = (16, 32, 64, 128, 256),
    box_score_thresh: float = 0.01,
    box_nms_thresh: float = 0.5,
    detections_per_img: int = 50,
) -> nn.Module:
    """torchvision FCOS on a MobileNetV3/ResNet FPN, random weights, class-agnostic score."""
    from torchvision.models.detection import FCOS

    if backbone not in BACKBONES:
        raise ModelError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    if num_classes < 1:
        raise ModelError("a detector needs at least one lesion class")
    body = _backbone(backbone, False, None, norm)
    n_levels = 4 if backbone.startswith("mobilenet") else 5
    sizes = tuple(int(s) for s in anchor_sizes)[:n_levels]
    anchors = AnchorGenerator(tuple((s,) for s in sizes), ((1.0,),) * n_levels)
    fcos = FCOS(
        body,
        num_classes=2,
        min_size=image_size,
        max_size=image_size,
        anchor_generator=anchors,
        score_thresh=box_score_thresh,
        nms_thresh=box_nms_thresh,
        detections_per_img=detections_per_img,
        topk_candidates=200,
    )
    t = fcos.transform
    fcos.transform = CanvasTransform(image_size, image_size, t.image_mean, t.image_std)
    return LesionFCOS(fcos, num_classes)


def build_model(arch: str, num_classes: int, **kw) -> nn.Module:
    """The network of architecture ``arch`` (one of :data:`~.config.ARCHS`).

    ``kw`` are :func:`build_detector`'s options; each architecture takes those it has.
    """
    from .config import ARCHS

    if arch == "fasterrcnn":
        skip = ("width", "hard_negatives", "class_loss_weight", "self_ignore", "self_ignore_start")
        return build_detector(num_classes, **{k: v for k, v in kw.items() if k not in skip})
    if arch == "fcos":
        keep = (
            "backbone",
            "image_size",
            "norm",
            "anchor_sizes",
            "box_score_thresh",
            "box_nms_thresh",
            "detections_per_img",
        )
        return build_fcos(num_classes, **{k: v for k, v in kw.items() if k in keep})
    if arch == "centernet":
        from .centernet import build_centernet

        keep = (
            "image_size",
            "box_score_thresh",
            "box_nms_thresh",
            "detections_per_img",
            "ignore_iou",
            "width",
            "hard_negatives",
            "class_loss_weight",
            "self_ignore",
            "self_ignore_start",
        )
        return build_centernet(num_classes, **{k: v for k, v in kw.items() if k in keep})
    raise ModelError(f"unknown detector architecture {arch!r}; choose one of {', '.join(ARCHS)}")
