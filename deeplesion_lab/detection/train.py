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

import copy
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator

from ..atomic import atomic_path, write_json
from ..errors import LabError
from ..lesion_types import SPLIT_CODES
from ..manifest import data_hash, manifest_images_root
from .dataset import DatasetError, KeySliceDataset, collate
from .labels_table import class_indices, labels_hash
from .model import ModelError, build_model, reset_class_head
from .predict import predict_dataset

__all__ = ["LesionDetector", "CheckpointError", "CHECKPOINT_FORMAT", "select_split"]

CHECKPOINT_FORMAT = "deeplesion-lab-detector"
CHECKPOINT_VERSION = 1

#: Parameters that may change between an interrupted run and its resumption.
_RUNTIME_PARAMS = {"epochs", "progress", "device", "num_threads", "checkpoint_every", "cache_mb",
                   "test_proposals",
                   "warm_start"}


class CheckpointError(LabError, ValueError):
    """A checkpoint that is missing, unreadable, or made with other settings."""


def select_split(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    """Rows of ``split`` ("train", "val", "test", "all", or several joined by "+")."""
    if split == "all":
        return manifest
    codes = []
    for part in split.split("+"):
        if part not in SPLIT_CODES:
            raise DatasetError(
                f"unknown split {part!r}; expected train, val, test, all or a join like train+val"
            )
        codes.append(SPLIT_CODES[part])
    return manifest[manifest["split"].isin(codes)]


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
    num_threads : int, optional
        ``torch.set_num_threads`` during fit and predict.
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
    """

    def __init__(
        self,
        arch: str = "fasterrcnn",
        width: int = 16,
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
        augment: bool = True,
        scale_range: tuple[float, float] = (0.85, 1.15),
        train_crop: int | None = None,
        crop_lesion_p: float = 0.75,
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
        num_threads: int | None = None,
        cache_mb: float = 1024.0,
        warm_start: bool = False,
        progress: bool = True,
    ):
        self.arch = arch
        self.width = width
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
        self.augment = augment
        self.scale_range = scale_range
        self.train_crop = train_crop
        self.crop_lesion_p = crop_lesion_p
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

    def _dataset(self, lesions: pd.DataFrame, root: Path, *, train: bool, context=None,
                 class_index=None, ignore_boxes=None) -> KeySliceDataset:
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
            seed=self.seed,
            cache_mb=self.cache_mb,
        )

    def _fingerprint(self, extra: Mapping[str, Any]) -> dict:
        params = {k: _jsonable(v) for k, v in self.get_params().items()
                  if k not in _RUNTIME_PARAMS}
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
        if self.num_threads:
            torch.set_num_threads(int(self.num_threads))
        root = Path(images_root) if images_root is not None else manifest_images_root(manifest)
        train = select_split(manifest, split)
        if train.empty:
            raise DatasetError(f"no lesion in split {split!r} of the manifest to train on")
        warm = self.warm_start and hasattr(self, "model_")
        imposed = self.classes_ if warm and not reset_head else None
        classes, index = class_indices(
            train["lesion_id"].astype(str).tolist(), labels, imposed,
            source=str((lineage or {}).get("labels_source", "labels")),
        )
        dataset = self._dataset(train, root, train=True, context=manifest, class_index=index,
                                ignore_boxes=ignore_boxes)
        if warm and getattr(self.model_, "arch", "fasterrcnn") != self.arch:
            raise ModelError(
                f"cannot continue training a {getattr(self.model_, 'arch', 'fasterrcnn')} "
                f"detector as arch {self.arch!r}; train a new model instead"
            )
        if warm:
            model = copy.deepcopy(self.model_)
            parent = dict(self.lineage_)
            parent_hash = _state_hash(model.state_dict())
            if classes != self.classes_:
                torch.manual_seed(self.seed)
                reset_class_head(model, len(classes))
        else:
            torch.manual_seed(self.seed)
            model = self._build(len(classes))
            parent, parent_hash = None, "scratch"
        ign_hash = hashlib.sha1(
            b"".join(k.encode() + np.asarray(v, np.float32).tobytes()
                     for k, v in sorted((ignore_boxes or {}).items()))
        ).hexdigest()[:12]
        fp = self._fingerprint({
            "data_hash": data_hash(train),
            "labels_hash": labels_hash(labels),
            "classes": classes,
            "parent": parent_hash,
            "ignore_boxes": ign_hash,
            "split": split,
        })
        device = torch.device(self.device)
        model.to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        if self.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                                  weight_decay=self.weight_decay)
        elif self.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        else:
            raise ModelError(f"unknown optimizer {self.optimizer!r}; use 'sgd' or 'adamw'")
        n = len(dataset)
        steps_per_epoch = int(np.ceil(n / self.batch_size))
        total = steps_per_epoch * int(self.epochs)
        start_epoch, start_step, global_step = 0, 0, 0
        history: list[dict] = []
        created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if ckdir is not None and resume and (ckdir / "last.pt").is_file():
            state = _load(ckdir / "last.pt")
            if state.get("fingerprint") != fp:
                diff = _diff(state.get("fingerprint", {}), fp)
                raise CheckpointError(
                    f"{ckdir / 'last.pt'} was made with other settings (differs in: "
                    f"{', '.join(diff) or 'format'}); train under another name, or start over "
                    "with --overwrite"
                )
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            start_epoch, start_step = int(state["epoch"]), int(state["step_in_epoch"])
            global_step, history = int(state["global_step"]), list(state["history"])
            created = str(state.get("created", created))

        def save_last(epoch: int, step_in_epoch: int) -> None:
            if ckdir is None:
                return
            with atomic_path(ckdir / "last.pt") as tmp:
                torch.save(
                    {
                        "format": CHECKPOINT_FORMAT,
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "epoch": epoch,
                        "step_in_epoch": step_in_epoch,
                        "global_step": global_step,
                        "history": history,
                        "fingerprint": fp,
                        "created": created,
                    },
                    tmp,
                )

        from tqdm.auto import tqdm

        for epoch in range(start_epoch, int(self.epochs)):
            model.train()
            dataset.set_epoch(epoch)
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
            batches = [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
            first = start_step if epoch == start_epoch else 0
            sums: dict[str, float] = {}
            n_img, t_epoch = 0, 0.0
            bar = tqdm(batches[first:], desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch",
                       disable=not self.progress)
            for b, idx in enumerate(bar, start=first):
                t0 = time.perf_counter()
                torch.manual_seed(self.seed * 1_000_003 + global_step)
                images, targets, _ = collate([dataset[int(i)] for i in idx])
                images = [im.to(device) for im in images]
                targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
                lr = self._lr_at(global_step, total)
                for g in opt.param_groups:
                    g["lr"] = lr
                losses = model(images, targets)
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise LabError(
                        f"training diverged at epoch {epoch + 1}, step {b + 1} (loss {loss.item()}); "
                        "lower --lr"
                    )
                opt.zero_grad()
                loss.backward()
                opt.step()
                global_step += 1
                dt = time.perf_counter() - t0
                t_epoch += dt
                n_img += len(idx)
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v.item() * len(idx)
                loss_v = loss.item()
                sums["loss"] = sums.get("loss", 0.0) + loss_v * len(idx)
                bar.set_postfix(loss=f"{loss_v:.3f}")
                if callback is not None:
                    callback({"epoch": epoch, "step": b + 1, "global_step": global_step,
                              "loss": loss_v, "lr": lr, "images_per_s": len(idx) / dt})
                if self.checkpoint_every and global_step % self.checkpoint_every == 0 \
                        and b + 1 < len(batches):
                    save_last(epoch, b + 1)
            entry = {k: v / max(n_img, 1) for k, v in sums.items()}
            entry.update({"epoch": epoch + 1, "images": n_img, "seconds": t_epoch,
                          "images_per_s": n_img / t_epoch if t_epoch else float("nan"),
                          "lr": self._lr_at(max(global_step - 1, 0), total)})
            history.append(entry)
            save_last(epoch + 1, 0)

        model.eval()
        self.model_ = model
        self.classes_ = list(classes)
        self.history_ = history
        self.n_iter_ = global_step
        self.lineage_ = {
            **_jsonable(dict(lineage or {})),
            "manifest": train.attrs.get("manifest_path", manifest.attrs.get("manifest_path", "")),
            "data_hash": fp["data_hash"],
            "labels_hash": fp["labels_hash"],
            "classes": list(classes),
            "split": split,
            "n_images": n,
            "n_ignore_regions": dataset.n_ignore,
            "parent": parent,
            "parent_weights": parent_hash,
            "ignore_boxes": fp["ignore_boxes"],
            "params": fp["params"],
            "versions": _versions(),
            "created": created,
        }
        if ckdir is not None:
            self.save(ckdir)
        return self

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

        Also sets ``predict_ms_per_image_`` (network time per image, loading excluded).
        """
        self._check_fitted()
        if self.num_threads:
            torch.set_num_threads(int(self.num_threads))
        root = Path(images_root) if images_root is not None else manifest_images_root(manifest)
        rows = select_split(manifest, split)
        if rows.empty:
            raise DatasetError(f"no key slice in split {split!r} of the manifest")
        ds = self._dataset(rows, root, train=False)
        df, ms = predict_dataset(self.model_, ds, self.classes_,
                                 batch_size=batch_size or self.batch_size, device=self.device,
                                 progress=self.progress)
        self.predict_ms_per_image_ = ms
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
            {"arch": self.arch, "classes": self.classes_, "params": params,
             "lineage": self.lineage_,
             "history": self.history_, "n_iter": self.n_iter_},
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
        for k in ("scale_range", "anchor_sizes"):
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
            missing, unexpected, shapes = _state_mismatch(det.model_.state_dict(),
                                                          ck["state_dict"])
            made = (ck.get("lineage") or {}).get("versions", {}).get("deeplesion_lab", "?")
            raise CheckpointError(
                f"{path}: the saved weights do not fit the network its settings build "
                f"(arch {det.arch}, backbone {det.backbone}; checkpoint format {version or 'unversioned'}, made "
                f"by deeplesion-lab {made}): {len(missing)} tensors missing, {len(unexpected)} "
                f"unexpected, {len(shapes)} of another shape"
                + (f" (e.g. {(missing + unexpected + shapes)[0]})"
                   if missing or unexpected or shapes else "")
                + "; retrain it (`train-detector --overwrite`) or load it with the "
                "deeplesion-lab version that made it"
            ) from exc
        det.model_.eval()
        det.lineage_ = dict(ck.get("lineage") or {})
        det.lineage_["checkpoint"] = str(path.resolve())
        det.history_ = list(ck.get("history") or [])
        det.n_iter_ = int(ck.get("n_iter", 0))
        return det


def _load(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle/zip errors vary
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc})") from exc
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a deeplesion-lab detector checkpoint")
    return obj


def _state_mismatch(want: Mapping[str, torch.Tensor], got: Mapping[str, Any]
                    ) -> tuple[list[str], list[str], list[str]]:
    """Keys missing from ``got``, keys ``want`` lacks, and keys whose shapes differ."""
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    shapes = [k for k in want if k in got and hasattr(got[k], "shape")
              and tuple(got[k].shape) != tuple(want[k].shape)]
    return missing, unexpected, shapes


def _diff(a: Mapping, b: Mapping, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif json.dumps(va, sort_keys=True, default=str) != json.dumps(vb, sort_keys=True,
                                                                        default=str):
            out.append(f"{prefix}{k}")
    return out


def _versions() -> dict[str, str]:
    from ..run import versions

    return {k: str(v) for k, v in versions().items()}
