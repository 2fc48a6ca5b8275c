"""Lesion types of detections from the run's lesion embedder, fitted on the current labels.

The detector finds lesions well enough, but its class head hardly learns lesion types from a
few hundred training slices (issue 14, session 11: found test lesions named right 0.34-0.58,
no better after fine-tuning on the *true* types). The lab already has a network made for telling
lesion types apart: the lesion embedder of ``embed`` (patch, 80-mm context crop, location and
size). :class:`EmbeddingTyper` names a detection by its nearest labelled training lesions in that
embedding, so the labels people correct in the label store change the names directly, and
:func:`type_predictions` re-types a detector's predictions that way.

A detection has no DL_info row, so its inputs are made as DeepLesion makes a lesion's
(:func:`detection_rows`): the crop of its box on its key slice, the long diameter from the box
(the manifest's median ratio of long diameter to longer box side), and the normalised location:
x and y relative to the body's bounding box in the image (:func:`body_box`, as DL_info's
``Normalized_lesion_location`` is defined), z the key slice's level along the body, taken from
the DL_info rows of that slice (a property of the slice, the same for every box on it; DeepLesion
estimates it by body-part regression of the slice).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import LabError

__all__ = [
    "TYPER_FILE",
    "EmbeddingTyper",
    "body_box",
    "detection_rows",
    "fit_run_typer",
    "load_model_typer",
    "save_model_typer",
    "type_model_predictions",
    "type_predictions",
    "type_with",
]

#: Beside a model's ``model.pt``: the labelled training lesions its detections are typed by
#: (``lesion_id``, ``label``); the neighbour count is in ``typer.json``.
TYPER_FILE = "typer.parquet"

#: Long diameter over the longer box side when a manifest has no usable row (demo data: 0.715).
DEFAULT_DIAMETER_RATIO = 0.715


def body_box(hu: np.ndarray, threshold: float = -500.0) -> tuple[float, float, float, float] | None:
    """The bounding box ``(x1, y1, x2, y2)`` in pixels of the largest connected region above
    ``threshold`` HU (the body), or None when nothing is above it."""
    from scipy import ndimage

    img = np.asarray(hu)
    if img.ndim == 3:  # context slices: the key slice is the middle one
        img = img[img.shape[0] // 2]
    mask = img > threshold
    lab, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = ndimage.sum(mask, lab, index=np.arange(1, n + 1))
    ys, xs = np.nonzero(lab == 1 + int(np.argmax(sizes)))
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def _diameter_ratio(manifest: pd.DataFrame) -> float:
    side = np.maximum(manifest["bbox_x2"] - manifest["bbox_x1"],
                      manifest["bbox_y2"] - manifest["bbox_y1"]).to_numpy(dtype=np.float64)
    d = manifest["long_diameter_px"].to_numpy(dtype=np.float64)
    ok = np.isfinite(d) & np.isfinite(side) & (side > 0) & (d > 0)
    return float(np.median(d[ok] / side[ok])) if ok.any() else DEFAULT_DIAMETER_RATIO


def detection_rows(predictions: pd.DataFrame, manifest: pd.DataFrame,
                   images_root: str | Path, *, source: str = "predictions") -> pd.DataFrame:
    """Manifest-like rows of detections, for :func:`~deeplesion_lab.embedding.build_patches`.

    Each detection takes its key slice's row (series, slice, spacing, image size), its own box,
    a long diameter from the box and the location described in the module docstring; its
    ``lesion_id`` is ``det-<row>`` (``row`` its position in ``predictions``), its type unknown.

    Raises
    ------
    LabError
        A detection on a slice without a manifest row (named with its row of ``source``), or a
        key slice whose body cannot be found in the image.
    """
    from ..images import key_slice_path, load_hu

    if len(predictions) == 0:
        return manifest.iloc[0:0].copy()
    missing = ~predictions["file_name"].isin(set(manifest["file_name"]))
    if missing.any():
        i = int(np.flatnonzero(missing.to_numpy())[0])
        raise LabError(f"{source}: row {i + 1}, field file_name: "
                       f"{predictions['file_name'].iloc[i]!r} is no key slice of the manifest "
                       f"({int(missing.sum())} detections affected); detections can be typed "
                       "only on key slices, whose DL_info rows give the slice's level")
    ratio = _diameter_ratio(manifest)
    root = Path(images_root)
    bodies: dict[str, tuple[float, float, float, float]] = {}
    for fn in predictions["file_name"].unique():
        b = body_box(load_hu(key_slice_path(root, fn)))
        if b is None or b[2] - b[0] < 2 or b[3] - b[1] < 2:
            raise LabError(f"{key_slice_path(root, fn)}: no body above -500 HU on this key slice;"
                           " its detections cannot be located")
        bodies[fn] = b
    template = manifest.drop_duplicates("file_name").set_index("file_name")
    z = manifest.groupby("file_name")["location_z"].median()
    fn = predictions["file_name"].to_numpy()
    rows = template.loc[fn].reset_index()
    box = predictions[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)
    b = np.array([bodies[f] for f in fn])
    cx, cy = (box[:, 0] + box[:, 2]) / 2.0, (box[:, 1] + box[:, 3]) / 2.0
    side = np.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])
    rows["lesion_id"] = [f"det-{i}" for i in range(len(predictions))]
    rows[["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]] = box
    rows["long_diameter_px"] = ratio * side
    rows["short_diameter_px"] = 0.5 * ratio * side
    rows["location_x"] = np.clip((cx - b[:, 0]) / (b[:, 2] - b[:, 0]), 0.0, 1.0)
    rows["location_y"] = np.clip((cy - b[:, 1]) / (b[:, 3] - b[:, 1]), 0.0, 1.0)
    rows["location_z"] = z.loc[fn].to_numpy(dtype=np.float64)
    rows["coarse_type"] = -1
    if "has_image" in rows.columns:
        rows["has_image"] = True
    return rows


class EmbeddingTyper:
    """Name lesions by their nearest labelled lesions in the lesion embedding.

    Parameters
    ----------
    n_neighbors : int, default 5
        Labelled lesions that vote (fewer when fewer are labelled).
    weights : {"distance", "uniform"}, default "distance"
        How the neighbours' votes are weighted.

    Attributes
    ----------
    classes_ : list of str
        Type names seen in ``fit``, sorted.
    n_fit_ : int
        Labelled lesions used.
    n_untyped_ : int
        Lesions of ``fit`` left out because their label names no type (``unlabeled``...).
    """

    def __init__(self, n_neighbors: int = 5, weights: str = "distance"):
        self.n_neighbors = n_neighbors
        self.weights = weights

    def fit(self, X: np.ndarray, y: Sequence[str]) -> EmbeddingTyper:
        """Fit on embeddings ``X`` (N, d) and their labels ``y`` (type names)."""
        from sklearn.neighbors import KNeighborsClassifier

        from .froc import UNTYPED

        X = np.asarray(X, dtype=np.float32)
        y = np.asarray([str(v) for v in y], dtype=object)
        if X.ndim != 2 or len(X) != len(y):
            raise LabError(f"EmbeddingTyper.fit: X has shape {X.shape} but there are "
                           f"{len(y)} labels")
        if self.weights not in ("distance", "uniform"):
            raise LabError(f"EmbeddingTyper: weights must be 'distance' or 'uniform', got "
                           f"{self.weights!r}")
        typed = np.array([v not in UNTYPED for v in y], dtype=bool)
        if not typed.any():
            raise LabError("EmbeddingTyper.fit: no lesion has a type label")
        k = max(1, min(int(self.n_neighbors), int(typed.sum())))
        self.knn_ = KNeighborsClassifier(n_neighbors=k, weights=self.weights).fit(
            X[typed], y[typed])
        self.classes_ = [str(c) for c in self.knn_.classes_]
        self.n_fit_, self.n_untyped_ = int(typed.sum()), int((~typed).sum())
        return self

    def _check(self, X) -> np.ndarray:
        if not hasattr(self, "knn_"):
            raise LabError("EmbeddingTyper is not fitted; call fit first")
        return np.asarray(X, dtype=np.float32)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Vote shares (N, len(classes_))."""
        X = self._check(X)
        if len(X) == 0:
            return np.zeros((0, len(self.classes_)), dtype=np.float64)
        return self.knn_.predict_proba(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Type names (N,)."""
        p = self.predict_proba(X)
        return np.asarray(self.classes_, dtype=object)[p.argmax(1)] if len(p) else \
            np.array([], dtype=object)


def type_predictions(predictions: pd.DataFrame, manifest: pd.DataFrame, embedder,
                     typer: EmbeddingTyper, images_root: str | Path, *,
                     rescore: bool = False, source: str = "predictions") -> pd.DataFrame:
    """``predictions`` with each detection's ``label`` named by ``typer`` from its embedding
    (``embedder``: a fitted :class:`~deeplesion_lab.embedding.LesionEmbedder`); boxes
    unchanged. ``typer_confidence`` holds the vote share of the name; with ``rescore`` each
    score is multiplied by it (a detection whose type is unclear ranks lower), else the scores
    are the detector's."""
    from ..embedding import build_patches

    out = predictions.copy()
    if len(out) == 0:
        out["typer_confidence"] = pd.Series(dtype=float)
        return out
    rows = detection_rows(predictions, manifest, images_root, source=source)
    patches = build_patches(rows, embedder.patch_config_, images_root=images_root)
    proba = typer.predict_proba(embedder.transform(patches))
    out["label"] = np.asarray(typer.classes_, dtype=object)[proba.argmax(1)]
    out["typer_confidence"] = proba.max(1)
    if rescore:
        out["score"] = out["score"].to_numpy(dtype=np.float64) * out["typer_confidence"]
    return out


def save_model_typer(folder: str | Path, labels: pd.DataFrame, *, n_neighbors: int = 5,
                     rescore: bool = False, source: str | None = None) -> Path:
    """Keep the labels (``lesion_id``, ``label``; typically the training lesions' labels the
    model was fine-tuned on) by which the model's detections are typed, in ``folder``.

    Returns the path of :data:`TYPER_FILE`.
    """
    from ..atomic import write_json, write_parquet

    folder = Path(folder)
    table = labels[["lesion_id", "label"]].astype({"lesion_id": str, "label": str})
    path = folder / TYPER_FILE
    write_parquet(table.reset_index(drop=True), path)
    write_json({"n_neighbors": int(n_neighbors), "rescore": bool(rescore),
                "n_labels": len(table), "source": source, "typed_by": "lesion embedder"},
               folder / "typer.json")
    return path


def load_model_typer(run, folder: str | Path):
    """The model's typer fitted on the run's current embeddings, with the run's embedder:
    ``(typer, embedder)``, or None when the model has no :data:`TYPER_FILE`; ``typer.rescore_``
    says whether its scores are multiplied by the vote share (``typer.json``).

    Raises
    ------
    LabError
        The run has no embedder or embeddings, or a labelled lesion has no embedding.
    """
    import json

    folder = Path(folder)
    path = folder / TYPER_FILE
    if not path.is_file():
        return None
    conf = json.loads((folder / "typer.json").read_text()) if (folder / "typer.json").is_file() \
        else {}
    return fit_run_typer(run, pd.read_parquet(path), n_neighbors=int(conf.get("n_neighbors", 5)),
                         rescore=bool(conf.get("rescore", False)), source=str(path))


def fit_run_typer(run, labels: pd.DataFrame, *, n_neighbors: int = 5, rescore: bool = False,
                  source: str = "labels"):
    """``(typer, embedder)``: an :class:`EmbeddingTyper` fitted on the run's embeddings of the
    labelled lesions (``lesion_id``, ``label``), and the run's embedder; ``typer.rescore_`` as
    given. ``source`` names the labels in errors.

    Raises
    ------
    LabError
        The run has no embedder or embeddings, or a labelled lesion has no embedding.
    """
    from ..embedding import LesionEmbedder

    if not run.embedder.is_file() or not run.embeddings.is_file():
        raise LabError(f"{source}: naming detections by the lesion embedder needs the run's "
                       f"embedder, but {run.path} has no embedder.pt / embeddings.parquet; run "
                       f"`deeplesion-lab embed` first")
    ids, vecs = run.load_embeddings()
    pos = {str(i): k for k, i in enumerate(ids)}
    missing = [i for i in labels["lesion_id"].astype(str) if i not in pos]
    if missing:
        raise LabError(f"{source}: lesion {missing[0]} has no embedding in {run.embeddings} "
                       f"({len(missing)} of {len(labels)}); was the run embedded on another "
                       "manifest?")
    X = vecs[[pos[i] for i in labels["lesion_id"].astype(str)]]
    typer = EmbeddingTyper(n_neighbors=int(n_neighbors)).fit(X, labels["label"])
    typer.rescore_ = bool(rescore)
    return typer, LesionEmbedder.load(run.embedder)


def type_model_predictions(run, folder: str | Path, predictions: pd.DataFrame,
                           manifest: pd.DataFrame, *, threads: int = 1,
                           source: str = "predictions") -> tuple[pd.DataFrame, bool]:
    """``(predictions typed by the model's typer, True)``, or ``(predictions, False)`` for a
    model without one (its class head names the types)."""
    loaded = load_model_typer(run, folder)
    if loaded is None:
        return predictions, False
    return type_with(*loaded, predictions, manifest, threads=threads, source=source), True


def type_with(typer: EmbeddingTyper, embedder, predictions: pd.DataFrame,
              manifest: pd.DataFrame, *, threads: int = 1,
              source: str = "predictions") -> pd.DataFrame:
    """``predictions`` named by a fitted ``(typer, embedder)`` (:func:`fit_run_typer`,
    :func:`load_model_typer`), rescored as ``typer.rescore_`` says, with the columns of
    ``predictions`` only."""
    from ..manifest import manifest_images_root

    embedder.progress, embedder.num_threads = False, threads
    out = type_predictions(predictions, manifest, embedder, typer,
                           manifest_images_root(manifest),
                           rescore=getattr(typer, "rescore_", False), source=source)
    return out[list(predictions.columns)]
