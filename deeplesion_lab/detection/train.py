"""Train, checkpoint, resume, save and load the lesion detector (:class:`LesionDetector`).

A checkpoint folder (``RUN_DIR/detector/<name>/``) holds::

    last.pt       training state after the latest epoch or every ``checkpoint_every`` steps:
                  weights, optimiser, epoch and step, history, and the run's fingerprint
    model.pt      the finished detector (weights, classes, parameters, lineage, history)
    config.json   the same lineage and parameters, readable

Lineage records which labels trained the model (source, label-store snapshot id, content
hash), which data (the manifest and the data hash of its training lesions), the parent
checkpoint of a fine-tuning, the parameters and the library versions.

Resuming: ``fit`` on a folder whose ``last.pt`` has the same fingerprint (parameters except the
number of epochs, data, labels, classes, parent) continues from its epoch and step; the data
order and the augmentations are drawn from ``(seed, epoch, item)`` and the network's own
sampling from ``(seed, step)``, so a resumed run retraces an uninterrupted one. A folder made
with other settings is an error (nothing is overwritten) unless ``resume=False``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator

from .. import distributed
from ..atomic import atomic_path, write_json
from ..device import autocast, grad_scaler, loader_options, resolve_device, torch_threads
from ..errors import LabError
from ..images import missing_context_line
from ..lesion_types import split_codes
from ..manifest import data_hash, manifest_images_root
from ..params import Interval, StrOptions, validate_params
from .config import ARCHS, BACKBONES, NORMS
from .dataset import DatasetError, KeySliceDataset, collate
from .labels_table import class_indices, labels_hash
from .model import ModelError, build_model, reset_class_head
from .predict import predict_dataset

__all__ = ["LesionDetector", "CheckpointError", "CHECKPOINT_FORMAT", "select_split"]

CHECKPOINT_FORMAT = "deeplesion-lab-detector"
CHECKPOINT_VERSION = 1

#: Parameters that may change between an interrupted run and its resumption.
_RUNTIME_PARAMS = {
    "epochs",
    "progress",
    "device",
    "num_threads",
    "checkpoint_every",
    "cache_mb",
    "test_proposals",
    "warm_start",
    "amp",
    "workers",
    "micro_batches",
}


#: Options added later, left out of the fingerprint while off, so that a ``last.pt`` written
#: before they existed still resumes.
_OFF_PARAMS: dict[str, Any] = {
    "copy_paste": 0,
    "pretrain_steps": 0,
    "class_loss_weight": 1.0,
    "self_ignore": 0.0,
    "self_ignore_start": 0.5,
    "paste_scale_range": None,
    "paste_classes": True,
}


class CheckpointError(LabError, ValueError):
    """A checkpoint that is missing, unreadable, or made with other settings."""


def select_split(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    """Rows of ``split`` ("train", "val", "test", "all", or several joined by "+")."""
    try:
        codes = split_codes(split)
    except ValueError as exc:
        raise DatasetError(
            f"unknown split {exc.args[0]!r}; expected train, val, test, all or a join like "
            "train+val"
        ) from None
    return manifest if codes is None else manifest[manifest["split"].isin(codes)]


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, np.generic):
        return v.item()
    return v


def _state_hash(state: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha1()
    for k in sorted(state):
        h.update(k.encode())
        t = state[k]
        if isinstance(t, torch.Tensor):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


@dataclass
class _Setup:
    """What a fit trains: lesions, classes, dataset, network, fingerprint, step counts."""

    train: pd.DataFrame
    classes: list[str]
    dataset: KeySliceDataset
    model: torch.nn.Module
    parent: dict | None
    parent_hash: str
    fingerprint: dict
    micro_batches: int
    total_steps: int


@dataclass
class _TrainState:
    """Where a fit stands (what ``last.pt`` keeps): the next epoch and step, the history."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list[dict] = field(default_factory=list)
    created: str = ""
    ema: dict[str, torch.Tensor] | None = None
    pretrain: dict | None = None


def _context_summary(dataset: KeySliceDataset, ctx: distributed.DistContext) -> str | None:
    """The dataset's missing-context line over every training process (each reads only its
    share of the key slices; a count is the same wherever a slice is read)."""
    m = dataset.missing_context.astype(np.float64)
    if ctx.active:
        seen = ctx.all_sum(m >= 0)
        total = ctx.all_sum(np.where(m >= 0, m, 0.0))
        m = np.where(seen > 0, np.round(total / np.maximum(seen, 1)), -1.0)
    return missing_context_line(m.astype(np.int64), "key slices")


def _wrap_ddp(
    model: torch.nn.Module, ctx: distributed.DistContext, device: torch.device
) -> torch.nn.Module:
    """``model`` in DistributedDataParallel under torchrun, else itself."""
    if not ctx.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(
        model, device_ids=ids, find_unused_parameters=getattr(model, "arch", "") != "centernet"
    )


def _sync(runner: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """No gradient exchange for the micro-batches before a step's last one (DDP only)."""
    if sync or not hasattr(runner, "no_sync"):
        return contextlib.nullcontext()
    return runner.no_sync()


def _worker_lost(
    exc: BaseException, ctx: distributed.DistContext, state: _TrainState, ckdir: Path | None
) -> distributed.WorkerLostError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    where = (
        f"the last checkpoint {ckdir / 'last.pt'} (epoch {state.epoch + 1}, step "
        f"{state.step_in_epoch}) is intact; run the same command again to resume"
        if ckdir is not None and (ckdir / "last.pt").is_file()
        else "no checkpoint was written yet; run the same command again to start over"
    )
    return distributed.WorkerLostError(
        f"rank {ctx.rank} of {ctx.world}: another training process stopped during epoch "
        f"{state.epoch + 1} ({first}); {where}"
    )


class LesionDetector(BaseEstimator):
    """Lesion detector on 3-slice key-slice images (single- or multi-class, ``arch``).

    Parameters
    ----------
    arch : {"fasterrcnn", "centernet", "fcos"}, default "fasterrcnn"
        The network (:data:`~deeplesion_lab.detection.config.ARCHS`): torchvision's Faster
        R-CNN (:mod:`~deeplesion_lab.detection.model`), the CenterNet-style heatmap detector
        on a small U-Net (:mod:`~deeplesion_lab.detection.centernet`; several times more
        training windows per CPU-second), or torchvision's FCOS. Checkpoints record it, and a
        checkpoint loads only as its own architecture.
    width : int, default 16
        Channels of the CenterNet's first stage (``arch="centernet"`` only).
    hard_negatives : int, default 0
        CenterNet only: online hard-negative mining, the number of highest-scoring background
        peaks per training window given an extra loss term
        (:func:`~deeplesion_lab.detection.centernet.hard_negative_loss`); 0: off.
    class_loss_weight : float, default 1.0
        CenterNet only: weight of the class loss of a multi-class detector (how much the
        lesion classes shape the features the class-agnostic lesion score shares).
    self_ignore : float, default 0
        CenterNet only: online mining of unannotated lesions. After ``self_ignore_start`` of
        the training steps, background peaks the network scores at least this high become
        ignore regions of that step
        (:func:`~deeplesion_lab.detection.centernet.self_ignore_mask`); 0: off.
    self_ignore_start : float, default 0.5
        CenterNet only: fraction of the training steps before ``self_ignore`` acts.
    backbone : str, default "mobilenet_v3_large_fpn"
        See :data:`deeplesion_lab.detection.model.BACKBONES` (Faster R-CNN and FCOS).
    backbone_weights : str, optional
        Local classification checkpoint for the backbone (no download ever happens).
    norm : {"batch", "group"}, default "batch"
        The backbone's normalisation layers (see :func:`~.model.build_detector`).
    image_size : int, default 512
        Canvas side in pixels.
    spacing_mm : float, default 0.8
        In-plane pixel size the slices are resampled to.
    slice_spacing_mm : float, default 2
        Distance between the context slices.
    window : str or (low, high), default "soft tissue"
        HU window: a preset of :data:`deeplesion_lab.images.WINDOW_PRESETS` or bounds.
        ``"soft tissue"`` (-160 to 240 HU) learns much faster from random weights than
        ``"wide"`` ([-1024, 3071], what the DeepLesion detectors with ImageNet backbones use);
        see ``bench/results/detector_configs.md``.
    epochs : int, default 10
    batch_size : int, default 4
    lr : float, default 0.001
        Learning rate (linear warm-up, then cosine decay to 10 %); about 0.02 suits SGD.
    momentum, weight_decay : float
    warmup_steps : int, default 50
        Linear warm-up steps (at most a fifth of the run).
    ema_decay : float, optional
        Keep an exponential moving average of the weights (and batch-norm statistics) during
        training, with this decay per step (ramped up as ``min(decay, (1 + t) / (10 + t))``),
        and finish with the averaged weights. ``last.pt`` keeps the average, so a resumed run
        retraces an uninterrupted one. None or 0: off (the weights of the last step).
    augment : bool, default True
        Random scale, flips and intensity jitter in training.
    scale_range : (float, float), default (0.85, 1.15)
    train_crop : int, optional
        Train on random ``train_crop``-pixel windows (mostly around lesions) instead of whole
        canvases: several times more steps for the same CPU time (see
        :class:`~deeplesion_lab.detection.dataset.KeySliceDataset`). Inference always sees the
        whole canvas.
    crop_lesion_p : float, default 0.75
        Share of training windows centred near a lesion (the others are placed uniformly: the
        background and hard negatives the network sees).
    slice_jitter_mm : float, default 0
        Training augmentation along the body axis: the context of a training key slice is
        centred up to this many mm (whole slices) above or below it, with its boxes, limited
        to 0.4 x the radius of its smallest lesion (see
        :class:`~deeplesion_lab.detection.dataset.KeySliceDataset`). 0: off.
    copy_paste : int, default 0
        Copy-paste augmentation (Ghiasi et al. 2021): up to this many lesions of other training
        key slices pasted into each training image, with soft edges, on body and away from its
        boxes, and added to its targets (see
        :class:`~deeplesion_lab.detection.dataset.KeySliceDataset`). 0: off.
    paste_scale_range : (float, float), optional
        The range of a pasted lesion's own rescaling (log-uniform) instead of ``scale_range``
        (copy-paste only). None: ``scale_range``.
    paste_classes : bool, default True
        Whether pasted lesions (copy-paste) train the class head of a multi-class detector.
        False: they train the lesion score and size only, since a lesion pasted elsewhere in
        the body no longer sits in the region its class names.
    pretrain_steps : int, default 0
        CenterNet only: before training from scratch, pretrain the network's features for this
        many steps by masked-patch reconstruction on the unlabeled slices of every lesion's
        series in the manifest given to ``fit`` (all splits: no box or label is read; see
        :mod:`~deeplesion_lab.detection.pretrain`), on ``train_crop`` windows (128 px when
        unset). Skipped when resuming (``last.pt`` holds the weights) and with ``warm_start``.
        ``pretrain_`` records what it did. 0: off.
    optimizer : {"adamw", "sgd"}, default "adamw"
        AdamW converges much faster from random weights (the usual case here: no weights are
        downloaded); SGD suits a pretrained backbone.
    unannotated : {"neighbours", "none"}, default "neighbours"
        Missing-annotation strategy (see :mod:`deeplesion_lab.detection.dataset`).
    neighbour_factor : float, default 1
    ignore_iou : float, default 0.3
    rpn_fg_iou : float, default 0.7
        Anchor overlap that makes a positive of the proposal network.
    test_proposals : int, default 150
        Proposals per image the box head scores at inference.
    anchor_sizes : tuple of int, default (16, 32, 64, 128, 256)
    box_head_size : int, default 1024
        Width of the box head (256 trains faster on a CPU).
    box_batch_size : int, default 128
        Proposals sampled per image to train the box head (a quarter of them positive at
        most). DeepLesion slices hold a few lesions, so 32 lose little, and on a CPU the
        RoIAlign backward pass, which grows with this number, is the largest single cost of
        a training step.
    detections_per_img : int, default 50
    score_threshold : float, default 0.01
        Lowest lesion score kept at inference.
    checkpoint_every : int, default 50
        Steps between ``last.pt`` saves (besides each epoch end); 0 for epoch ends only.
    seed : int, default 0
    device : str, default "cpu"
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (see :func:`deeplesion_lab.device.resolve_device`).
    amp : bool, default True
        Mixed precision in training on CUDA (bfloat16, or float16 with a gradient scaler);
        the CPU always trains in float32.
    workers : int, optional
        DataLoader workers reading the slices on CUDA (default: up to 4); on a CPU the slices
        are read in the training process.
    micro_batches : int, default 1
        Cut each batch into this many parts whose gradients are averaged (each weighted by its
        size; running statistics from the first). Under ``torchrun`` with N processes it is at
        least N, one part per process, so a run on N processes equals one process with
        ``micro_batches=N``.
    num_threads : int, optional
        ``torch.set_num_threads`` during fit and predict (restored afterwards).
    cache_mb : float, default 1024
        Memory for preprocessed images.
    warm_start : bool, default False
        Continue from the current weights (fine-tuning) instead of a new network.
    progress : bool, default True
        tqdm progress bars.

    Attributes
    ----------
    model_ : torch.nn.Module
    classes_ : list of str
        Class names; detector class ``i + 1`` is ``classes_[i]``.
    history_ : list of dict
        Per epoch: loss (and parts), images, seconds, images per second, learning rate.
    n_iter_ : int
        Optimiser steps done.
    lineage_ : dict
        Labels, data, parent, parameters and versions of the last fit.
    context_summary_ : str or None
        One line on the neighbour (context) slices that were missing on disk among the key
        slices the last fit read (the nearest present slice stood in, with no warning per
        slice); None when none was missing.
    """

    _parameter_constraints: dict = {
        "arch": [StrOptions(set(ARCHS))],
        "width": [Interval(Integral, 1, None, closed="left")],
        "hard_negatives": [Interval(Integral, 0, None, closed="left")],
        "class_loss_weight": [Interval(Real, 0, None, closed="neither")],
        "self_ignore": [Interval(Real, 0, 1, closed="both")],
        "self_ignore_start": [Interval(Real, 0, 1, closed="both")],
        "backbone": [StrOptions(set(BACKBONES))],
        "backbone_weights": [None, str, Path],
        "norm": [StrOptions(set(NORMS))],
        "image_size": [Interval(Integral, 32, None, closed="left")],
        "spacing_mm": [Interval(Real, 0, None, closed="neither")],
        "slice_spacing_mm": [Interval(Real, 0, None, closed="left")],
        "window": [str, tuple, list],
        "epochs": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="left")],  # 0: the weights stay as set up
        "optimizer": [StrOptions({"adamw", "sgd"})],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "warmup_steps": [Interval(Integral, 0, None, closed="left")],
        "ema_decay": [None, Interval(Real, 0, 1, closed="left")],
        "augment": ["boolean"],
        "scale_range": [tuple, list],
        "train_crop": [None, Interval(Integral, 0, None, closed="left")],
        "crop_lesion_p": [Interval(Real, 0, 1, closed="both")],
        "slice_jitter_mm": [Interval(Real, 0, None, closed="left")],
        "copy_paste": [Interval(Integral, 0, None, closed="left")],
        "paste_scale_range": [None, tuple, list],
        "paste_classes": ["boolean"],
        "pretrain_steps": [Interval(Integral, 0, None, closed="left")],
        "unannotated": [StrOptions({"neighbours", "none"})],
        "neighbour_factor": [Interval(Real, 0, None, closed="left")],
        "ignore_iou": [Interval(Real, 0, 1, closed="both")],
        "rpn_fg_iou": [Interval(Real, 0, 1, closed="both")],
        "test_proposals": [Interval(Integral, 1, None, closed="left")],
        "anchor_sizes": [tuple, list],
        "box_head_size": [Interval(Integral, 1, None, closed="left")],
        "box_batch_size": [Interval(Integral, 1, None, closed="left")],
        "detections_per_img": [Interval(Integral, 1, None, closed="left")],
        "score_threshold": [Interval(Real, 0, 1, closed="both")],
        "checkpoint_every": [Interval(Integral, 0, None, closed="left")],
        "seed": [Interval(Integral, 0, None, closed="left")],
        "device": [str],
        "amp": ["boolean"],
        "workers": [None, Interval(Integral, 0, None, closed="left")],
        "micro_batches": [Interval(Integral, 1, None, closed="left")],
        "num_threads": [None, Interval(Integral, 1, None, closed="left")],
        "cache_mb": [Interval(Real, 0, None, closed="left")],
        "warm_start": ["boolean"],
        "progress": ["boolean"],
    }

    def __init__(
        self,
        arch: str = "fasterrcnn",
        width: int = 16,
        hard_negatives: int = 0,
        class_loss_weight: float = 1.0,
        self_ignore: float = 0.0,
        self_ignore_start: float = 0.5,
        backbone: str = "mobilenet_v3_large_fpn",
        backbone_weights: str | None = None,
        norm: str = "batch",
        image_size: int = 512,
        spacing_mm: float = 0.8,
        slice_spacing_mm: float = 2.0,
        window: str | tuple[float, float] = "soft tissue",
        epochs: int = 10,
        batch_size: int = 4,
        lr: float = 0.001,
        optimizer: str = "adamw",
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        warmup_steps: int = 50,
        ema_decay: float | None = None,
        augment: bool = True,
        scale_range: tuple[float, float] = (0.85, 1.15),
        train_crop: int | None = None,
        crop_lesion_p: float = 0.75,
        slice_jitter_mm: float = 0.0,
        copy_paste: int = 0,
        paste_scale_range: tuple[float, float] | None = None,
        paste_classes: bool = True,
        pretrain_steps: int = 0,
        unannotated: str = "neighbours",
        neighbour_factor: float = 1.0,
        ignore_iou: float = 0.3,
        rpn_fg_iou: float = 0.7,
        test_proposals: int = 150,
        anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256),
        box_head_size: int = 1024,
        box_batch_size: int = 128,
        detections_per_img: int = 50,
        score_threshold: float = 0.01,
        checkpoint_every: int = 50,
        seed: int = 0,
        device: str = "cpu",
        amp: bool = True,
        workers: int | None = None,
        micro_batches: int = 1,
        num_threads: int | None = None,
        cache_mb: float = 1024.0,
        warm_start: bool = False,
        progress: bool = True,
    ):
        self.arch = arch
        self.width = width
        self.hard_negatives = hard_negatives
        self.class_loss_weight = class_loss_weight
        self.self_ignore = self_ignore
        self.self_ignore_start = self_ignore_start
        self.backbone = backbone
        self.backbone_weights = backbone_weights
        self.norm = norm
        self.image_size = image_size
        self.spacing_mm = spacing_mm
        self.slice_spacing_mm = slice_spacing_mm
        self.window = window
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.ema_decay = ema_decay
        self.augment = augment
        self.scale_range = scale_range
        self.train_crop = train_crop
        self.crop_lesion_p = crop_lesion_p
        self.slice_jitter_mm = slice_jitter_mm
        self.copy_paste = copy_paste
        self.paste_scale_range = paste_scale_range
        self.paste_classes = paste_classes
        self.pretrain_steps = pretrain_steps
        self.unannotated = unannotated
        self.neighbour_factor = neighbour_factor
        self.ignore_iou = ignore_iou
        self.rpn_fg_iou = rpn_fg_iou
        self.test_proposals = test_proposals
        self.anchor_sizes = anchor_sizes
        self.box_head_size = box_head_size
        self.box_batch_size = box_batch_size
        self.detections_per_img = detections_per_img
        self.score_threshold = score_threshold
        self.checkpoint_every = checkpoint_every
        self.seed = seed
        self.device = device
        self.amp = amp
        self.workers = workers
        self.micro_batches = micro_batches
        self.num_threads = num_threads
        self.cache_mb = cache_mb
        self.warm_start = warm_start
        self.progress = progress

    # ------------------------------------------------------------------------------------------
    def _build(self, n_classes: int) -> torch.nn.Module:
        return build_model(
            self.arch,
            n_classes,
            width=self.width,
            hard_negatives=self.hard_negatives,
            class_loss_weight=self.class_loss_weight,
            self_ignore=self.self_ignore,
            self_ignore_start=self.self_ignore_start,
            backbone=self.backbone,
            image_size=self.image_size,
            backbone_weights=self.backbone_weights,
            norm=self.norm,
            anchor_sizes=tuple(self.anchor_sizes),
            ignore_iou=self.ignore_iou,
            rpn_fg_iou=self.rpn_fg_iou,
            rpn_pre_nms_top_n=(600, max(300, int(self.test_proposals))),
            rpn_post_nms_top_n=(300, int(self.test_proposals)),
            box_head_size=self.box_head_size,
            box_batch_size_per_image=self.box_batch_size,
            box_score_thresh=self.score_threshold,
            detections_per_img=self.detections_per_img,
        )

    def _dataset(
        self,
        lesions: pd.DataFrame,
        root: Path,
        *,
        train: bool,
        context=None,
        class_index=None,
        ignore_boxes=None,
    ) -> KeySliceDataset:
        return KeySliceDataset(
            lesions,
            root,
            class_index=class_index,
            ignore_boxes=ignore_boxes,
            context=context,
            unannotated=self.unannotated if train else "none",
            neighbour_factor=self.neighbour_factor,
            image_size=self.image_size,
            spacing_mm=self.spacing_mm,
            slice_spacing_mm=self.slice_spacing_mm,
            window=tuple(self.window) if isinstance(self.window, list) else self.window,
            augment=self.augment and train,
            scale_range=tuple(self.scale_range),
            crop=self.train_crop if train else None,
            crop_lesion_p=self.crop_lesion_p,
            slice_jitter_mm=self.slice_jitter_mm if train else 0.0,
            copy_paste=self.copy_paste if train else 0,
            paste_scale_range=self.paste_scale_range,
            paste_classes=self.paste_classes,
            seed=self.seed,
            cache_mb=self.cache_mb,
        )

    def _fingerprint(self, extra: Mapping[str, Any]) -> dict:
        params = {
            k: _jsonable(v)
            for k, v in self.get_params().items()
            if k not in _RUNTIME_PARAMS and not (k in _OFF_PARAMS and v == _OFF_PARAMS[k])
        }
        return {"params": params, **_jsonable(dict(extra))}

    def _lr_at(self, step: int, total: int) -> float:
        warm = min(1.0, (step + 1) / max(1, min(self.warmup_steps, total // 5)))
        frac = min(1.0, step / max(1, total))
        return float(self.lr * warm * (0.1 + 0.9 * 0.5 * (1.0 + np.cos(np.pi * frac))))

    def fit(
        self,
        manifest: pd.DataFrame,
        labels: pd.DataFrame | None = None,
        *,
        images_root: str | Path | None = None,
        split: str = "train",
        reset_head: bool = False,
        ignore_boxes: Mapping[str, np.ndarray] | None = None,
        checkpoint_dir: str | Path | None = None,
        resume: bool = True,
        lineage: Mapping[str, Any] | None = None,
        callback: Callable[[dict], None] | None = None,
    ) -> LesionDetector:
        """Train on the key slices of ``split``.

        Under ``torchrun`` (``WORLD_SIZE > 1``) every process takes its share of each global
        batch and the gradients are averaged (:mod:`deeplesion_lab.distributed`); only rank 0
        writes ``checkpoint_dir``. Such a run equals a single process with ``micro_batches``
        set to the number of processes.

        Parameters
        ----------
        manifest : pandas.DataFrame
            The lesions (with ``attrs["images_root"]`` unless ``images_root`` is given).
        labels : pandas.DataFrame, optional
            ``lesion_id, label`` (pseudo-labels or corrected labels): one detector class per
            label. ``None`` trains the single class "lesion".
        images_root : path, optional
        split : str, default "train"
        reset_head : bool, default False
            With ``warm_start``: accept labels whose classes differ from the model's by
            re-initialising the classification layer.
        ignore_boxes : mapping, optional
            Extra ignore regions per key slice (:func:`~.dataset.mined_ignore_boxes`).
        checkpoint_dir : path, optional
            Where ``last.pt``, ``model.pt`` and ``config.json`` go.
        resume : bool, default True
            Continue from ``checkpoint_dir/last.pt`` when it has the same fingerprint.
        lineage : mapping, optional
            Extra lineage to record (labels source, snapshot id, run directory...).
        callback : callable, optional
            Called after every step with a dict (epoch, step, loss, lr, images_per_s).

        Returns
        -------
        self
        """
        validate_params(self, LabError)
        device = resolve_device(self.device)
        ctx = distributed.context(device)
        with torch_threads(self.num_threads):
            setup = self._setup(
                manifest,
                labels,
                images_root=images_root,
                split=split,
                reset_head=reset_head,
                ignore_boxes=ignore_boxes,
                world=ctx.world,
                source=str((lineage or {}).get("labels_source", "labels")),
            )
            model = setup.model.to(device)
            ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
            resuming = ckdir is not None and resume and (ckdir / "last.pt").is_file()
            pretrained = None
            if self.pretrain_steps and setup.parent is None and not resuming:
                pretrained = self._pretrain(model, manifest, images_root)
            opt = self._optimizer(model)
            scaler = grad_scaler(device, self.amp)
            state = _TrainState(
                created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), pretrain=pretrained
            )
            if resuming:
                state = self._resume(ckdir / "last.pt", setup.fingerprint, model, opt, scaler)
            if self.ema_decay and state.ema is None:
                state.ema = _ema_init(model)
            runner = _wrap_ddp(model, ctx, device)
            for epoch in range(state.epoch, int(self.epochs)):
                try:
                    self._train_epoch(
                        epoch,
                        state,
                        setup,
                        model,
                        runner,
                        opt,
                        scaler,
                        ctx,
                        device,
                        ckdir,
                        callback,
                    )
                except RuntimeError as exc:
                    if ctx.active and not isinstance(exc, LabError):
                        raise _worker_lost(exc, ctx, state, ckdir) from exc
                    raise
                if ctx.main:
                    self._save_last(ckdir, model, opt, scaler, state, setup.fingerprint)
            self.context_summary_ = _context_summary(setup.dataset, ctx)
            if state.ema is not None:  # finish with the averaged weights
                model.load_state_dict({**model.state_dict(), **state.ema})
            model.eval()
            self._finish(setup, model, state, manifest, lineage)
            if ckdir is not None and ctx.main:
                self.save(ckdir)
            ctx.barrier()
        return self

    # the steps of fit ---------------------------------------------------------------------------
    def _pretrain(
        self, model: torch.nn.Module, manifest: pd.DataFrame, images_root: str | Path | None
    ) -> dict:
        """Masked-patch pretraining of a new network's features (``pretrain_steps``)."""
        from .pretrain import masked_pretrain

        root = Path(images_root) if images_root is not None else manifest_images_root(manifest)
        return masked_pretrain(
            model,
            manifest,
            root,
            steps=int(self.pretrain_steps),
            batch_size=int(self.batch_size),
            crop=int(self.train_crop or 128),
            seed=int(self.seed),
            lr=float(self.lr),
            scale_range=tuple(self.scale_range),
            dataset_kwargs=dict(
                image_size=self.image_size,
                spacing_mm=self.spacing_mm,
                slice_spacing_mm=self.slice_spacing_mm,
                window=tuple(self.window) if isinstance(self.window, list) else self.window,
                cache_mb=self.cache_mb,
            ),
        )

    def _setup(
        self,
        manifest: pd.DataFrame,
        labels: pd.DataFrame | None,
        *,
        images_root: str | Path | None,
        split: str,
        reset_head: bool,
        ignore_boxes: Mapping[str, np.ndarray] | None,
        world: int = 1,
        source: str = "labels",
    ) -> _Setup:
        """The training lesions, classes, dataset, network and run fingerprint of a fit."""
        root = Path(images_root) if images_root is not None else manifest_images_root(manifest)
        train = select_split(manifest, split)
        if train.empty:
            raise DatasetError(f"no lesion in split {split!r} of the manifest to train on")
        if self.pretrain_steps and self.arch != "centernet":
            raise ModelError(
                f"pretrain_steps={self.pretrain_steps} needs arch 'centernet' (the masked-patch "
                f"pretraining reads the CenterNet's features), not {self.arch!r}; set it to 0"
            )
        if float(self.self_ignore) > 0 and self.arch != "centernet":
            raise ModelError(
                f"self_ignore={self.self_ignore} is a CenterNet option (it reads the heatmap's "
                f"peaks); {self.arch!r} has none: leave it at 0"
            )
        if float(self.class_loss_weight) != 1.0 and self.arch != "centernet":
            raise ModelError(
                f"class_loss_weight={self.class_loss_weight} is a CenterNet option; "
                f"{self.arch!r} weighs its class loss itself: leave it at 1.0"
            )
        warm = self.warm_start and hasattr(self, "model_")
        imposed = self.classes_ if warm and not reset_head else None
        classes, index = class_indices(
            train["lesion_id"].astype(str).tolist(),
            labels,
            imposed,
            source=source,
        )
        dataset = self._dataset(
            train, root, train=True, context=manifest, class_index=index, ignore_boxes=ignore_boxes
        )
        if warm and getattr(self.model_, "arch", "fasterrcnn") != self.arch:
            raise ModelError(
                f"cannot continue training a {getattr(self.model_, 'arch', 'fasterrcnn')} "
                f"detector as arch {self.arch!r}; train a new model instead"
            )
        if warm:
            model = copy.deepcopy(self.model_)
            parent = dict(self.lineage_)
            parent_hash = _state_hash(model.state_dict())
            # loss settings the network holds follow the estimator's current parameters
            for name in ("hard_negatives", "class_loss_weight", "self_ignore", "self_ignore_start"):
                if hasattr(model, name):
                    setattr(model, name, type(getattr(model, name))(getattr(self, name)))
            if classes != self.classes_:
                torch.manual_seed(self.seed)
                reset_class_head(model, len(classes))
        else:
            torch.manual_seed(self.seed)
            model = self._build(len(classes))
            parent, parent_hash = None, "scratch"
        ign_hash = hashlib.sha1(
            b"".join(
                k.encode() + np.asarray(v, np.float32).tobytes()
                for k, v in sorted((ignore_boxes or {}).items())
            )
        ).hexdigest()[:12]
        micro = self._micro_batches(world)
        extra: dict[str, Any] = {
            "data_hash": data_hash(train),
            "labels_hash": labels_hash(labels),
            "classes": classes,
            "parent": parent_hash,
            "ignore_boxes": ign_hash,
            "split": split,
        }
        if micro > 1:  # absent when 1, so that older checkpoints still resume
            extra["micro_batches"] = micro
        n = len(dataset)
        steps_per_epoch = int(np.ceil(n / self.batch_size))
        return _Setup(
            train=train,
            classes=list(classes),
            dataset=dataset,
            model=model,
            parent=parent,
            parent_hash=parent_hash,
            fingerprint=self._fingerprint(extra),
            micro_batches=micro,
            total_steps=steps_per_epoch * int(self.epochs),
        )

    def _micro_batches(self, world: int) -> int:
        """Parts each global batch is cut into: ``micro_batches``, at least one per process."""
        m = int(self.micro_batches)
        if world > 1:
            if m > 1 and m % world:
                raise ModelError(
                    f"micro_batches={m} is not a multiple of the {world} training processes; "
                    f"use {world * max(1, m // world)} or leave it at 1"
                )
            m = max(m, world)
        if m > int(self.batch_size):
            raise ModelError(
                f"batch_size={self.batch_size} is smaller than the {m} micro-batches (one per "
                "training process at least); raise --batch-size"
            )
        return m

    def _optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        if self.optimizer == "sgd":
            return torch.optim.SGD(
                params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
            )
        if self.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        raise ModelError(f"unknown optimizer {self.optimizer!r}; use 'sgd' or 'adamw'")

    @staticmethod
    def _resume(
        path: Path,
        fingerprint: dict,
        model: torch.nn.Module,
        opt: torch.optim.Optimizer,
        scaler: Any,
    ) -> _TrainState:
        """Load ``last.pt`` into ``model`` and ``opt``; refuse one made with other settings."""
        state = _load(path)
        if state.get("fingerprint") != fingerprint:
            diff = _diff(state.get("fingerprint", {}), fingerprint)
            raise CheckpointError(
                f"{path} was made with other settings (differs in: "
                f"{', '.join(diff) or 'format'}); train under another name, or start over "
                "with --overwrite"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if state.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        return _TrainState(
            epoch=int(state["epoch"]),
            step_in_epoch=int(state["step_in_epoch"]),
            global_step=int(state["global_step"]),
            history=list(state["history"]),
            created=str(state.get("created") or ""),
            ema=state.get("ema"),
            pretrain=state.get("pretrain"),
        )

    @staticmethod
    def _save_last(
        ckdir: Path | None,
        model: torch.nn.Module,
        opt: torch.optim.Optimizer,
        scaler: Any,
        state: _TrainState,
        fingerprint: dict,
    ) -> None:
        """Write the training state to ``ckdir/last.pt`` (atomically)."""
        if ckdir is None:
            return
        obj = {
            "format": CHECKPOINT_FORMAT,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "epoch": state.epoch,
            "step_in_epoch": state.step_in_epoch,
            "global_step": state.global_step,
            "history": state.history,
            "fingerprint": fingerprint,
            "created": state.created,
        }
        if scaler.is_enabled():
            obj["scaler"] = scaler.state_dict()
        if state.ema is not None:
            obj["ema"] = state.ema
        if state.pretrain is not None:
            obj["pretrain"] = state.pretrain
        with atomic_path(ckdir / "last.pt") as tmp:
            torch.save(obj, tmp)

    def _train_epoch(
        self,
        epoch: int,
        state: _TrainState,
        setup: _Setup,
        model: torch.nn.Module,
        runner: torch.nn.Module,
        opt: torch.optim.Optimizer,
        scaler: Any,
        ctx: distributed.DistContext,
        device: torch.device,
        ckdir: Path | None,
        callback: Callable[[dict], None] | None,
    ) -> None:
        """One epoch from ``state`` (mid-epoch after a resume); appends its history entry and
        leaves ``state`` at the start of the next epoch."""
        from tqdm.auto import tqdm

        dataset = setup.dataset
        n, bs, m = len(dataset), int(self.batch_size), setup.micro_batches
        model.train()
        dataset.set_epoch(epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(n)
        batches = [order[i : i + bs] for i in range(0, n, bs)]
        first = state.step_in_epoch if epoch == state.epoch else 0
        # this process's micro-batches of every step: global part g = rank, rank + world, ...
        # (g, lesions to load, share of the batch). An empty part (a short last batch) is
        # skipped by one process; under DDP its process still joins the gradient exchange,
        # on the batch's first image with weight 0.
        mine = [
            [
                (g, part if len(part) else idx[:1], len(part) / len(idx))
                for g, part in enumerate(distributed.shards(idx, m))
                if g % ctx.world == ctx.rank and (len(part) or ctx.active)
            ]
            for idx in batches[first:]
        ]
        loaded = self._loader(dataset, [p for step in mine for _, p, _ in step], device)
        sums: dict[str, float] = {}
        names: list[str] | None = None
        n_img, t_epoch = 0, 0.0
        bar = tqdm(
            range(first, len(batches)),
            desc=f"epoch {epoch + 1}/{self.epochs}",
            unit="batch",
            disable=not (self.progress and ctx.main),
        )
        for b in bar:
            t0 = time.perf_counter()
            idx = batches[b]
            lr = self._lr_at(state.global_step, setup.total_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad()
            parts = mine[b - first]
            values = None
            for k, (g, _, share) in enumerate(parts):
                sync = k == len(parts) - 1
                with _sync(runner, sync), distributed.keep_buffers(model, g != 0):
                    torch.manual_seed(self.seed * 1_000_003 + state.global_step + 1_000_000_007 * g)
                    images, targets, metas = next(loaded)
                    dataset.record_missing(metas)
                    images = [im.to(device, non_blocking=True) for im in images]
                    targets = [
                        {k2: v.to(device, non_blocking=True) for k2, v in t.items()}
                        for t in targets
                    ]
                    if hasattr(model, "train_progress"):  # read by the CenterNet's self_ignore
                        model.train_progress = state.global_step / max(setup.total_steps, 1)
                    with autocast(device, self.amp):
                        losses = runner(images, targets)
                    loss = sum(losses.values())
                    # DDP averages over the processes: each part counts by its share
                    scaler.scale(loss * (share * ctx.world)).backward()
                if names is None:
                    names = sorted(losses)
                if values is None:
                    values = np.zeros(len(names) + 1)
                values += share * np.array(
                    [losses[k2].item() for k2 in names] + [float(loss.item())]
                )
            # every process's weighted loss parts, summed: the loss of the global batch
            values = ctx.all_sum(values if values is not None else np.zeros(len(names) + 1))
            loss_v = float(values[-1])
            if not np.isfinite(loss_v):
                raise LabError(
                    f"training diverged at epoch {epoch + 1}, step {b + 1} (loss {loss_v}); "
                    "lower --lr"
                )
            scaler.step(opt)
            scaler.update()
            state.global_step += 1
            if state.ema is not None:
                _ema_update(state.ema, model, float(self.ema_decay), state.global_step)
            dt = time.perf_counter() - t0
            t_epoch += dt
            n_img += len(idx)
            for k2, v in zip(names, values[:-1], strict=True):
                sums[k2] = sums.get(k2, 0.0) + float(v) * len(idx)
            sums["loss"] = sums.get("loss", 0.0) + loss_v * len(idx)
            bar.set_postfix(loss=f"{loss_v:.3f}")
            if callback is not None and ctx.main:
                callback(
                    {
                        "epoch": epoch,
                        "step": b + 1,
                        "global_step": state.global_step,
                        "loss": loss_v,
                        "lr": lr,
                        "images_per_s": len(idx) / dt,
                    }
                )
            if (
                self.checkpoint_every
                and state.global_step % self.checkpoint_every == 0
                and b + 1 < len(batches)
                and ctx.main
            ):
                state.epoch, state.step_in_epoch = epoch, b + 1
                self._save_last(ckdir, model, opt, scaler, state, setup.fingerprint)
        entry = {k: v / max(n_img, 1) for k, v in sums.items()}
        entry.update(
            {
                "epoch": epoch + 1,
                "images": n_img,
                "seconds": t_epoch,
                "images_per_s": n_img / t_epoch if t_epoch else float("nan"),
                "lr": self._lr_at(max(state.global_step - 1, 0), setup.total_steps),
            }
        )
        if ctx.active:
            entry["processes"] = ctx.world
        state.history.append(entry)
        state.epoch, state.step_in_epoch = epoch + 1, 0

    def _loader(self, dataset: KeySliceDataset, parts: list[np.ndarray], device: torch.device):
        """The collated micro-batches ``parts`` in order: read in this process on a CPU, by
        DataLoader workers into pinned memory on CUDA."""
        if device.type != "cuda":
            return (collate([dataset[int(i)] for i in p]) for p in parts)
        opts = loader_options(device, self.workers)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=[[int(i) for i in p] for p in parts],
            collate_fn=collate,
            **opts,
        )
        return iter(loader)

    def _finish(
        self,
        setup: _Setup,
        model: torch.nn.Module,
        state: _TrainState,
        manifest: pd.DataFrame,
        lineage: Mapping[str, Any] | None,
    ) -> None:
        """The fitted attributes and the lineage record."""
        fp = setup.fingerprint
        train = setup.train
        self.model_ = model
        self.classes_ = list(setup.classes)
        self.history_ = state.history
        self.n_iter_ = state.global_step
        self.lineage_ = {
            **_jsonable(dict(lineage or {})),
            "manifest": train.attrs.get("manifest_path", manifest.attrs.get("manifest_path", "")),
            "data_hash": fp["data_hash"],
            "labels_hash": fp["labels_hash"],
            "classes": list(setup.classes),
            "split": fp["split"],
            "n_images": len(setup.dataset),
            "n_ignore_regions": setup.dataset.n_ignore,
            "parent": setup.parent,
            "parent_weights": setup.parent_hash,
            "ignore_boxes": fp["ignore_boxes"],
            "params": fp["params"],
            "versions": _versions(),
            "created": state.created,
        }
        if setup.micro_batches > 1:
            self.lineage_["micro_batches"] = setup.micro_batches
        self.pretrain_ = state.pretrain
        if state.pretrain is not None:
            self.lineage_["pretrain"] = dict(state.pretrain)

    # ------------------------------------------------------------------------------------------
    def predict(
        self,
        manifest: pd.DataFrame,
        split: str = "test",
        *,
        images_root: str | Path | None = None,
        batch_size: int | None = None,
    ) -> pd.DataFrame:
        """Detections on every key slice of ``split`` (the predictions CSV's columns).

        Also sets ``predict_ms_per_image_`` (network time per image, loading excluded) and
        ``predict_context_summary_`` (one line on the context slices missing on disk, or None).
        """
        self._check_fitted()
        device = resolve_device(self.device)
        root = Path(images_root) if images_root is not None else manifest_images_root(manifest)
        rows = select_split(manifest, split)
        if rows.empty:
            raise DatasetError(f"no key slice in split {split!r} of the manifest")
        ds = self._dataset(rows, root, train=False)
        with torch_threads(self.num_threads):
            df, ms = predict_dataset(
                self.model_,
                ds,
                self.classes_,
                batch_size=batch_size or self.batch_size,
                device=str(device),
                progress=self.progress,
            )
        self.predict_ms_per_image_ = ms
        self.predict_context_summary_ = ds.context_summary()
        return df

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise ModelError("this detector is not trained yet; call fit or load a checkpoint")

    # ------------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``model.pt`` and ``config.json`` into ``folder`` (atomically)."""
        self._check_fitted()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        params = {k: _jsonable(v) for k, v in self.get_params().items()}
        with atomic_path(folder / "model.pt") as tmp:
            torch.save(
                {
                    "format": CHECKPOINT_FORMAT,
                    "format_version": CHECKPOINT_VERSION,
                    "arch": self.arch,
                    "state_dict": self.model_.state_dict(),
                    "classes": list(self.classes_),
                    "params": params,
                    "lineage": self.lineage_,
                    "history": self.history_,
                    "n_iter": self.n_iter_,
                },
                tmp,
            )
        write_json(
            {
                "arch": self.arch,
                "classes": self.classes_,
                "params": params,
                "lineage": self.lineage_,
                "history": self.history_,
                "n_iter": self.n_iter_,
            },
            folder / "config.json",
        )
        return folder / "model.pt"

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> LesionDetector:
        """Load a detector saved by :meth:`save` (``model.pt`` or its folder).

        ``overrides`` replace saved parameters (e.g. ``device``, ``epochs``, ``warm_start``).
        An ``arch`` override other than the checkpoint's architecture is a
        :class:`CheckpointError` (checkpoints made before ``arch`` existed are Faster R-CNNs).
        """
        path = Path(path)
        if path.is_dir():
            path = path / "model.pt"
        ck = _load(path)
        if ck.get("format") != CHECKPOINT_FORMAT or "state_dict" not in ck:
            raise CheckpointError(f"{path}: not a finished deeplesion-lab detector checkpoint")
        params = dict(ck["params"])
        saved_arch = str(ck.get("arch") or params.get("arch") or "fasterrcnn")
        params["arch"] = saved_arch
        want = overrides.get("arch")
        if want is not None and want != saved_arch:
            raise CheckpointError(
                f"{path}: this checkpoint is a {saved_arch} detector, not {want}; load it "
                f"without --arch (or with --arch {saved_arch}), or train a {want} model"
            )
        for k in ("scale_range", "anchor_sizes", "paste_scale_range"):
            if isinstance(params.get(k), list):
                params[k] = tuple(params[k])
        params.update(overrides)
        valid = set(cls().get_params())
        det = cls(**{k: v for k, v in params.items() if k in valid})
        det.classes_ = list(ck["classes"])
        version = ck.get("format_version")
        if isinstance(version, int) and version > CHECKPOINT_VERSION:
            raise CheckpointError(
                f"{path}: detector checkpoint format {version} is newer than this deeplesion-lab "
                f"reads ({CHECKPOINT_VERSION}); upgrade deeplesion-lab"
            )
        det.model_ = det._build(len(det.classes_))
        try:
            det.model_.load_state_dict(ck["state_dict"])
        except RuntimeError as exc:
            # another network layout: a checkpoint of an older deeplesion-lab, or edited params
            missing, unexpected, shapes = _state_mismatch(det.model_.state_dict(), ck["state_dict"])
            made = (ck.get("lineage") or {}).get("versions", {}).get("deeplesion_lab", "?")
            raise CheckpointError(
                f"{path}: the saved weights do not fit the network its settings build "
                f"(arch {det.arch}, backbone {det.backbone}; checkpoint format {version or 'unversioned'}, made "
                f"by deeplesion-lab {made}): {len(missing)} tensors missing, {len(unexpected)} "
                f"unexpected, {len(shapes)} of another shape"
                + (
                    f" (e.g. {(missing + unexpected + shapes)[0]})"
                    if missing or unexpected or shapes
                    else ""
                )
                + "; retrain it (`train-detector --overwrite`) or load it with the "
                "deeplesion-lab version that made it"
            ) from exc
        det.model_.eval()
        det.lineage_ = dict(ck.get("lineage") or {})
        det.lineage_["checkpoint"] = str(path.resolve())
        det.history_ = list(ck.get("history") or [])
        det.n_iter_ = int(ck.get("n_iter", 0))
        return det


def _ema_init(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the floating-point entries of ``model``'s state (weights, batch-norm
    statistics): the start of the moving average."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


@torch.no_grad()
def _ema_update(
    ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float, step: int
) -> None:
    """``ema = d * ema + (1 - d) * weights`` after optimiser step ``step`` (1, 2, ...), with
    ``d = min(decay, (1 + step) / (10 + step))`` (a short average at the start)."""
    d = min(float(decay), (1.0 + step) / (10.0 + step))
    for k, v in model.state_dict().items():
        if k in ema:
            ema[k].mul_(d).add_(v.detach(), alpha=1.0 - d)


def _load(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors vary
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc})") from exc
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a deeplesion-lab detector checkpoint")
    return obj


def _state_mismatch(
    want: Mapping[str, torch.Tensor], got: Mapping[str, Any]
) -> tuple[list[str], list[str], list[str]]:
    """Keys missing from ``got``, keys ``want`` lacks, and keys whose shapes differ."""
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    shapes = [
        k
        for k in want
        if k in got and hasattr(got[k], "shape") and tuple(got[k].shape) != tuple(want[k].shape)
    ]
    return missing, unexpected, shapes


def _diff(a: Mapping, b: Mapping, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif json.dumps(va, sort_keys=True, default=str) != json.dumps(
            vb, sort_keys=True, default=str
        ):
            out.append(f"{prefix}{k}")
    return out


def _versions() -> dict[str, str]:
    from ..run import versions

    return {k: str(v) for k, v in versions().items()}
