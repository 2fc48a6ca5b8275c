"""Manifests: one parquet table of lesions (typed fields, stable ids, image paths).

A manifest is what every later step reads: embedding, mining, detection, the label store and
the widgets. Its columns are documented in ``data_manifests/README.md`` and checked against
``data_manifests/schema.json`` (also shipped inside the package).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .atomic import write_csv, write_parquet
from .dl_info import DLInfo, read_dl_info, unbalanced_quote_line
from .errors import LabError
from .images import key_slice_path

if TYPE_CHECKING:
    from .availability import ImageAvailability

__all__ = [
    "SCHEMA_VERSION",
    "ManifestError",
    "ManifestResult",
    "build_manifest",
    "write_manifest",
    "read_manifest",
    "load_schema",
    "manifest_images_root",
    "data_hash",
]

SCHEMA_VERSION = "1"
_META_PREFIX = "deeplesion_lab."


class ManifestError(LabError, ValueError):
    """A manifest file is missing, unreadable or does not follow the schema."""


@dataclass
class ManifestResult:
    """What :func:`write_manifest` wrote."""

    lesions: pd.DataFrame
    rejected: pd.DataFrame
    manifest_path: Path
    rejected_path: Path | None
    info: DLInfo
    availability: ImageAvailability | None = None
    missing_path: Path | None = None


def load_schema() -> dict:
    """The manifest schema (column name -> dtype, description)."""
    text = resources.files("deeplesion_lab").joinpath("manifest_schema.json").read_text()
    return json.loads(text)


def default_images_root(csv_path: Path) -> Path | None:
    """``Images_png`` beside the CSV, if it exists."""
    cand = csv_path.parent / "Images_png"
    return cand if cand.is_dir() else None


def data_hash(lesions: pd.DataFrame) -> str:
    """A short content hash of a lesion table (ids, boxes, types, splits), order-independent."""
    cols = ["lesion_id", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "coarse_type", "split"]
    part = lesions[cols].sort_values("lesion_id")
    h = hashlib.sha1(pd.util.hash_pandas_object(part, index=False).to_numpy().tobytes())
    return h.hexdigest()[:12]


def build_manifest(
    source: str | Path,
    images_root: str | Path | None = None,
    *,
    require_images: bool = False,
) -> tuple[pd.DataFrame, DLInfo]:
    """Read a ``DL_info.csv`` and build the manifest table.

    Parameters
    ----------
    source : str or pathlib.Path
        The CSV.
    images_root : str or pathlib.Path, optional
        The folder of the series folders, or a folder holding it (``Images_png``, or the
        Kaggle subset's ``images``). Defaults to ``Images_png`` beside the CSV, or the folder
        the CSV's ``kaggle_path`` column names (:func:`deeplesion_lab.availability.
        resolve_images_root`). Without images the manifest still holds all metadata
        (``has_image`` is False).
    require_images : bool, default False
        Record that later steps use only the lesions whose key slice is present (metadata
        ``images_policy = present-only``); the others stay in the manifest with ``has_image``
        False. At least one key slice must be present.

    Returns
    -------
    (pandas.DataFrame, DLInfo)
        The manifest and the raw read result (with its rejected rows).
    """
    from .availability import PRESENT_ONLY, key_slices_present, resolve_images_root

    source = Path(source)
    info = read_dl_info(source)
    les = info.lesions.copy()
    rel = [str(key_slice_path(Path("."), f)) for f in les["file_name"].to_numpy()]
    les["image_path"] = pd.array(rel, dtype="string")
    try:
        root, how = resolve_images_root(source, images_root, les)
    except LabError as exc:
        raise ManifestError(str(exc)) from exc
    if root is not None:
        les["has_image"] = key_slices_present(root, np.asarray(rel, dtype=object))
    else:
        les["has_image"] = False
    if require_images and not les["has_image"].any():
        where = f"under {root}" if root is not None else "(no images folder found; give --images)"
        raise ManifestError(
            f"{source}: --require-images, but none of the {len(les)} key slices is {where}; "
            "no manifest written"
        )
    les.attrs["images_root"] = str(root) if root is not None else ""
    les.attrs["images_layout"] = how
    les.attrs["images_policy"] = PRESENT_ONLY if require_images else ""
    les.attrs["source"] = str(source.resolve())
    return les, info


def write_manifest(
    source: str | Path,
    out: str | Path,
    images_root: str | Path | None = None,
    *,
    require_images: bool = False,
) -> ManifestResult:
    """Build a manifest from ``source`` and write it to ``out`` (parquet).

    Rejected rows go to ``<out stem>.rejected.csv`` beside it (only when there are some; a stale
    rejected file from an earlier run is removed so that it cannot be mistaken for this one's).
    When some key slices are missing under the images root, the series folders that would add
    them go to ``<out stem>.missing_images.csv`` (series, lesions, first_line, run); the
    lesions stay in the manifest with ``has_image`` False.
    """
    from .availability import image_availability, missing_series_table

    out = Path(out)
    if out.suffix != ".parquet":
        raise ManifestError(f"{out}: a manifest is written as .parquet")
    les, info = build_manifest(source, images_root, require_images=require_images)
    meta = {
        f"{_META_PREFIX}schema_version": SCHEMA_VERSION,
        f"{_META_PREFIX}images_root": les.attrs["images_root"],
        f"{_META_PREFIX}images_layout": les.attrs["images_layout"],
        f"{_META_PREFIX}images_policy": les.attrs["images_policy"],
        f"{_META_PREFIX}source": les.attrs["source"],
        f"{_META_PREFIX}data_hash": data_hash(les) if len(les) else "",
        f"{_META_PREFIX}n_rejected_rows": str(info.n_rejected_rows),
    }
    rejected_path = out.with_name(out.name[: -len(".parquet")] + ".rejected.csv")
    if len(info.rejected):
        write_csv(info.rejected, rejected_path)
    elif rejected_path.exists():
        rejected_path.unlink()
    if les.empty:
        line = unbalanced_quote_line(Path(source)) if Path(source).suffix == ".csv" else None
        quote = f"; line {line} has an unbalanced quote ('\"')" if line else ""
        raise ManifestError(
            f"{source}: no valid lesions: all {info.n_rejected_rows} rows were rejected (line, "
            f"column and reason of each in {rejected_path}){quote}; no manifest written"
        )
    missing_path = out.with_name(out.name[: -len(".parquet")] + ".missing_images.csv")
    availability = image_availability(les)
    if les.attrs["images_root"] and not availability.complete:
        write_csv(missing_series_table(availability), missing_path)
    elif missing_path.exists():
        missing_path.unlink()
    write_parquet(les, out, meta)
    return ManifestResult(
        lesions=les,
        rejected=info.rejected,
        manifest_path=out,
        rejected_path=rejected_path if len(info.rejected) else None,
        info=info,
        availability=availability,
        missing_path=missing_path if missing_path.exists() else None,
    )


def read_manifest(path: str | Path, images_root: str | Path | None = None) -> pd.DataFrame:
    """Read a manifest; ``df.attrs`` carries ``images_root``, ``source`` and ``data_hash``.

    Parameters
    ----------
    path : str or pathlib.Path
        A manifest written by :func:`write_manifest`.
    images_root : optional
        Override the images folder recorded in the manifest (e.g. data moved to another disk).
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for non-parquet input
        raise ManifestError(f"{path}: not a readable parquet manifest ({exc})") from exc
    meta = {
        k.decode()[len(_META_PREFIX) :]: v.decode()
        for k, v in (table.schema.metadata or {}).items()
        if k.decode().startswith(_META_PREFIX)
    }
    if "schema_version" not in meta:
        raise ManifestError(f"{path}: not a deeplesion-lab manifest (no schema version)")
    df = table.to_pandas()
    missing = [c for c in load_schema()["columns"] if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
    df.attrs.update(meta)
    if images_root is not None:
        df.attrs["images_root"] = str(Path(images_root).resolve())
    df.attrs["manifest_path"] = str(path.resolve())
    return df


def manifest_images_root(df: pd.DataFrame) -> Path:
    """The images folder of a manifest, or a clear error if it has none."""
    root = df.attrs.get("images_root", "")
    if not root:
        src = df.attrs.get("manifest_path", "the manifest")
        raise ManifestError(
            f"{src} has no images folder (built from a CSV without Images_png); "
            "rebuild it with --images or pass images_root"
        )
    return Path(root)
