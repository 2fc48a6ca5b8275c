"""Exports of the label store: labels table, COCO JSON, and DL_info.csv with corrected types.

Every export is written atomically (a crash leaves the old file or none) and may be taken from
the current labels or from a snapshot (``snapshot=`` id or name), so a fine-tuning run can
export exactly the labels it records.

How the special and user classes are exported
---------------------------------------------
=====================  ========================  =============================================
label                  COCO                      DL_info.csv (``Coarse_lesion_type``)
=====================  ========================  =============================================
one of the 8 types     category 1-8              its code 1-8
user-added class       category 11, 12, ...      the original code is kept (the format has no
                                                 code for it; the labels export carries it)
``unsure``             category 9                original code kept, ``Possibly_noisy`` = 1
``not a lesion``       left out (no annotation;  row dropped (``not_lesion="drop"``, default)
                       the image stays)          or kept with ``Possibly_noisy`` = 1 ("flag")
no label at all        category 0 "unlabeled"    original code kept
=====================  ========================  =============================================

A CSV labels export is meant to be opened in a spreadsheet: a text cell that starts with
``=``, ``+``, ``-``, ``@``, a tab or a carriage return (a class name, a user name, a comment)
gets a leading ``'`` so that the spreadsheet shows it as text instead of running it as a
formula (:func:`spreadsheet_safe`). The parquet, COCO and DL_info exports keep every value
exact (they are read by programs).

By default the DL_info export applies human corrections only (``pseudo="none"``):
``pseudo="fill"`` also writes pseudo-label types into rows whose official type is -1
(unlabelled training lesions), ``pseudo="all"`` into every row.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from ..atomic import write_csv, write_json, write_parquet
from ..dl_info import BOX_COLUMNS, OFFICIAL_COLUMNS, RECIST_COLUMNS
from ..images import key_slice_path
from ..lesion_types import TYPE_CODES, UNLABELED, UNLABELED_NAME
from .base import StoreBase
from .errors import LabelStoreError
from .taxonomy import NOT_A_LESION, UNSURE

__all__ = [
    "ExportMixin",
    "LabelSource",
    "export_coco",
    "export_dl_info",
    "export_labels",
    "labels_for_export",
]


class LabelSource(Protocol):
    """What an export reads from a label store (:class:`~.store.LabelStore` is one)."""

    @property
    def location(self) -> str: ...

    @property
    def dataset_hash(self) -> str | None: ...

    @property
    def run_id(self) -> str | None: ...

    def version(self) -> int: ...

    def info(self) -> dict[str, Any]: ...

    def classes(self) -> pd.DataFrame: ...

    def current_labels(self) -> pd.DataFrame: ...

    def snapshot_labels(self, snapshot: int | str) -> pd.DataFrame: ...

    def added_lesions(self) -> pd.DataFrame: ...


class ExportMixin(StoreBase):
    """Methods of :class:`~deeplesion_lab.labels.store.LabelStore` (exports)."""

    def export_labels(self, path: str | Path, *, snapshot: int | str | None = None) -> Path:
        """Write the current (or a snapshot's) labels as parquet or CSV (by suffix).

        See :func:`deeplesion_lab.labels.export.export_labels`.
        """
        return export_labels(self, path, snapshot=snapshot)


    def export_coco(
        self, path: str | Path, manifest_df: pd.DataFrame, *, snapshot: int | str | None = None
    ) -> Path:
        """Write a COCO JSON of the manifest's boxes with the current labels.

        See :func:`deeplesion_lab.labels.export.export_coco`.
        """
        return export_coco(self, path, manifest_df, snapshot=snapshot)


    def export_dl_info(
        self,
        path: str | Path,
        manifest_df: pd.DataFrame,
        *,
        snapshot: int | str | None = None,
        not_lesion: str = "drop",
        pseudo: str = "none",
    ) -> Path:
        """Write a ``DL_info.csv`` (the 18 official columns) with corrected coarse types.

        See :func:`deeplesion_lab.labels.export.export_dl_info` (what happens to user classes,
        ``unsure`` and ``not a lesion``).
        """
        return export_dl_info(
            self, path, manifest_df, snapshot=snapshot, not_lesion=not_lesion, pseudo=pseudo
        )


_BOX = list(BOX_COLUMNS)
_RECIST = list(RECIST_COLUMNS)
_DL_INFO_NEEDS = [
    "lesion_id", "file_name", "patient_index", "study_index", "series_id", "key_slice_index",
    *_RECIST, *_BOX, "long_diameter_px", "short_diameter_px", "location_x", "location_y",
    "location_z", "coarse_type", "possibly_noisy", "slice_start", "slice_end", "spacing_x",
    "spacing_y", "spacing_z", "image_height", "image_width", "window_low", "window_high",
    "gender", "age", "split",
]


def labels_for_export(store: LabelSource, snapshot: int | str | None = None) -> pd.DataFrame:
    """Current labels (or a snapshot's) with the ``class_id`` of each label."""
    if snapshot is None:
        df = store.current_labels()
        df.attrs.update({"event_id": store.version(), "snapshot_id": None, "run_id": store.run_id})
    else:
        df = store.snapshot_labels(snapshot)
    ids = dict(zip(store.classes()["name"], store.classes()["class_id"], strict=True))
    df.insert(2, "class_id", pd.array([ids.get(x) for x in df["label"]], dtype="Int64"))
    return df


def _provenance(store: LabelSource, df: pd.DataFrame) -> dict[str, str]:
    return {
        "deeplesion_lab.labels.dataset_hash": str(store.dataset_hash),
        "deeplesion_lab.labels.run_id": str(df.attrs.get("run_id") or store.run_id),
        "deeplesion_lab.labels.event_id": str(df.attrs.get("event_id")),
        "deeplesion_lab.labels.snapshot_id": str(df.attrs.get("snapshot_id")),
        "deeplesion_lab.labels.labels_hash": str(df.attrs.get("labels_hash", "")),
        "deeplesion_lab.labels.store": store.location,
    }


def export_labels(
    store: LabelSource, path: str | Path, *, snapshot: int | str | None = None
) -> Path:
    """Write the labels table as ``.parquet`` (with provenance metadata) or ``.csv``.

    Columns: ``lesion_id``, ``label``, ``class_id``, ``cluster``, and for current labels
    ``confidence``, ``source``, ``updated_by``, ``updated_at``, ``event_id`` (a snapshot has
    ``source`` but no per-lesion times).
    """
    path = Path(path)
    if path.suffix not in (".parquet", ".csv"):
        raise LabelStoreError(f"{path}: labels are exported as .parquet or .csv")
    df = labels_for_export(store, snapshot)
    if path.suffix == ".parquet":
        return write_parquet(df, path, _provenance(store, df))
    return write_csv(spreadsheet_safe(df), path)


#: First characters that make a spreadsheet read a cell as a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` whose text cells cannot run as spreadsheet formulas.

    Text cells starting with one of :data:`FORMULA_STARTS` get a leading ``'`` (the OWASP
    advice against CSV injection); numbers, dates and other cells are unchanged.
    """
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(
                lambda v: f"'{v}" if isinstance(v, str) and v.startswith(FORMULA_STARTS) else v
            )
    return out


def _with_added(store: LabelSource, manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest plus the lesions people added that it does not hold yet."""
    from .lesions import manifest_with_added

    if not isinstance(manifest, pd.DataFrame) or "lesion_id" not in manifest.columns:
        return manifest  # _check_manifest explains
    added = store.added_lesions()
    added = added[~added["lesion_id"].isin(set(manifest["lesion_id"].astype(str)))]
    return manifest_with_added(manifest, added, keep_not_lesion=True)


def _check_manifest(store: LabelSource, manifest: pd.DataFrame, labels: pd.DataFrame,
                    needs: list[str]) -> None:
    if not isinstance(manifest, pd.DataFrame):
        raise LabelStoreError("manifest_df must be the manifest DataFrame (read_manifest)")
    missing = [c for c in needs if c not in manifest.columns]
    if missing:
        raise LabelStoreError(f"the manifest lacks column(s) {', '.join(missing)}")
    info = store.info()
    mh = manifest.attrs.get("data_hash")
    if info["dataset_kind"] == "manifest" and mh and mh != info["dataset_hash"]:
        raise LabelStoreError(
            f"the manifest is dataset {mh} but the label store holds dataset "
            f"{info['dataset_hash']}; export with the run's own manifest"
        )
    absent = sorted(set(labels["lesion_id"]) - set(manifest["lesion_id"]))
    if absent:
        raise LabelStoreError(
            f"the manifest lacks {len(absent)} labelled lesion(s): "
            f"{', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''}; "
            "export with the run's own manifest"
        )


def export_coco(
    store: LabelSource,
    path: str | Path,
    manifest_df: pd.DataFrame,
    *,
    snapshot: int | str | None = None,
) -> Path:
    """Write a COCO detection JSON of the manifest's key images and boxes, with current labels.

    ``images``: every key image of the manifest (``file_name`` is the path below the images
    root, ``dl_file_name`` the DeepLesion name). ``annotations``: one per lesion except those
    labelled ``not a lesion``; ``bbox`` is ``[x, y, w, h]`` in pixels, plus ``lesion_id``,
    ``label``, ``label_source`` and the 8 RECIST coordinates. ``categories``: the taxonomy's
    classes in use (ids from :mod:`deeplesion_lab.labels.taxonomy`; 0 = unlabeled).
    """
    path = Path(path)
    labels = labels_for_export(store, snapshot)
    manifest_df = _with_added(store, manifest_df)
    _check_manifest(store, manifest_df, labels,
                    ["lesion_id", "file_name", *_BOX, "image_width", "image_height"])
    m = manifest_df.sort_values(["file_name", "lesion_id"], kind="stable").reset_index(drop=True)
    cur = labels.set_index("lesion_id")
    classes = store.classes()
    class_ids = dict(zip(classes["name"], classes["class_id"], strict=True))
    colors = dict(zip(classes["name"], classes["color"], strict=True))

    files = pd.unique(m["file_name"])
    image_id = {f: i + 1 for i, f in enumerate(files)}
    first = m.drop_duplicates("file_name").set_index("file_name")
    if "image_path" in m.columns:
        rel = dict(zip(m["file_name"], m["image_path"].astype(str), strict=True))
    else:
        rel = {f: str(key_slice_path(Path("."), f)) for f in files}
    images = [
        {
            "id": image_id[f],
            "file_name": rel[f],
            "dl_file_name": f,
            "width": int(first.at[f, "image_width"]),
            "height": int(first.at[f, "image_height"]),
        }
        for f in files
    ]
    annotations = []
    used: set[str] = set()
    n_not_lesion = 0
    has_recist = all(c in m.columns for c in _RECIST)
    for row in m.itertuples(index=False):
        lid = row.lesion_id
        if lid in cur.index:
            label = cur.at[lid, "label"]
            source = cur.at[lid, "source"] if "source" in cur.columns else None
        else:
            label, source = None, None
        if label is None or (isinstance(label, float) and math.isnan(label)):
            label = UNLABELED_NAME
        if label == NOT_A_LESION:
            n_not_lesion += 1
            continue
        used.add(label)
        x1, y1, x2, y2 = (float(getattr(row, c)) for c in _BOX)
        ann = {
            "id": len(annotations) + 1,
            "image_id": image_id[row.file_name],
            "category_id": int(class_ids.get(label, 0)),
            "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
            "area": round((x2 - x1) * (y2 - y1), 3),
            "iscrowd": 0,
            "lesion_id": lid,
            "label": label,
            "label_source": source,
        }
        if has_recist:
            ann["recist"] = [round(float(getattr(row, c)), 3) for c in _RECIST]
        annotations.append(ann)
    categories = [
        {"id": int(cid), "name": name, "color": colors[name]}
        for name, cid in class_ids.items()
        if name in used
    ]
    if UNLABELED_NAME in used:
        categories.insert(0, {"id": 0, "name": UNLABELED_NAME, "color": "#bbbbbb"})
    doc = {
        "info": {
            "description": "DeepLesion key-slice boxes with labels from the deeplesion-lab "
            "label store",
            "date_created": datetime.now(UTC).isoformat(timespec="seconds"),
            "dataset_hash": store.dataset_hash,
            "run_id": labels.attrs.get("run_id") or store.run_id,
            "event_id": labels.attrs.get("event_id"),
            "snapshot_id": labels.attrs.get("snapshot_id"),
            "n_not_a_lesion_left_out": n_not_lesion,
            "contributor": "NIH Clinical Center (DeepLesion); corrections by deeplesion-lab users",
        },
        "images": images,
        "annotations": annotations,
        "categories": sorted(categories, key=lambda c: c["id"]),
    }
    return write_json(doc, path)


def _num(v: float) -> str:
    """A number as the official file writes it: integers without a decimal point."""
    v = float(v)
    if v.is_integer():
        return str(int(v))
    return repr(v)


def _join(df: pd.DataFrame, cols: list[str]) -> list[str]:
    arr = df[cols].to_numpy(dtype=float)
    return [", ".join(_num(v) for v in row) for row in arr]


def export_dl_info(
    store: LabelSource,
    path: str | Path,
    manifest_df: pd.DataFrame,
    *,
    snapshot: int | str | None = None,
    not_lesion: str = "drop",
    pseudo: str = "none",
) -> Path:
    """Write the manifest back as a ``DL_info.csv`` (the 18 official columns, official order)
    with ``Coarse_lesion_type`` replaced by corrected types.

    Parameters
    ----------
    not_lesion : {"drop", "flag"}
        Lesions labelled ``not a lesion``: leave the row out, or keep it with
        ``Possibly_noisy`` = 1.
    pseudo : {"none", "fill", "all"}
        Which pseudo-labels (uncorrected) replace the type: none, only where the official
        type is -1, or everywhere.

    Notes
    -----
    Rows follow the source file's order (``source_line``). A box that the reader clipped to
    the image is written clipped. User-added classes and ``unsure`` keep the original code (see
    the module docstring); the label export holds the class names.
    """
    if not_lesion not in ("drop", "flag"):
        raise LabelStoreError(f"not_lesion must be 'drop' or 'flag' (got {not_lesion!r})")
    if pseudo not in ("none", "fill", "all"):
        raise LabelStoreError(f"pseudo must be 'none', 'fill' or 'all' (got {pseudo!r})")
    path = Path(path)
    labels = labels_for_export(store, snapshot)
    manifest_df = _with_added(store, manifest_df)
    _check_manifest(store, manifest_df, labels, _DL_INFO_NEEDS)
    m = manifest_df
    if "source_line" in m.columns:  # added lesions (source_line 0) after the source's rows
        m = m.sort_values("source_line", kind="stable",
                          key=lambda s: s.where(s > 0, np.iinfo(np.int64).max))
    m = m.reset_index(drop=True)
    lab = labels.set_index("lesion_id")
    cur = lab["label"].reindex(m["lesion_id"]).to_numpy(dtype=object)
    src = lab["source"].reindex(m["lesion_id"]).to_numpy(dtype=object)
    code = m["coarse_type"].to_numpy(dtype=np.int64).copy()
    noisy = m["possibly_noisy"].to_numpy().astype(np.int64)
    keep = np.ones(len(m), dtype=bool)
    for i, (label, source) in enumerate(zip(cur, src, strict=True)):
        if not isinstance(label, str):
            continue
        if label == NOT_A_LESION:
            if not_lesion == "drop":
                keep[i] = False
            else:
                noisy[i] = 1
            continue
        if label == UNSURE:
            noisy[i] = 1
            continue
        if label not in TYPE_CODES or label == UNLABELED_NAME:
            continue  # user class: keep the official code
        if source == "corrected" or pseudo == "all" or (
            pseudo == "fill" and code[i] == UNLABELED
        ):
            code[i] = TYPE_CODES[label]
    age = m["age"]
    out = pd.DataFrame(
        {
            "File_name": m["file_name"].astype(str),
            "Patient_index": m["patient_index"].astype(np.int64).astype(str),
            "Study_index": m["study_index"].astype(np.int64).astype(str),
            "Series_ID": m["series_id"].astype(np.int64).astype(str),
            "Key_slice_index": m["key_slice_index"].astype(np.int64).astype(str),
            "Measurement_coordinates": _join(m, _RECIST),
            "Bounding_boxes": _join(m, _BOX),
            "Lesion_diameters_Pixel_": _join(m, ["long_diameter_px", "short_diameter_px"]),
            "Normalized_lesion_location": _join(m, ["location_x", "location_y", "location_z"]),
            "Coarse_lesion_type": code.astype(str),
            "Possibly_noisy": noisy.astype(str),
            "Slice_range": _join(m, ["slice_start", "slice_end"]),
            "Spacing_mm_px_": _join(m, ["spacing_x", "spacing_y", "spacing_z"]),
            "Image_size": _join(m, ["image_height", "image_width"]),
            "DICOM_windows": _join(m, ["window_low", "window_high"]),
            "Patient_gender": m["gender"].astype(object).where(m["gender"].notna(), ""),
            "Patient_age": [
                "" if pd.isna(a) else _num(a) for a in age.astype(object).to_numpy()
            ],
            "Train_Val_Test": m["split"].astype(np.int64).astype(str),
        }
    )[list(OFFICIAL_COLUMNS)]
    return write_csv(out[keep], path)
