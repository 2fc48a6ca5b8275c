"""Key slices as detector inputs: 3-slice context, spacing-normalised, windowed, augmented.

One item is one key slice (a DeepLesion image can hold several annotated lesions). Its image is
the key slice with its neighbours at ``slice_spacing_mm`` above and below as the 3 channels
(:class:`~deeplesion_lab.transforms.LoadContext`), resampled in-plane to ``spacing_mm`` per
pixel (scaled down further only when the result would not fit the ``image_size`` canvas),
windowed to [0, 1] and padded at the right and bottom to a square ``image_size`` canvas, so
that a box maps back to the original pixels by one scale factor.

Training augmentation: random rescaling (``scale_range``), left-right flips and intensity
jitter (:class:`~deeplesion_lab.transforms.RandomFlip`,
:class:`~deeplesion_lab.transforms.IntensityJitter`), drawn from ``(seed, epoch, item)`` so that
a resumed training sees the same images as an uninterrupted one.

Missing annotations
-------------------
DeepLesion annotates one or a few lesions per key slice; other lesions on the same slice are
unmarked, and a detector trained naively learns them as background (hard negatives). The
strategy here is to turn every *known* unannotated lesion into an **ignore region**: a target
box with label ``-1``, which the network (:mod:`deeplesion_lab.detection.model`) leaves out of
both the positive and the negative samples. Known unannotated lesions are:

- ``neighbours``: lesions of the same series annotated on another key slice whose distance
  along the body axis is within ``neighbour_factor`` x their radius (half their short
  diameter, in mm), so they very likely also cross this slice, at about the same place;
- noisy lesions (``Possibly_noisy``) and lesions without a label (multi-class training);
- mined boxes (``ignore_boxes``): e.g. confident detections of a first model on training
  slices that overlap no annotation (:func:`mined_ignore_boxes`).

Torchvision has no ignore regions of its own; adding them as positive pseudo-boxes instead would
teach unverified boxes as truth, and down-weighting needs a custom loss, so ignoring is the
least assuming choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..dl_info import BOX_COLUMNS
from ..errors import LabError
from ..images import ImageError, key_slice_path, missing_context_line
from ..transforms import IntensityJitter, LoadContext, RandomFlip, Window

__all__ = [
    "DatasetError",
    "KeySliceDataset",
    "neighbour_ignore_boxes",
    "mined_ignore_boxes",
    "collate",
    "check_images",
]

BOX_COLS = list(BOX_COLUMNS)


class DatasetError(LabError, ValueError):
    """Detector data that cannot be used (missing images, nothing to train on)."""


def check_images(lesions: pd.DataFrame, images_root: str | Path) -> None:
    """Raise a clear error if key slices are missing on disk (nothing has been written yet)."""
    root = Path(images_root)
    if not root.is_dir():
        raise DatasetError(f"{root}: images folder not found")
    files = lesions.drop_duplicates("file_name")
    missing = [
        (f, lid)
        for f, lid in zip(files["file_name"], files["lesion_id"], strict=True)
        if not key_slice_path(root, f).is_file()
    ]
    if missing:
        f, lid = missing[0]
        raise DatasetError(
            f"{len(missing)} of {len(files)} key slices are missing under {root}; first: "
            f"{key_slice_path(root, f)} (lesion {lid}, file_name {f})"
        )


def _series_key(df: pd.DataFrame) -> pd.Series:
    return (
        df["patient_index"].astype(str)
        + "_"
        + df["study_index"].astype(str)
        + "_"
        + df["series_id"].astype(str)
    )


def neighbour_ignore_boxes(
    lesions: pd.DataFrame, context: pd.DataFrame, factor: float = 1.0
) -> dict[str, np.ndarray]:
    """Boxes of lesions annotated on nearby slices of the same series, per key slice.

    Parameters
    ----------
    lesions : pandas.DataFrame
        The lesions whose key slices are the images.
    context : pandas.DataFrame
        All known lesions (usually the whole manifest).
    factor : float, default 1
        A lesion counts as crossing a slice when their distance is at most ``factor`` x its
        radius (half its short diameter in mm).

    Returns
    -------
    dict
        ``file_name -> (K, 4)`` boxes (only images that have some).
    """
    if factor <= 0 or context.empty:
        return {}
    ctx = context.assign(_series=_series_key(context))
    files = lesions.drop_duplicates("file_name").assign(
        _series=_series_key(lesions.drop_duplicates("file_name"))
    )
    by_series = {s: g for s, g in ctx.groupby("_series", sort=False)}
    out: dict[str, np.ndarray] = {}
    for f, s, k in zip(files["file_name"], files["_series"], files["key_slice_index"], strict=True):
        g = by_series.get(s)
        if g is None:
            continue
        dz = (g["key_slice_index"].to_numpy() - int(k)) * g["spacing_z"].to_numpy()
        radius = 0.5 * g["short_diameter_px"].to_numpy() * g["spacing_x"].to_numpy()
        near = (g["file_name"].to_numpy() != f) & (np.abs(dz) <= factor * radius)
        if near.any():
            out[f] = g.loc[near, BOX_COLS].to_numpy(dtype=np.float32)
    return out


def mined_ignore_boxes(
    predictions: pd.DataFrame,
    lesions: pd.DataFrame,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.3,
) -> dict[str, np.ndarray]:
    """Confident detections on key slices that match no annotated lesion: likely unannotated.

    Parameters
    ----------
    predictions : pandas.DataFrame
        A detector's predictions (``file_name, x1, y1, x2, y2, score``) on training slices.
    lesions : pandas.DataFrame
        The annotated lesions.
    score_threshold : float, default 0.5
        Minimum score of a mined box.
    iou_threshold : float, default 0.3
        A detection overlapping an annotation by this much is that annotation, not a new one.
    """
    from .froc import box_iou

    pred = predictions[predictions["score"] >= score_threshold]
    gt = {f: g[BOX_COLS].to_numpy(dtype=np.float64) for f, g in lesions.groupby("file_name")}
    out: dict[str, list] = {}
    for f, g in pred.groupby("file_name"):
        if f not in gt:
            continue
        for b in g[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64):
            if box_iou(b, gt[f]).max() < iou_threshold:
                out.setdefault(f, []).append(b)
    return {f: np.asarray(v, dtype=np.float32).reshape(-1, 4) for f, v in out.items()}


class KeySliceDataset(torch.utils.data.Dataset):
    """Key slices of a set of lesions, as (image, target, meta) for torchvision detectors.

    Parameters
    ----------
    lesions : pandas.DataFrame
        Manifest rows; each distinct ``file_name`` is one item.
    images_root : str or pathlib.Path
        The ``Images_png`` folder.
    class_index : mapping, optional
        ``lesion_id -> class index`` (1..K; -1 makes the lesion an ignore region, 0 drops it:
        background). ``None`` gives every lesion class 1.
    ignore_boxes : mapping, optional
        ``file_name -> (K, 4)`` extra ignore regions (e.g. from :func:`mined_ignore_boxes`).
    context : pandas.DataFrame, optional
        Lesions for the ``neighbours`` strategy (default: ``lesions``).
    unannotated : {"neighbours", "none"}, default "neighbours"
        Whether to add known unannotated lesions as ignore regions.
    neighbour_factor : float, default 1
    image_size : int, default 512
    spacing_mm : float, default 0.8
        In-plane pixel size after resampling.
    slice_spacing_mm : float, default 2
        Distance between the 3 context slices.
    n_slices : int, default 3
    window : str or (low, high), default "wide"
        The window (see :class:`~deeplesion_lab.transforms.Window`).
    augment : bool, default False
    scale_range : (float, float), default (0.85, 1.15)
    crop : int, optional
        Train on ``crop`` x ``crop`` windows of the (augmented) image instead of the whole
        canvas: about ``(image_size / crop)^2`` times less work per image, so many more
        steps for the same CPU time. A window is centred near an annotated lesion with
        probability ``crop_lesion_p`` (uniformly placed otherwise); a lesion the window cuts
        so that less than 60 % of its box remains becomes an ignore region.
    crop_lesion_p : float, default 0.75
    slice_jitter_mm : float, default 0
        Training augmentation along the body axis (with ``augment``): each time an item is
        drawn, its 3-slice context is centred on a slice up to this many mm above or below the
        key slice (a whole number of the series' slices, drawn uniformly), with the key
        slice's boxes. The shift is limited to 0.4 x the radius (half the box's shorter side)
        of the smallest annotated lesion of the slice, so that each lesion still crosses the
        shifted slice with at least about 90 % of its key-slice diameter; items where no whole
        slice fits are not shifted. The other slices of the volumes give new backgrounds and
        lesion cross-sections from the same annotations. 0: off.
    copy_paste : int, default 0
        Copy-paste augmentation (Ghiasi et al. 2021, "Simple Copy-Paste"; training with
        ``augment`` only): each time an item is drawn, up to this many lesions (a number drawn
        uniformly from 0 to ``copy_paste``) of *other* training key slices are pasted into its
        image, with their boxes and classes (:meth:`_paste`). A pasted lesion is an elliptical
        patch around its box (its 3 context slices), with edges blended softly into the new
        background, rescaled like the image and by its own draw from ``scale_range``, flipped
        left-right at random, and placed where it covers body, not air (the windowed middle
        slice under the patch is above 0.1 on average and at 0 on less than 5 % of it: with
        the soft-tissue window, denser than about -120 HU) and overlaps no box (lesion or ignore
        region) of the image. Up to 20 positions are tried per lesion; one that fits nowhere is
        not pasted. 0: off.
    paste_scale_range : (float, float), optional
        The range of a pasted lesion's own rescaling (drawn log-uniformly), instead of
        ``scale_range``: a wide range gives the detector lesion sizes its training slices
        lack. None: ``scale_range`` (drawn uniformly).
    paste_classes : bool, default True
        Whether pasted lesions train the class head. A pasted lesion lands on another body
        region than its own, so its class no longer matches what surrounds it; with False its
        target keeps its box (lesion score and size) but a ``class_weight`` of 0 (targets then
        carry ``class_weight``, one value per box: 1 for the slice's own lesions).
    seed : int, default 0
    cache_mb : float, default 1024
        Memory for the preprocessed (un-augmented) images.
    check : bool, default True
        Check at once that every key slice exists (a :class:`DatasetError` otherwise).

    Attributes
    ----------
    missing_context : (N,) int16 array
        Neighbour slices missing on disk per item, counted when the item is read (``-1``: not
        read in this process yet); the nearest present slice of the series stands in, as
        :func:`~deeplesion_lab.images.load_context` does, with no warning per slice. Each
        item's ``meta`` carries its count, so that a process reading through DataLoader
        workers can collect them (:meth:`record_missing`); :meth:`context_summary` says it in
        one line.
    """

    def __init__(
        self,
        lesions: pd.DataFrame,
        images_root: str | Path,
        *,
        class_index: Mapping[str, int] | pd.Series | None = None,
        ignore_boxes: Mapping[str, np.ndarray] | None = None,
        context: pd.DataFrame | None = None,
        unannotated: str = "neighbours",
        neighbour_factor: float = 1.0,
        image_size: int = 512,
        spacing_mm: float = 0.8,
        slice_spacing_mm: float = 2.0,
        n_slices: int = 3,
        window: str | tuple[float, float] = "wide",
        augment: bool = False,
        scale_range: tuple[float, float] = (0.85, 1.15),
        crop: int | None = None,
        crop_lesion_p: float = 0.75,
        slice_jitter_mm: float = 0.0,
        copy_paste: int = 0,
        paste_scale_range: tuple[float, float] | None = None,
        paste_classes: bool = True,
        seed: int = 0,
        cache_mb: float = 1024.0,
        check: bool = True,
    ):
        if unannotated not in ("neighbours", "none"):
            raise DatasetError(f"unannotated must be 'neighbours' or 'none', not {unannotated!r}")
        if lesions.empty:
            raise DatasetError("no lesion (key slice) to load")
        self.images_root = Path(images_root)
        if check:
            check_images(lesions, self.images_root)
        self.lesions = lesions
        self.image_size = int(image_size)
        self.spacing_mm = float(spacing_mm)
        self.augment = augment
        self.scale_range = scale_range
        if crop is not None and not 32 <= int(crop) <= self.image_size:
            raise DatasetError(
                f"crop must be between 32 and image_size ({self.image_size}), not {crop}"
            )
        self.crop = int(crop) if crop is not None else None
        if int(copy_paste) < 0:
            raise DatasetError(
                f"copy_paste must be 0 (off) or a positive number of lesions, not {copy_paste}"
            )
        self.copy_paste = int(copy_paste)
        if paste_scale_range is not None and not (
            len(paste_scale_range) == 2 and 0 < paste_scale_range[0] <= paste_scale_range[1]
        ):
            raise DatasetError(
                "paste_scale_range must be (smallest, largest) with 0 < smallest <= largest, "
                f"not {paste_scale_range!r}"
            )
        self.paste_scale_range = (
            tuple(float(v) for v in paste_scale_range) if paste_scale_range is not None else None
        )
        self.paste_classes = bool(paste_classes)
        self.crop_lesion_p = float(crop_lesion_p)
        self.seed = int(seed)
        self.epoch = 0
        self.cache_mb = cache_mb
        self._cache: dict[tuple[int, int], tuple[np.ndarray, float]] = {}
        self._cache_bytes = 0
        self._load = LoadContext(
            self.images_root, n_slices=n_slices, target_spacing_mm=slice_spacing_mm
        )
        self._window = Window(window)

        groups = {f: g for f, g in lesions.groupby("file_name", sort=True)}
        self.file_names: list[str] = list(groups)
        self.rows: list[dict] = [groups[f].iloc[0].to_dict() for f in self.file_names]
        self.missing_context = np.full(len(self.file_names), -1, dtype=np.int16)
        neigh = (
            neighbour_ignore_boxes(
                lesions, context if context is not None else lesions, neighbour_factor
            )
            if unannotated == "neighbours"
            else {}
        )
        self.boxes: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.n_ignore = 0
        for f in self.file_names:
            g = groups[f]
            b = g[BOX_COLS].to_numpy(dtype=np.float32)
            if class_index is None:
                lab = np.ones(len(g), dtype=np.int64)
            else:
                ci = class_index if isinstance(class_index, pd.Series) else pd.Series(class_index)
                lab = np.array(ci.reindex(g["lesion_id"].astype(str)).fillna(-1), dtype=np.int64)
            noisy = g["possibly_noisy"].astype(int).to_numpy() == 1
            lab[noisy] = -1
            keep = lab != 0  # "not a lesion": no target at all, its region is background
            b, lab = b[keep], lab[keep]
            extra = [x for x in (neigh.get(f), (ignore_boxes or {}).get(f)) if x is not None]
            if extra:
                e = np.concatenate(extra).astype(np.float32).reshape(-1, 4)
                b = np.concatenate([b, e])
                lab = np.concatenate([lab, np.full(len(e), -1, dtype=np.int64)])
            self.n_ignore += int((lab < 0).sum())
            self.boxes.append(b)
            self.labels.append(lab)
        # largest slice shift of each item (slice_jitter_mm): 0.4 x the smallest lesion radius
        self.slice_jitter_mm = float(slice_jitter_mm)
        self.max_shift = np.zeros(len(self.file_names), dtype=np.int64)
        if self.slice_jitter_mm > 0:
            for k, (row, b, lab) in enumerate(zip(self.rows, self.boxes, self.labels, strict=True)):
                real = b[lab > 0]
                dz = float(row.get("spacing_z") or 0)
                if not len(real) or dz <= 0:
                    continue
                r_mm = float(
                    np.min(np.minimum(real[:, 2] - real[:, 0], real[:, 3] - real[:, 1]))
                    / 2
                    * float(row["spacing_x"])
                )
                self.max_shift[k] = int(np.floor(min(self.slice_jitter_mm, 0.4 * r_mm) / dz))
        # the lesions copy-paste can take: (item, box index) of every real lesion
        self.paste_sources = [
            (k, j)
            for k, lab in enumerate(self.labels)
            for j in np.flatnonzero(lab > 0).tolist()
        ]

    def __len__(self) -> int:
        return len(self.file_names)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of an epoch."""
        self.epoch = int(epoch)

    def record_missing(self, metas) -> None:
        """Take the missing-context counts of items read elsewhere (their ``meta`` dicts, e.g.
        from DataLoader workers) into :attr:`missing_context`."""
        for m in metas:
            if int(m.get("missing_context", -1)) >= 0:
                self.missing_context[int(m["index"])] = int(m["missing_context"])

    def context_summary(self) -> str | None:
        """One line on the context slices missing on disk among the items read (None: none
        was), e.g. ``context slices: 3 of 40 key slices lacked 6 neighbour slices on disk;
        the nearest present slice of the series stood in``."""
        return missing_context_line(self.missing_context, "key slices")

    def _shift(self, i: int) -> int:
        """Slices the context of item ``i`` is moved by in this epoch (``slice_jitter_mm``)."""
        k = int(self.max_shift[i])
        if not (self.augment and k > 0):
            return 0
        row = self.rows[i]
        key = int(row["key_slice_index"])
        lo = max(-k, int(row["slice_start"]) - key)
        hi = min(k, int(row["slice_end"]) - key)
        if hi < lo:
            return 0
        return int(np.random.default_rng([self.seed, self.epoch, i, 2]).integers(lo, hi + 1))

    def _base(self, i: int, shift: int = 0) -> tuple[np.ndarray, float]:
        """Windowed context image at the base scale, and that scale (cached); ``shift``: the
        context centred that many slices away from the key slice."""
        if (i, shift) in self._cache:
            return self._cache[(i, shift)]
        row = self.rows[i]
        if shift:
            row = {**row, "key_slice_index": int(row["key_slice_index"]) + int(shift)}
        try:
            sample = self._load({"row": row})
        except ImageError as exc:
            raise DatasetError(f"lesion {row['lesion_id']}: {exc}") from exc
        if not shift:
            self.missing_context[i] = len(sample.get("substituted_slices", ()))
        img = sample["image"]
        h, w = img.shape[-2:]
        scale = float(row["spacing_x"]) / self.spacing_mm
        scale = min(scale, self.image_size / max(h, w))
        t = torch.from_numpy(np.ascontiguousarray(img))[None]
        if abs(scale - 1.0) > 1e-6:
            t = F.interpolate(
                t,
                scale_factor=scale,
                mode="bilinear",
                align_corners=False,
                recompute_scale_factor=False,
            )
        out = self._window({"image": t[0].numpy(), "row": row})["image"].astype(np.float16)
        nbytes = out.nbytes
        if self._cache_bytes + nbytes <= self.cache_mb * 2**20:
            self._cache[(i, shift)] = (out, scale)
            self._cache_bytes += nbytes
        return out, scale

    def __getitem__(self, i: int):
        base, scale = self._base(i, self._shift(i))
        boxes = self.boxes[i] * scale
        labels = self.labels[i].copy()
        if self.crop is not None:
            return self._window_item(i, base, scale, boxes, labels)
        img = base.astype(np.float32)
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            s = float(rng.uniform(*self.scale_range))
            s = min(s, self.image_size / max(img.shape[-2:]))
            if abs(s - 1.0) > 1e-6:
                t = F.interpolate(
                    torch.from_numpy(img)[None],
                    scale_factor=s,
                    mode="bilinear",
                    align_corners=False,
                    recompute_scale_factor=False,
                )
                img = t[0].numpy()
                boxes = boxes * s
                scale *= s
            if self.copy_paste:
                h, w = img.shape[-2:]
                n_own = len(labels)
                img, boxes, labels = self._paste(i, img, boxes, labels, s, h, w)
            sample = {"image": img, "boxes": boxes}
            sample = RandomFlip(p=0.5, seed=int(rng.integers(2**31)))(sample)
            sample = IntensityJitter(seed=int(rng.integers(2**31)))(sample)
            img, boxes = sample["image"], sample["boxes"]
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
        side = self.image_size
        h, w = img.shape[-2:]
        canvas = np.zeros((img.shape[0], side, side), dtype=np.float32)
        canvas[:, :h, :w] = img[:, :side, :side]
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, min(w, side))
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, min(h, side))
        ok = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        target = {
            "boxes": torch.from_numpy(boxes[ok]),
            "labels": torch.from_numpy(labels[ok]),
        }
        if self.augment and self.copy_paste and not self.paste_classes:
            target["class_weight"] = _own_weight(len(labels), n_own)[torch.from_numpy(ok)]
        meta = {
            "file_name": self.file_names[i],
            "scale": scale,
            "index": i,
            "missing_context": int(self.missing_context[i]),
        }
        return torch.from_numpy(canvas), target, meta

    def _window_item(
        self, i: int, base: np.ndarray, scale: float, boxes: np.ndarray, labels: np.ndarray
    ):
        """A training window, resampled from the cached image at the window only.

        The same draws as rescaling, flipping and jittering the whole image and then cutting
        the window (:meth:`_crop`), but the work is that of one ``crop`` x ``crop`` window:
        the window is placed on the rescaled image's geometry first, then only its pixels
        are sampled (bilinear, as the whole-image rescaling), flipped within the window and
        jittered. Pixels outside the image are 0, as the canvas padding.
        """
        c = int(self.crop)
        h0, w0 = base.shape[-2:]
        s = 1.0
        rng = None
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            s = float(rng.uniform(*self.scale_range))
            s = min(s, self.image_size / max(h0, w0))
            if abs(s - 1.0) <= 1e-6:
                s = 1.0
        h, w = (int(np.floor(h0 * s)), int(np.floor(w0 * s))) if s != 1.0 else (h0, w0)
        boxes = np.asarray(boxes * s, dtype=np.float32).reshape(-1, 4)
        x0, y0, boxes, labels = self._place(boxes, labels, h, w, i)
        img = resample_window(base, s, x0, y0, c)
        vh, vw = max(0, min(c, h - y0)), max(0, min(c, w - x0))  # the window's image part
        n_own = len(labels)
        if rng is not None:
            if self.copy_paste:
                img, boxes, labels = self._paste(i, img, boxes, labels, s, vh, vw)
            sample = {"image": img, "boxes": boxes}
            flip_seed, jitter_seed = int(rng.integers(2**31)), int(rng.integers(2**31))
            sample = IntensityJitter(seed=jitter_seed)(sample)
            img = sample["image"]
            img[:, vh:, :] = 0.0
            img[:, :, vw:] = 0.0
            sample = RandomFlip(p=0.5, seed=flip_seed)(sample)
            img, boxes = sample["image"], sample["boxes"]
        else:
            img[:, vh:, :] = 0.0
            img[:, :, vw:] = 0.0
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, c)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, c)
        ok = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        target = {"boxes": torch.from_numpy(boxes[ok]), "labels": torch.from_numpy(labels[ok])}
        if rng is not None and self.copy_paste and not self.paste_classes:
            target["class_weight"] = _own_weight(len(labels), n_own)[torch.from_numpy(ok)]
        meta = {
            "file_name": self.file_names[i],
            "scale": scale * s,
            "index": i,
            "missing_context": int(self.missing_context[i]),
        }
        return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)), target, meta

    def _paste(
        self,
        i: int,
        img: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        s: float,
        vh: int,
        vw: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copy-paste augmentation of item ``i`` (see ``copy_paste`` in the class docstring).

        Parameters
        ----------
        i : int
            The item whose (rescaled, possibly windowed) image ``img`` is.
        img : (C, H, W) float array
            The image, changed in place and returned.
        boxes, labels : arrays
            Its boxes (in ``img``'s pixels) and labels; pasted lesions are appended.
        s : float
            The item's augmentation scale (the pasted lesions are rescaled by it too).
        vh, vw : int
            Height and width of the part of ``img`` that is image (not padding).

        Returns
        -------
        img, boxes, labels
        """
        rng = np.random.default_rng([self.seed, self.epoch, i, 3])
        n = int(rng.integers(0, self.copy_paste + 1))
        sources = [src for src in self.paste_sources if src[0] != i]
        if n == 0 or not sources or vh < 8 or vw < 8:
            return img, boxes, labels
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        taken = [b for b in boxes]
        new_b, new_l = [], []
        for pick in rng.choice(len(sources), size=min(n, len(sources)), replace=False):
            k, j = sources[int(pick)]
            if self.paste_scale_range is None:
                own = float(rng.uniform(*self.scale_range))
            else:
                lo, hi = self.paste_scale_range
                own = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
            patch, alpha, box = self._paste_patch(k, j, s * own)
            flip = bool(rng.random() < 0.5)
            ph, pw = alpha.shape
            if ph >= vh or pw >= vw:
                continue
            if flip:
                patch, alpha = patch[:, :, ::-1], alpha[:, ::-1]
                box = np.array([pw - box[2], box[1], pw - box[0], box[3]], dtype=np.float32)
            for _ in range(20):
                x0 = int(rng.integers(0, vw - pw + 1))
                y0 = int(rng.integers(0, vh - ph + 1))
                region = np.array([x0, y0, x0 + pw, y0 + ph], dtype=np.float32)
                if any(_overlaps(region, b) for b in taken):
                    continue
                under = img[img.shape[0] // 2, y0 : y0 + ph, x0 : x0 + pw]
                inside = alpha > 0.5
                if under[inside].mean() <= 0.1 or (under[inside] <= 0).mean() >= 0.05:
                    continue
                dst = img[:, y0 : y0 + ph, x0 : x0 + pw]
                dst[...] = alpha * patch + (1 - alpha) * dst
                nb = box + np.array([x0, y0, x0, y0], dtype=np.float32)
                taken.append(region)
                new_b.append(nb)
                new_l.append(int(self.labels[k][j]))
                break
        if new_b:
            boxes = np.concatenate([boxes, np.asarray(new_b, dtype=np.float32)])
            labels = np.concatenate([labels, np.asarray(new_l, dtype=labels.dtype)])
        return img, boxes, labels

    def _paste_patch(self, k: int, j: int, s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Lesion ``j`` of item ``k`` as a patch for :meth:`_paste`, rescaled by ``s``.

        Returns the ``(C, h, w)`` patch, its ``(h, w)`` blending weights (1 within 1.1 x the
        lesion's half-axes from its centre, falling linearly to 0 at 1.6 x) and the lesion's box
        in the patch's pixels.
        """
        base, scale = self._base(k)
        b = self.boxes[k][j] * scale
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        ax, ay = max((b[2] - b[0]) / 2, 1.0), max((b[3] - b[1]) / 2, 1.0)
        # the patch spans 1.6 x the half-axes around the centre, in the rescaled image's pixels
        hw, hh = max(int(np.ceil(1.6 * ax * s)), 2), max(int(np.ceil(1.6 * ay * s)), 2)
        pw, ph = 2 * hw, 2 * hh
        xs = (np.arange(pw, dtype=np.float32) + 0.5 - hw) / s + cx
        ys = (np.arange(ph, dtype=np.float32) + 0.5 - hh) / s + cy
        h0, w0 = base.shape[-2:]
        patch = _sample(base, xs / w0 * 2 - 1, ys / h0 * 2 - 1)
        rx = (xs - cx) / ax
        ry = (ys - cy) / ay
        r = np.sqrt(rx[None, :] ** 2 + ry[:, None] ** 2)
        alpha = np.clip((1.6 - r) / 0.5, 0.0, 1.0).astype(np.float32)
        box = np.array(
            [hw - ax * s, hh - ay * s, hw + ax * s, hh + ay * s], dtype=np.float32
        )
        return patch, alpha, box

    def _place(self, boxes: np.ndarray, labels: np.ndarray, h: int, w: int, i: int):
        """Window corner on an ``h`` x ``w`` image, the boxes in it, cut lesions ignored."""
        c = self.crop
        rng = np.random.default_rng([self.seed, self.epoch, i, 1])
        pos = np.flatnonzero(labels > 0)
        if len(pos) and rng.random() < self.crop_lesion_p:
            b = boxes[rng.choice(pos)]
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            x0 = cx - c / 2 + rng.uniform(-0.35, 0.35) * c
            y0 = cy - c / 2 + rng.uniform(-0.35, 0.35) * c
        else:
            x0, y0 = rng.uniform(0, max(w - c, 0)), rng.uniform(0, max(h - c, 0))
        x0 = int(np.clip(round(x0), 0, max(w - c, 0)))
        y0 = int(np.clip(round(y0), 0, max(h - c, 0)))
        boxes = boxes - np.array([x0, y0, x0, y0], dtype=np.float32)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        cut = boxes.copy()
        cut[:, [0, 2]] = cut[:, [0, 2]].clip(0, min(c, w))
        cut[:, [1, 3]] = cut[:, [1, 3]].clip(0, min(c, h))
        kept = (cut[:, 2] - cut[:, 0]).clip(0) * (cut[:, 3] - cut[:, 1]).clip(0)
        labels = labels.copy()
        labels[(labels > 0) & (kept < 0.6 * np.maximum(area, 1e-6))] = -1
        return x0, y0, boxes, labels


def _overlaps(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two ``x1, y1, x2, y2`` boxes share any area."""
    return bool(min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1]))


def resample_window(base: np.ndarray, s: float, x0: int, y0: int, c: int) -> np.ndarray:
    """The ``c`` x ``c`` window at ``(x0, y0)`` of ``base`` rescaled by ``s``, float32.

    The same pixels as bilinear ``F.interpolate(base, scale_factor=s)`` (no corner alignment)
    cut at the window, computed for the window only; outside the rescaled image the values
    are unspecified (the caller zeroes them).
    """
    if s == 1.0:
        img = np.zeros((base.shape[0], c, c), dtype=np.float32)
        part = base[:, y0 : y0 + c, x0 : x0 + c]
        img[:, : part.shape[1], : part.shape[2]] = part
        return img
    h0, w0 = base.shape[-2:]
    # output pixel X of the rescaled image samples base at (X + 0.5) / s - 0.5
    xs = (np.arange(x0, x0 + c, dtype=np.float32) + 0.5) / s / w0 * 2 - 1
    ys = (np.arange(y0, y0 + c, dtype=np.float32) + 0.5) / s / h0 * 2 - 1
    return _sample(base, xs, ys)


def _sample(base: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """``base`` (C, H, W) sampled bilinearly at the grid of columns ``gx`` x rows ``gy``
    (normalised coordinates, -1 to 1 across the image, no corner alignment, border padding):
    a ``(C, len(gy), len(gx))`` float32 array."""
    grid = torch.from_numpy(np.stack(np.meshgrid(gx, gy), -1).astype(np.float32))[None]
    return F.grid_sample(
        torch.from_numpy(base.astype(np.float32))[None],
        grid,
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )[0].numpy()


def collate(batch):
    """Batch as three lists (images, targets, metas), as torchvision detectors take them."""
    images, targets, metas = zip(*batch, strict=True)
    return list(images), list(targets), list(metas)


def _own_weight(n: int, n_own: int) -> torch.Tensor:
    """Class weight per box: 1 for the first ``n_own`` (the slice's own), 0 for pasted ones."""
    w = torch.zeros(n, dtype=torch.float32)
    w[:n_own] = 1.0
    return w
