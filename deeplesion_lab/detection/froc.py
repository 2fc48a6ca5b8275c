"""The official DeepLesion detection evaluation: FROC and sensitivity at 0.5-16 FPs per image.

The protocol follows the evaluation code released with the DeepLesion detectors by its authors
(Ke Yan, NIH Clinical Center: ``sens_at_FP`` / ``FROC`` in 3DCE and MULAN,
``rsummers11/CADLab``, ``MULAN_universal_lesion_analysis/maskrcnn/data/datasets/evaluation/
DeepLesion/detection_eval.py``):

1. Ground truth is the 2-D box of every lesion on its key slice; the evaluated images are the
   key slices of the split (one image may hold several lesions).
2. All detections of all images are sorted by score, highest first, and taken in that order.
3. A detection whose IoU with some ground-truth box of *its* image is at least 0.5 hits every
   such box not hit before; if all of them were already hit it is a duplicate, counted neither
   as a hit nor as a false positive. A detection that overlaps no ground-truth box by 0.5 is a
   false positive.
4. IoU uses the inclusive pixel convention of that code (``width = x2 - x1 + 1``).
5. Sensitivity = hits / ground-truth lesions; FPs per image = false positives / images.
6. Sensitivity at ``f`` FPs per image interpolates that curve linearly (``scipy``'s
   ``interp1d``, which delegates to ``numpy.interp``) at ``f``; beyond the last detection it is
   the final sensitivity. Because the curve is flat between consecutive false positives and
   ``numpy.interp`` takes the last of several points with the same abscissa, this equals the
   best sensitivity of a score threshold that keeps **at most** ``f x images`` false positives,
   which is how it is computed here: exactly, and without the release's failure when the first
   detection is a false positive and ``f x images < 1`` (the sensitivity is then 0). (3DCE's
   older copy passes ``fill_value='extrapolate'``, which makes scipy use its own search and
   take *fewer than* ``f x images``; MULAN's, followed here, does not.)
7. The reported summary is the mean sensitivity at 0.5, 1, 2 and 4 FPs per image.

Possibly-noisy lesions (``Possibly_noisy = 1``): the release drops them from the split before
evaluating, so an image whose lesions are all noisy is not evaluated, and on an image that also
has clean lesions a detection of the noisy lesion counts as a false positive. Here
``noisy="ignore"`` (the default) also drops those images but turns noisy boxes into *ignore
regions*: a detection that hits no clean lesion but overlaps a noisy one by IoU >= 0.5 is
neither a hit nor a false positive. ``noisy="drop"`` reproduces the release exactly. The two
differ only on images with both noisy and clean lesions; the official test split has none (its
15 noisy lesions are alone on their key slices), so both give the release's numbers there.

Ties in score are taken in input order (a stable sort); the release's ``argsort`` leaves their
order unspecified.

Per-class sensitivity (``per_class``): the detector is evaluated class-agnostically as above;
the sensitivity of a class is the fraction of that class's lesions hit at the same operating
points (the score threshold giving ``f`` FPs per image overall), as the DeepLesion papers break
the universal detector's sensitivity down by lesion type.

Class-aware evaluation (``class_aware``, for a multi-class detector whose class names are
lesion types): the same protocol, but a detection hits a lesion only when its ``label`` is the
lesion's type (a detection naming another type is a false positive, unless it overlaps an
ignore region); lesions without a known type are ignore regions. It measures what class labels,
and so corrections of them, change: the class-agnostic figure cannot see a wrong class.
``macro_sensitivity`` averages the per-class sensitivities over the types present.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ..boxes import box_iou
from ..errors import LabError

__all__ = [
    "FP_RATES",
    "PREDICTION_COLUMNS",
    "FROCError",
    "FROCCurve",
    "FROCResult",
    "box_iou",
    "froc",
    "evaluate_predictions",
    "read_predictions",
    "ground_truth",
    "fp_key",
    "UNTYPED",
    "names_lesion_types",
]

#: Class names of lesions without a known type (left out of the class-aware evaluation).
UNTYPED: frozenset[str] = frozenset({"", "unlabeled", "unknown", "<NA>", "nan", "None"})

#: The FP-per-image rates of the DeepLesion protocol.
FP_RATES: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)

#: The columns of a predictions CSV, in order.
PREDICTION_COLUMNS: tuple[str, ...] = ("file_name", "x1", "y1", "x2", "y2", "score", "label")

SPLIT_NAMES = ("train", "val", "test", "all")


class FROCError(LabError, ValueError):
    """Predictions or ground truth that cannot be evaluated."""


def fp_key(rate: float) -> str:
    """Key of an FP rate in ``metrics.json``: ``0.5 -> "0.5"``, ``4.0 -> "4"``."""
    return f"{rate:g}"


@dataclass
class FROCCurve:
    """The FROC curve of a set of detections: every operating point, in score order.

    Attributes
    ----------
    scores : numpy.ndarray
        Scores of the detections, in evaluation order (descending, stable).
    outcome : numpy.ndarray
        Per detection: ``"tp"`` (hit at least one new lesion), ``"fp"``, ``"dup"`` (only
        lesions already hit) or ``"ignored"`` (an ignore region such as a noisy lesion).
    tps, fps : numpy.ndarray
        Hits and false positives after the first ``k`` detections, ``k = 0..n`` (so
        ``tps[0] == fps[0] == 0``).
    n_images, n_gt : int
        Images evaluated and ground-truth lesions.
    gt_first_hit : numpy.ndarray
        Per lesion, the position (in evaluation order) of the detection that hit it first;
        ``n`` (past the end) for a lesion never hit.
    gt_class : numpy.ndarray
        Per lesion, its class (any labels; ``None`` entries when unknown).
    image_index : numpy.ndarray
        Per detection (evaluation order), the index of its image.
    gt_per_image : numpy.ndarray
        Ground-truth lesions of each image.
    """

    scores: np.ndarray
    outcome: np.ndarray
    tps: np.ndarray
    fps: np.ndarray
    n_images: int
    n_gt: int
    gt_first_hit: np.ndarray
    gt_class: np.ndarray
    image_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    gt_per_image: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def sensitivity(self) -> np.ndarray:
        """Sensitivity at each operating point (``len = n + 1``)."""
        return self.tps / max(self.n_gt, 1)

    @property
    def fp_per_image(self) -> np.ndarray:
        """False positives per image at each operating point (``len = n + 1``)."""
        return self.fps / max(self.n_images, 1)

    def operating_point(self, fp_rate: float) -> int:
        """Number of top detections kept at ``fp_rate`` FPs per image.

        The largest ``k`` whose false positives are at most ``fp_rate * n_images``.
        """
        limit = float(fp_rate) * self.n_images
        # fps is non-decreasing; the last index with fps <= limit
        return int(np.searchsorted(self.fps, limit, side="right")) - 1

    def sensitivity_at(self, fp_rates: Sequence[float] = FP_RATES) -> np.ndarray:
        """Sensitivity at each of ``fp_rates`` FPs per image."""
        sens = self.sensitivity
        return np.array([sens[self.operating_point(f)] for f in fp_rates], dtype=float)

    def class_sensitivity_at(
        self, fp_rates: Sequence[float] = FP_RATES
    ) -> dict[str, np.ndarray]:
        """Per class: the fraction of its lesions hit at each overall operating point."""
        out: dict[str, np.ndarray] = {}
        classes = pd.unique(pd.Series(self.gt_class, dtype=object).dropna())
        for c in classes:
            mask = self.gt_class == c
            hits = self.gt_first_hit[mask]
            out[str(c)] = np.array(
                [float(np.mean(hits < self.operating_point(f))) for f in fp_rates]
            )
        return out


def froc(
    detections: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    *,
    ignore: Sequence[np.ndarray] | None = None,
    gt_classes: Sequence[Sequence] | None = None,
    det_classes: Sequence[Sequence] | None = None,
    iou_threshold: float = 0.5,
) -> FROCCurve:
    """Build the FROC curve of detections against ground truth, image by image.

    Parameters
    ----------
    detections : sequence of numpy.ndarray
        One ``(N_i, 5)`` array per image: ``x1, y1, x2, y2, score``.
    gts : sequence of numpy.ndarray
        One ``(M_i, 4)`` array per image, the same images in the same order.
    ignore : sequence of numpy.ndarray, optional
        One ``(K_i, 4)`` array per image of ignore regions (e.g. noisy lesions): a detection
        that hits no lesion but overlaps one of them by ``iou_threshold`` is not a false
        positive.
    gt_classes : sequence of sequences, optional
        The class of each ground-truth box (for :meth:`FROCCurve.class_sensitivity_at`).
    det_classes : sequence of sequences, optional
        The class of each detection (one sequence per image, as ``detections``). When given
        (with ``gt_classes``), a detection can only hit ground-truth boxes of its own class:
        the class-aware curve.
    iou_threshold : float, default 0.5
        Minimum IoU of a hit.

    Returns
    -------
    FROCCurve
    """
    n_img = len(gts)
    if len(detections) != n_img:
        raise FROCError(f"{len(detections)} detection lists for {n_img} images")
    if ignore is not None and len(ignore) != n_img:
        raise FROCError(f"{len(ignore)} ignore lists for {n_img} images")
    gts = [np.asarray(g, dtype=np.float64).reshape(-1, 4) for g in gts]
    dets = [np.asarray(d, dtype=np.float64).reshape(-1, 5) for d in detections]
    ign = (
        [np.asarray(g, dtype=np.float64).reshape(-1, 4) for g in ignore]
        if ignore is not None
        else [np.zeros((0, 4))] * n_img
    )
    offsets = np.cumsum([0] + [len(g) for g in gts])
    n_gt = int(offsets[-1])
    if gt_classes is not None:
        cls = np.array([c for cs in gt_classes for c in cs], dtype=object)
        if len(cls) != n_gt:
            raise FROCError(f"{len(cls)} ground-truth classes for {n_gt} ground-truth boxes")
    else:
        cls = np.full(n_gt, None, dtype=object)
    dcls = None
    if det_classes is not None:
        if gt_classes is None:
            raise FROCError("det_classes needs gt_classes (the class of each ground-truth box)")
        if len(det_classes) != n_img:
            raise FROCError(f"{len(det_classes)} detection class lists for {n_img} images")
        for i, (c, d) in enumerate(zip(det_classes, dets, strict=True)):
            if len(c) != len(d):
                raise FROCError(f"image {i}: {len(c)} detection classes for {len(d)} detections")
        dcls = np.array([c for cs in det_classes for c in cs], dtype=object)

    img_idx = np.concatenate([np.full(len(d), i, dtype=np.int64) for i, d in enumerate(dets)]
                             or [np.zeros(0, dtype=np.int64)])
    boxes = np.concatenate(dets) if dets else np.zeros((0, 5))
    order = np.argsort(-boxes[:, 4], kind="stable")
    boxes, img_idx = boxes[order], img_idx[order]
    if dcls is not None:
        dcls = dcls[order]

    n = len(boxes)
    hit = np.zeros(n_gt, dtype=bool)
    first_hit = np.full(n_gt, n, dtype=np.int64)
    outcome = np.empty(n, dtype=object)
    tps = np.zeros(n + 1, dtype=np.int64)
    fps = np.zeros(n + 1, dtype=np.int64)
    n_hits = n_fp = 0
    for k in range(n):
        i = int(img_idx[k])
        g = gts[i]
        ov = box_iou(boxes[k, :4], g) if len(g) else np.zeros(0)
        if dcls is not None and len(ov):
            same = np.array([c == dcls[k] for c in cls[offsets[i] : offsets[i + 1]]], dtype=bool)
            ov = np.where(same, ov, 0.0)
        if len(ov) and ov.max() >= iou_threshold:
            new = np.flatnonzero((ov >= iou_threshold) & ~hit[offsets[i] : offsets[i + 1]])
            if len(new):
                gidx = offsets[i] + new
                hit[gidx] = True
                first_hit[gidx] = k
                n_hits += len(new)
                outcome[k] = "tp"
            else:
                outcome[k] = "dup"
        elif len(ign[i]) and box_iou(boxes[k, :4], ign[i]).max() >= iou_threshold:
            outcome[k] = "ignored"
        else:
            n_fp += 1
            outcome[k] = "fp"
        tps[k + 1] = n_hits
        fps[k + 1] = n_fp
    return FROCCurve(
        scores=boxes[:, 4].copy(),
        outcome=outcome,
        tps=tps,
        fps=fps,
        n_images=n_img,
        n_gt=n_gt,
        gt_first_hit=first_hit,
        gt_class=cls,
        image_index=img_idx,
        gt_per_image=np.diff(offsets).astype(np.int64),
    )


# ----------------------------------------------------------------------------------------------
# Predictions CSV and ground truth from a manifest


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Read a predictions CSV (``file_name, x1, y1, x2, y2, score, label``) and check it.

    Raises
    ------
    FROCError
        Missing file or column, a non-numeric or non-finite coordinate or score, or a box
        with ``x2 <= x1`` or ``y2 <= y1``; the message names the line and the field.
    """
    path = Path(path)
    if not path.is_file():
        raise FROCError(f"{path}: predictions file not found")
    try:
        df = pd.read_csv(path, dtype={"file_name": str, "label": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise FROCError(f"{path}: cannot be read as a predictions CSV ({exc})") from exc
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing:
        raise FROCError(
            f"{path}: missing column(s) {', '.join(missing)}; a predictions CSV has the columns "
            f"{', '.join(PREDICTION_COLUMNS)}"
        )
    df = df[list(PREDICTION_COLUMNS)].copy()
    for col in ("x1", "y1", "x2", "y2", "score"):
        num = pd.to_numeric(df[col], errors="coerce")
        bad = num.isna() | ~np.isfinite(num.astype(float))
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise FROCError(
                f"{path}: line {i + 2}, field {col}: {df[col].iloc[i]!r} is not a finite number "
                f"({int(bad.sum())} such rows)"
            )
        df[col] = num.astype(float)
    bad = (df["x2"] <= df["x1"]) | (df["y2"] <= df["y1"])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        r = df.iloc[i]
        raise FROCError(
            f"{path}: line {i + 2}, fields x1..y2: box ({r.x1:g}, {r.y1:g}, {r.x2:g}, {r.y2:g}) "
            f"of {r.file_name} is empty (needs x2 > x1 and y2 > y1)"
        )
    empty = df["file_name"].str.strip() == ""
    if empty.any():
        raise FROCError(
            f"{path}: line {int(np.flatnonzero(empty.to_numpy())[0]) + 2}, field file_name: empty"
        )
    return df


def _split_rows(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    """Rows of a split name, ``"all"``, or several joined by ``+`` (``"val+test"``)."""
    from ..lesion_types import split_codes

    try:
        codes = split_codes(split)
    except ValueError:
        raise FROCError(
            f"unknown split {split!r}; expected one of {', '.join(SPLIT_NAMES)} (or a join such "
            "as val+test)"
        ) from None
    return manifest if codes is None else manifest[manifest["split"].isin(codes)]


@dataclass
class GroundTruth:
    """Key-slice ground truth of one split, per image."""

    file_names: list[str]
    boxes: list[np.ndarray]
    classes: list[list[str]]
    lesion_ids: list[list[str]]
    ignore: list[np.ndarray]
    n_noisy: int
    n_noisy_only_images: int
    noisy_only_files: set[str] = field(default_factory=set)


def ground_truth(
    manifest: pd.DataFrame,
    split: str = "test",
    *,
    noisy: Literal["ignore", "drop"] = "ignore",
    class_column: str = "coarse_type_name",
) -> GroundTruth:
    """Ground-truth boxes of a split's key slices, grouped by image.

    Parameters
    ----------
    manifest : pandas.DataFrame
        A lesion manifest (``file_name``, ``bbox_*``, ``possibly_noisy``, ``split``).
    split : {"test", "val", "train", "all"}
    noisy : {"ignore", "drop"}
        Noisy lesions as ignore regions, or dropped as in the release (see module docstring).
    class_column : str
        Column giving each lesion's class for per-class sensitivity.
    """
    if noisy not in ("ignore", "drop"):
        raise FROCError(f"noisy must be 'ignore' or 'drop', not {noisy!r}")
    rows = _split_rows(manifest, split)
    is_noisy = rows["possibly_noisy"].astype(int).to_numpy() == 1
    clean = rows[~is_noisy]
    noisy_rows = rows[is_noisy]
    files = sorted(clean["file_name"].unique())
    noisy_only = set(noisy_rows["file_name"]) - set(files)
    bcols = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]

    def by_file(df: pd.DataFrame):
        """Rows grouped by file name as numpy slices (pandas groupby per image is slow)."""
        order = np.argsort(df["file_name"].to_numpy(dtype=str), kind="stable")
        names = df["file_name"].to_numpy(dtype=str)[order]
        cuts = np.flatnonzero(names[1:] != names[:-1]) + 1
        starts = np.r_[0, cuts] if len(names) else np.zeros(0, dtype=int)
        ends = np.r_[cuts, len(names)] if len(names) else np.zeros(0, dtype=int)
        return {names[a]: order[a:b] for a, b in zip(starts, ends, strict=True)}

    c_idx, n_idx = by_file(clean), by_file(noisy_rows)
    c_boxes = clean[bcols].to_numpy(dtype=np.float64)
    c_cls = (clean[class_column].astype(str).to_numpy() if class_column in clean
             else np.full(len(clean), None, dtype=object))
    c_ids = clean["lesion_id"].astype(str).to_numpy()
    n_boxes = noisy_rows[bcols].to_numpy(dtype=np.float64)
    boxes, classes, ids, ignore = [], [], [], []
    for f in files:
        i = c_idx[f]
        boxes.append(c_boxes[i])
        classes.append(list(c_cls[i]))
        ids.append(list(c_ids[i]))
        if noisy == "ignore" and f in n_idx:
            ignore.append(n_boxes[n_idx[f]])
        else:
            ignore.append(np.zeros((0, 4)))
    return GroundTruth(
        file_names=files,
        boxes=boxes,
        classes=classes,
        lesion_ids=ids,
        ignore=ignore,
        n_noisy=int(is_noisy.sum()),
        n_noisy_only_images=len(noisy_only),
        noisy_only_files=noisy_only,
    )


@dataclass
class FROCResult:
    """Sensitivities of one detector on one split, ready for ``metrics.json``."""

    sensitivity: dict[str, float]
    mean_sensitivity_0_5_to_4: float
    per_class: dict[str, dict[str, float]]
    n_images: int
    n_lesions: int
    n_noisy_excluded: int
    n_detections: int
    n_detections_outside: int
    split: str
    iou_threshold: float
    noisy: str
    curve: FROCCurve
    class_aware: FROCResult | None = None

    def to_metrics(self) -> dict:
        """The JSON-able numbers (the curve itself is left out).

        ``class_aware`` (only for a detector whose labels name lesion types): the class-aware
        evaluation's ``sensitivity``, ``mean_sensitivity_0_5_to_4``, ``per_class``,
        ``macro_sensitivity`` (the mean of ``per_class`` over types) and ``n_lesions`` (the
        typed lesions).
        """
        out = {
            "sensitivity": dict(self.sensitivity),
            "mean_sensitivity_0_5_to_4": self.mean_sensitivity_0_5_to_4,
            "per_class": {k: dict(v) for k, v in self.per_class.items()},
            "n_images": self.n_images,
            "n_lesions": self.n_lesions,
            "n_noisy_excluded": self.n_noisy_excluded,
            "n_detections": self.n_detections,
            "n_detections_outside": self.n_detections_outside,
            "split": self.split,
            "iou_threshold": self.iou_threshold,
            "noisy": self.noisy,
        }
        if self.class_aware is not None:
            ca = self.class_aware
            out["class_aware"] = {
                "sensitivity": dict(ca.sensitivity),
                "mean_sensitivity_0_5_to_4": ca.mean_sensitivity_0_5_to_4,
                "per_class": {k: dict(v) for k, v in ca.per_class.items()},
                "macro_sensitivity": {
                    k: float(np.mean([v[k] for v in ca.per_class.values()]))
                    for k in ca.sensitivity
                } if ca.per_class else {},
                "n_lesions": ca.n_lesions,
            }
        return out

    def table(self) -> str:
        """A small text table: sensitivity at each FP rate and the 0.5-4 mean."""
        head = "FPs/image    " + "  ".join(f"{k:>6}" for k in self.sensitivity) + "   mean(0.5-4)"
        vals = "sensitivity  " + "  ".join(f"{v:6.3f}" for v in self.sensitivity.values())
        return f"{head}\n{vals}   {self.mean_sensitivity_0_5_to_4:11.3f}"


def evaluate_predictions(
    predictions: pd.DataFrame,
    manifest: pd.DataFrame,
    split: str = "test",
    *,
    iou_threshold: float = 0.5,
    fp_rates: Sequence[float] = FP_RATES,
    noisy: Literal["ignore", "drop"] = "ignore",
    class_aware: bool | None = None,
) -> FROCResult:
    """Score predictions against a manifest's key slices with the DeepLesion protocol.

    Parameters
    ----------
    predictions : pandas.DataFrame
        ``file_name, x1, y1, x2, y2, score`` (``label`` is not used: the evaluation is
        class-agnostic). Detections on images outside the split are left out and counted.
    manifest : pandas.DataFrame
        The lesions (a manifest, see :func:`deeplesion_lab.manifest.read_manifest`).
    split : {"test", "val", "train", "all"}, default "test"
    iou_threshold : float, default 0.5
    fp_rates : sequence of float, default (0.5, 1, 2, 4, 8, 16)
    noisy : {"ignore", "drop"}, default "ignore"
    class_aware : bool, optional
        Also run the class-aware evaluation (``result.class_aware``; see the module
        docstring) when some evaluated lesion has a known type (``coarse_type_name``).
        Default: when some prediction ``label`` names a lesion type
        (:func:`names_lesion_types`), i.e. for a multi-class detector of lesion types.

    Raises
    ------
    FROCError
        No clean lesion in the split; ``class_aware=True`` without a ``label`` column.
    """
    gt = ground_truth(manifest, split, noisy=noisy)
    if not gt.file_names:
        raise FROCError(
            f"no lesion to evaluate in split {split!r} of the manifest "
            f"({len(_split_rows(manifest, split))} rows, {gt.n_noisy} noisy)"
        )
    index = {f: i for i, f in enumerate(gt.file_names)}
    pos = predictions["file_name"].map(index)
    inside = pos.notna().to_numpy()
    dets: list[list[np.ndarray]] = [[] for _ in gt.file_names]
    sub = predictions[inside]
    arr = sub[["x1", "y1", "x2", "y2", "score"]].to_numpy(dtype=np.float64)
    for p, row in zip(pos[inside].astype(int).to_numpy(), arr, strict=True):
        dets[p].append(row)
    det_arrays = [np.array(d).reshape(-1, 5) for d in dets]
    ca_result = None
    if class_aware is None:
        class_aware = "label" in predictions and names_lesion_types(predictions["label"])
    typed = {str(c) for cs in gt.classes for c in cs} - UNTYPED
    if class_aware and typed:
        if "label" not in predictions:
            raise FROCError("class-aware evaluation needs a label column in the predictions")
        ca_result = _class_aware(sub, pos[inside].astype(int).to_numpy(), det_arrays, gt,
                                 split=split, iou_threshold=iou_threshold, fp_rates=fp_rates,
                                 noisy=noisy, n_outside=int((~inside).sum()))
    curve = froc(
        det_arrays,
        gt.boxes,
        ignore=gt.ignore,
        gt_classes=gt.classes,
        iou_threshold=iou_threshold,
    )
    sens_d, mean, per_class = _summary(curve, fp_rates)
    return FROCResult(
        sensitivity=sens_d,
        mean_sensitivity_0_5_to_4=mean,
        per_class=per_class,
        n_images=curve.n_images,
        n_lesions=curve.n_gt,
        n_noisy_excluded=gt.n_noisy,
        n_detections=int(inside.sum()),
        n_detections_outside=int((~inside).sum()),
        split=split,
        iou_threshold=float(iou_threshold),
        noisy=noisy,
        curve=curve,
        class_aware=ca_result,
    )


def names_lesion_types(labels) -> bool:
    """Whether some of ``labels`` (a detector's classes or predicted labels) is a coarse lesion
    type name (:data:`deeplesion_lab.lesion_types.COARSE_TYPES`), so that a class-aware
    evaluation means something."""
    from ..lesion_types import COARSE_TYPES

    return bool({str(x) for x in labels} & set(COARSE_TYPES.values()))


def _summary(curve: FROCCurve, fp_rates: Sequence[float]) -> tuple[dict, float, dict]:
    """Sensitivity per FP rate, their 0.5-4 mean, per-class sensitivities of a curve."""
    sens = curve.sensitivity_at(fp_rates)
    sens_d = {fp_key(f): float(s) for f, s in zip(fp_rates, sens, strict=True)}
    mean_rates = [f for f in fp_rates if f <= 4.0]
    mean = float(np.mean([sens_d[fp_key(f)] for f in mean_rates])) if mean_rates else float("nan")
    per_class = {
        c: {fp_key(f): float(s) for f, s in zip(fp_rates, v, strict=True)}
        for c, v in sorted(curve.class_sensitivity_at(fp_rates).items())
    }
    return sens_d, mean, per_class


def _class_aware(sub: pd.DataFrame, positions: np.ndarray, det_arrays: list[np.ndarray],
                 gt: GroundTruth, *, split: str, iou_threshold: float,
                 fp_rates: Sequence[float], noisy: str, n_outside: int) -> FROCResult:
    """The class-aware evaluation of :func:`evaluate_predictions` (untyped lesions ignored)."""
    labels: list[list[str]] = [[] for _ in gt.file_names]
    for p, lab in zip(positions, sub["label"].astype(str).to_numpy(), strict=True):
        labels[p].append(lab)
    boxes, classes, ignore = [], [], []
    for b, cs, ign in zip(gt.boxes, gt.classes, gt.ignore, strict=True):
        typed = np.array([str(c) not in UNTYPED for c in cs], dtype=bool)
        boxes.append(b[typed])
        classes.append([str(c) for c, t in zip(cs, typed, strict=True) if t])
        ignore.append(np.vstack([ign.reshape(-1, 4), b[~typed]]))
    curve = froc(det_arrays, boxes, ignore=ignore, gt_classes=classes, det_classes=labels,
                 iou_threshold=iou_threshold)
    sens_d, mean, per_class = _summary(curve, fp_rates)
    return FROCResult(sensitivity=sens_d, mean_sensitivity_0_5_to_4=mean, per_class=per_class,
                      n_images=curve.n_images, n_lesions=curve.n_gt,
                      n_noisy_excluded=gt.n_noisy, n_detections=len(sub),
                      n_detections_outside=n_outside, split=split,
                      iou_threshold=float(iou_threshold), noisy=noisy, curve=curve)


def metrics_entry(result: FROCResult, **extra) -> dict:
    """``result.to_metrics()`` with extra fields (model name, predictions path...)."""
    out = result.to_metrics()
    out.update(extra)
    return out


def results_table(results: Mapping[str, FROCResult]) -> str:
    """Several results side by side: one row per FP rate, one column per result."""
    names = list(results)
    width = max(12, *(len(n) for n in names))
    lines = ["FPs/image  " + "".join(f"{n:>{width + 2}}" for n in names)]
    keys = list(next(iter(results.values())).sensitivity)
    for k in keys:
        lines.append(f"{k:>9}  " + "".join(
            f"{results[n].sensitivity.get(k, float('nan')):>{width + 2}.3f}" for n in names))
    lines.append("mean 0.5-4 " + "".join(
        f"{results[n].mean_sensitivity_0_5_to_4:>{width + 2}.3f}" for n in names))
    return "\n".join(lines)
