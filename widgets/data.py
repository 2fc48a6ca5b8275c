"""What the widgets read: lesions, map coordinates, embeddings, slices and overlays.

:class:`LabData` gathers, once, everything the views need from a run directory (or from a bare
manifest, for the slice viewer alone): the manifest joined with the UMAP coordinates and the
mined pseudo-labels, the embeddings aligned with it, detector predictions and mined candidate
lesions when the run has them, and cached access to slices in HU. It holds no UI code.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd

from deeplesion_lab.errors import LabError
from deeplesion_lab.images import ImageError, apply_window, load_hu, series_dir, slice_path
from deeplesion_lab.run import RunDir

__all__ = ["LabData", "WidgetDataError", "thumbnail", "BOX_COLUMNS"]

#: Box columns accepted in prediction / candidate tables (first match wins).
BOX_COLUMNS = (("x1", "y1", "x2", "y2"), ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"))

#: Mined candidates looked for in ``RUN_DIR/graph`` (detector predictions: the run layout,
#: :meth:`deeplesion_lab.run.RunDir.prediction_files`).
_CAND_FILES = ("proposals.parquet", "proposals.csv", "candidates.parquet")

_SLICE_CACHE = 96  # slices kept in memory (512x512 int16 = 0.5 MB each)


class WidgetDataError(LabError, ValueError):
    """A run directory or table lacks what a widget needs."""


def _box_cols(df: pd.DataFrame) -> tuple[str, str, str, str] | None:
    for cols in BOX_COLUMNS:
        if all(c in df.columns for c in cols):
            return cols
    return None


def _read_table(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path)


def _overlay_table(source, what: str) -> pd.DataFrame | None:
    """Normalize a predictions/candidates table: ``file_name, x1, y1, x2, y2, score, label``."""
    if source is None:
        return None
    df = _read_table(Path(source)) if isinstance(source, str | os.PathLike) else source.copy()
    name = str(source) if isinstance(source, str | os.PathLike) else what
    cols = _box_cols(df)
    if "file_name" not in df.columns or cols is None:
        raise WidgetDataError(
            f"{name}: {what} need columns file_name and x1, y1, x2, y2 "
            f"(found {', '.join(map(str, df.columns))})"
        )
    out = pd.DataFrame(
        {
            "file_name": df["file_name"].astype(str).to_numpy(),
            "x1": df[cols[0]].astype(float).to_numpy(),
            "y1": df[cols[1]].astype(float).to_numpy(),
            "x2": df[cols[2]].astype(float).to_numpy(),
            "y2": df[cols[3]].astype(float).to_numpy(),
            "score": (
                df["score"].astype(float).to_numpy() if "score" in df.columns else np.ones(len(df))
            ),
            "label": (
                df["label"].astype(str).to_numpy() if "label" in df.columns else np.full(len(df), "")
            ),
        }
    )
    if "proposal_id" in df.columns:  # mined candidates: the review follows them by id
        out["proposal_id"] = df["proposal_id"].astype(str).to_numpy()
    return out


def _find_overlay_file(folder: Path, names: tuple[str, ...]) -> Path | None:
    """The first existing file among ``names`` in ``folder`` (no user-controlled paths)."""
    for n in names:
        p = folder / n
        if p.is_file():
            return p
    return None


def thumbnail(
    hu: np.ndarray,
    box,
    window: tuple[float, float],
    size: int = 64,
    margin: float = 0.6,
    min_size: float = 24.0,
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """A square windowed uint8 crop around a box, and the box in the crop's pixels.

    The crop is centred on the box, ``max(w, h) * (1 + 2 * margin)`` wide (at least
    ``min_size``), padded with air outside the image and resized (nearest) to ``size``.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin), min_size)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    a0, b0 = cx - side / 2.0, cy - side / 2.0
    scale = size / side
    # nearest sampling at pixel centres: cheap and exact enough for a thumbnail
    src = a0 + (np.arange(size) + 0.5) / scale
    xs = np.floor(src).astype(np.int64)
    ys = np.floor(b0 + (np.arange(size) + 0.5) / scale).astype(np.int64)
    h, w = hu.shape
    inside = (ys[:, None] >= 0) & (ys[:, None] < h) & (xs[None, :] >= 0) & (xs[None, :] < w)
    patch = np.full((size, size), -1024, dtype=np.int16)
    yy, xx = np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)
    patch[inside] = hu[yy[:, None], xx[None, :]][inside]
    img = apply_window(patch, window)
    tb = ((x1 - a0) * scale, (y1 - b0) * scale, (x2 - a0) * scale, (y2 - b0) * scale)
    return img, tuple(float(v) for v in tb)


class LabData:
    """Lesions with map coordinates, labels, embeddings and image access for the widgets.

    Build it with :meth:`from_run` (a pipeline run) or :meth:`from_manifest` (images only).

    Parameters
    ----------
    lesions : pandas.DataFrame
        Manifest rows, plus ``x``, ``y`` (UMAP, NaN where absent), ``cluster``, ``pseudo_label``
        and ``confidence`` columns.
    images_root : pathlib.Path or None
        The ``Images_png`` folder.
    embeddings : numpy.ndarray or None
        ``(n, d)`` float32 aligned with ``lesions`` (NaN rows where a lesion has none).
    predictions, candidates : pandas.DataFrame or None
        Detector boxes and mined unannotated lesions (``file_name, x1, y1, x2, y2, score,
        label``).
    run : RunDir or None
        The run directory, when there is one.
    prediction_sets : dict, optional
        Predictions of several models, ``{model: table}``; :attr:`predictions` is the one of
        :attr:`prediction_model` (default: the table covering the most key images).
    """

    def __init__(
        self,
        lesions: pd.DataFrame,
        images_root: Path | None,
        embeddings: np.ndarray | None = None,
        predictions: pd.DataFrame | None = None,
        candidates: pd.DataFrame | None = None,
        run: RunDir | None = None,
        prediction_sets: dict[str, pd.DataFrame] | None = None,
    ):
        if "lesion_id" not in lesions.columns:
            raise WidgetDataError("the lesion table has no lesion_id column")
        self.lesions = lesions.reset_index(drop=True)
        self.images_root = Path(images_root) if images_root else None
        self.embeddings = embeddings
        self.candidates = candidates
        self.run = run
        sets = dict(prediction_sets or {})
        if predictions is not None:
            sets = {"predictions": predictions, **sets}
        #: predictions by model name (see :meth:`set_prediction_model`)
        self.prediction_sets: dict[str, pd.DataFrame] = sets
        self.prediction_model: str | None = None
        self.predictions: pd.DataFrame | None = None
        self._pred_by_file: dict[str, pd.DataFrame] = {}
        if sets:
            widest = max(sets, key=lambda k: sets[k]["file_name"].nunique() if len(sets[k]) else -1)
            self.set_prediction_model("predictions" if predictions is not None else widest)
        ids = self.lesions["lesion_id"].astype(str).to_numpy()
        self.lesion_ids = ids
        self.row_of: dict[str, int] = {lid: i for i, lid in enumerate(ids)}
        for col in ("x", "y"):
            if col not in self.lesions.columns:
                self.lesions[col] = np.nan
        xy = self.lesions[["x", "y"]].to_numpy(dtype=np.float64)
        #: rows of ``lesions`` shown on the map; map point ``i`` is lesion ``point_rows[i]``
        self.point_rows = np.flatnonzero(np.isfinite(xy).all(axis=1))
        self.point_of_row = np.full(len(ids), -1, dtype=np.int64)
        self.point_of_row[self.point_rows] = np.arange(len(self.point_rows))
        self._slices: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._series: dict[str, list[int]] = {}
        self._cand_by_file = self._group(candidates)
        self._lesions_by_file = {
            k: np.asarray(v, dtype=np.int64)
            for k, v in self.lesions.groupby("file_name", sort=False).indices.items()
        } if "file_name" in self.lesions.columns else {}

    # construction ------------------------------------------------------------------------------
    @classmethod
    def from_manifest(
        cls,
        manifest,
        images_root: str | Path | None = None,
        *,
        predictions=None,
        candidates=None,
    ) -> LabData:
        """From a manifest (path or DataFrame from :func:`deeplesion_lab.read_manifest`)."""
        from deeplesion_lab.manifest import read_manifest

        df = read_manifest(manifest) if isinstance(manifest, str | os.PathLike) else manifest
        root = images_root or df.attrs.get("images_root") or None
        les = df.copy()
        les["x"] = np.nan
        les["y"] = np.nan
        les["cluster"] = -1
        les["pseudo_label"] = pd.array([None] * len(les), dtype="string")
        les["confidence"] = np.nan
        return cls(
            les,
            Path(root) if root else None,
            predictions=_overlay_table(predictions, "predictions"),
            candidates=_overlay_table(candidates, "candidates"),
        )

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path | RunDir,
        *,
        images_root: str | Path | None = None,
        predictions=None,
        candidates=None,
    ) -> LabData:
        """From a run directory: manifest + ``umap.parquet`` + embeddings + pseudo-labels.

        The predictions of every model of the run are read where the run layout puts them
        (:meth:`deeplesion_lab.run.RunDir.prediction_files`; one table per model, its splits
        together) and mined candidates from ``graph/proposals.parquet`` (or ``.csv``), unless
        given explicitly.
        """
        run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        from deeplesion_lab.manifest import read_manifest

        manifest = read_manifest(run.manifest_path(), images_root=images_root)
        les = manifest.copy()
        if run.umap.is_file():
            um = pd.read_parquet(run.umap)
            miss = {"lesion_id", "x", "y"} - set(um.columns)
            if miss:
                raise WidgetDataError(f"{run.umap}: missing column(s) {', '.join(sorted(miss))}")
            um = um.drop_duplicates("lesion_id").set_index(um["lesion_id"].astype(str))
            les["x"] = les["lesion_id"].astype(str).map(um["x"]).astype(float).to_numpy()
            les["y"] = les["lesion_id"].astype(str).map(um["y"]).astype(float).to_numpy()
        else:
            les["x"] = np.nan
            les["y"] = np.nan
        if run.pseudo_labels.is_file():
            pl = run.load_pseudo_labels()
            pl = pl.drop_duplicates("lesion_id").set_index(pl["lesion_id"].astype(str))
            key = les["lesion_id"].astype(str)
            les["cluster"] = key.map(pl["cluster"]).fillna(-1).astype(np.int64).to_numpy()
            les["pseudo_label"] = pd.array(key.map(pl["label"]).to_numpy(), dtype="string")
            conf = pl["confidence"] if "confidence" in pl.columns else pd.Series(dtype=float)
            les["confidence"] = key.map(conf).astype(float).to_numpy()
        else:
            les["cluster"] = -1
            les["pseudo_label"] = pd.array([None] * len(les), dtype="string")
            les["confidence"] = np.nan
        emb = None
        if run.embeddings.is_file():
            ids, vec = run.load_embeddings()
            pos = {str(lid): i for i, lid in enumerate(ids)}
            idx = np.array([pos.get(str(lid), -1) for lid in les["lesion_id"]], dtype=np.int64)
            emb = np.full((len(les), vec.shape[1]), np.nan, dtype=np.float32)
            emb[idx >= 0] = vec[idx[idx >= 0]]
        # explicit tables must be right; files found by name in the run are shown if they fit
        sets: dict[str, pd.DataFrame] = {}
        if predictions is None:
            sets = run_prediction_sets(run)
        else:
            predictions = _overlay_table(predictions, "predictions")
        if candidates is None:
            candidates = _safe_overlay(_find_overlay_file(run.graph_dir, _CAND_FILES), "candidates")
        else:
            candidates = _overlay_table(candidates, "candidates")
        root = images_root or manifest.attrs.get("images_root") or None
        return cls(
            les,
            Path(root) if root else None,
            embeddings=emb,
            predictions=predictions,
            candidates=candidates,
            run=run,
            prediction_sets=sets,
        )

    def set_prediction_model(self, name: str) -> None:
        """Show the predictions of model ``name`` (one of :attr:`prediction_sets`)."""
        if name not in self.prediction_sets:
            known = ", ".join(self.prediction_sets) or "none"
            raise WidgetDataError(f"no predictions of model {name!r} in this run (known: {known})")
        self.prediction_model = name
        self.predictions = self.prediction_sets[name]
        self._pred_by_file = self._group(self.predictions)

    @staticmethod
    def _group(df: pd.DataFrame | None) -> dict[str, pd.DataFrame]:
        if df is None or not len(df):
            return {}
        return {k: g for k, g in df.groupby("file_name", sort=False)}

    # lesions -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.lesions)

    @property
    def n_points(self) -> int:
        """Number of lesions on the map."""
        return len(self.point_rows)

    def row(self, lesion_id: str) -> pd.Series:
        """The lesion's row (a clear error for an unknown id)."""
        try:
            return self.lesions.iloc[self.row_of[str(lesion_id)]]
        except KeyError:
            raise WidgetDataError(f"unknown lesion id {lesion_id!r}") from None

    def point_xy(self) -> np.ndarray:
        """``(n_points, 2)`` float32 map coordinates."""
        return self.lesions[["x", "y"]].to_numpy(dtype=np.float32)[self.point_rows]

    def lesions_on_image(self, file_name: str) -> np.ndarray:
        """Rows of the lesions annotated on one key image."""
        return self._lesions_by_file.get(file_name, np.empty(0, dtype=np.int64))

    def predictions_on(self, file_name: str) -> pd.DataFrame | None:
        return self._pred_by_file.get(file_name)

    def candidates_on(self, file_name: str) -> pd.DataFrame | None:
        return self._cand_by_file.get(file_name)

    # images ------------------------------------------------------------------------------------
    def series_slices(self, file_name: str) -> list[int]:
        """Slice indices present on disk for the series of ``file_name`` (sorted)."""
        if self.images_root is None:
            return []
        d = series_dir(self.images_root, file_name)
        key = str(d)
        if key not in self._series:
            found = []
            if d.is_dir():
                for p in d.iterdir():
                    if p.suffix == ".png" and p.stem.isdigit():
                        found.append(int(p.stem))
            self._series[key] = sorted(found)
        return self._series[key]

    def slice_hu(self, file_name: str, index: int) -> np.ndarray:
        """One slice of the series of ``file_name`` as int16 HU (cached)."""
        if self.images_root is None:
            raise WidgetDataError(
                "no images folder: the manifest was built without Images_png; "
                "pass images_root"
            )
        key = (str(series_dir(self.images_root, file_name)), int(index))
        hit = self._slices.get(key)
        if hit is not None:
            self._slices.move_to_end(key)
            return hit
        arr = load_hu(slice_path(self.images_root, file_name, index))
        self._slices[key] = arr
        if len(self._slices) > _SLICE_CACHE:
            self._slices.popitem(last=False)
        return arr

    def lesion_window(self, row: pd.Series) -> tuple[float, float]:
        """The lesion's DICOM window (low, high), or soft tissue when absent."""
        lo, hi = row.get("window_low"), row.get("window_high")
        if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi) and hi > lo:
            return float(lo), float(hi)
        return (-160.0, 240.0)

    def thumbnail(self, lesion_id: str, size: int = 64):
        """``(uint8 (size, size), box in thumbnail pixels)`` for a lesion, or None if no image."""
        row = self.row(lesion_id)
        try:
            hu = self.slice_hu(str(row["file_name"]), int(row["key_slice_index"]))
        except (ImageError, WidgetDataError):
            return None
        box = [float(row[c]) for c in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")]
        return thumbnail(hu, box, self.lesion_window(row), size=size)


def run_prediction_sets(run: RunDir) -> dict[str, pd.DataFrame]:
    """``{model: predictions}`` of a run, one table per model from the run layout.

    A model's tables of several splits are joined; where two cover the same key image (an
    ``all`` table and a ``test`` one), the first (widest) one's boxes are kept. Unreadable
    tables are skipped with a warning naming the file.
    """
    out: dict[str, pd.DataFrame] = {}
    for model, tables in run.prediction_files().items():
        parts, seen = [], set()
        for _split, path in tables:
            df = _safe_overlay(path, "predictions")
            if df is None:
                continue
            df = df[~df["file_name"].isin(seen)]
            seen.update(df["file_name"].unique())
            parts.append(df)
        if parts:
            out[model] = pd.concat(parts, ignore_index=True)
    return out


def _safe_overlay(source, what: str) -> pd.DataFrame | None:
    """Like :func:`_overlay_table`, but a foreign file found by name is skipped, not fatal."""
    if source is None:
        return None
    try:
        return _overlay_table(source, what)
    except (WidgetDataError, OSError, ValueError) as exc:
        import warnings

        warnings.warn(f"{what} not shown: {exc}", stacklevel=3)
        return None
