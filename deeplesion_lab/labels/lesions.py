"""Lesions people add to a dataset (accepted proposals of the lesion graph), kept by the store.

DeepLesion marks one lesion per key slice where several are visible; the lesion graph proposes
the others (:mod:`deeplesion_lab.graph.missing`). A person who accepts a proposal adds a lesion:
:meth:`AddedLesionsMixin.add_lesions` records it as one event of the log (``add_lesions``: who,
when, which tool) with its geometry (key slice, box, RECIST points) in the append-only table
``added_lesions``, and gives it a current label (source ``"added"``) that can then be relabelled,
marked "not a lesion" (the way to retract one) or undone like any other label change.

:func:`manifest_with_added` turns the added lesions into manifest rows, so that fine-tuning,
exports and viewers see them like the original annotations.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ..dl_info import BOX_COLUMNS, RECIST_COLUMNS
from . import schema
from .base import StoreBase
from .checks import check_comment, check_text, check_user
from .errors import LabelStoreError
from .events import ChangeEvent

__all__ = ["AddedLesionsMixin", "ADDED_COLUMNS", "manifest_with_added"]

_INT_COLS = ("patient_index", "study_index", "series_id", "key_slice_index")

#: Columns of :meth:`AddedLesionsMixin.added_lesions`.
ADDED_COLUMNS: tuple[str, ...] = (
    "lesion_id", *schema.ADDED_LESION_COLUMNS, "label", "source", "added_by", "added_at",
    "event_id",
)


def _rows(df: pd.DataFrame, default_label: str | None, default_origin: str,
          classes: set[str]) -> list[tuple]:
    """Validated ``(lesion_id, label, *geometry)`` rows; errors name the row and the field."""
    if not isinstance(df, pd.DataFrame):
        raise LabelStoreError("lesions must be a DataFrame (lesion_id, file_name, key slice, box)")
    need = ["lesion_id", "file_name", *_INT_COLS, *BOX_COLUMNS]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise LabelStoreError(
            f"lesions lack column(s) {', '.join(missing)}; nothing was written"
        )
    if df.empty:
        raise LabelStoreError("no lesions to add (empty table); nothing was written")
    out: list[tuple] = []
    seen: set[str] = set()
    for k, r in enumerate(df.to_dict("records")):
        lid = r["lesion_id"]
        where = f"lesions row {k} (lesion_id {lid!r})"
        if not isinstance(lid, str) or not lid.strip() or len(lid) > 256:
            raise LabelStoreError(f"lesions row {k}: lesion_id must be non-empty text, got {lid!r}")
        if lid in seen:
            raise LabelStoreError(f"{where}: lesion_id appears twice; nothing was written")
        seen.add(lid)
        fname = r["file_name"]
        if not isinstance(fname, str) or not fname.endswith(".png"):
            raise LabelStoreError(f"{where}: file_name must be a key slice name, got {fname!r}")
        ints = []
        for c in _INT_COLS:
            v = r[c]
            if v is None or (isinstance(v, float) and not v.is_integer()) or pd.isna(v) \
                    or int(v) < 0:
                raise LabelStoreError(f"{where}: {c} must be a whole number >= 0, got {v!r}")
            ints.append(int(v))
        nums = {}
        for c in (*BOX_COLUMNS, *RECIST_COLUMNS, "score"):
            v = r.get(c)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                if c in BOX_COLUMNS:
                    raise LabelStoreError(f"{where}: {c} is missing")
                nums[c] = None
                continue
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise LabelStoreError(f"{where}: {c} = {v!r} is not a number") from None
            if not math.isfinite(f):
                raise LabelStoreError(f"{where}: {c} = {v!r} is not a finite number")
            nums[c] = f
        if nums["bbox_x2"] <= nums["bbox_x1"] or nums["bbox_y2"] <= nums["bbox_y1"]:
            raise LabelStoreError(
                f"{where}: the box ({nums['bbox_x1']}, {nums['bbox_y1']}, {nums['bbox_x2']}, "
                f"{nums['bbox_y2']}) is empty (x2 must exceed x1, y2 exceed y1)"
            )
        label = r.get("label", default_label)
        if label is None or (isinstance(label, float) and math.isnan(label)) or label is pd.NA:
            label = default_label
        if label is not None and label not in classes:
            raise LabelStoreError(
                f"{where}: unknown class {label!r}; add it first (add_class) or give one of "
                f"{', '.join(sorted(classes))}; nothing was written"
            )
        origin = r.get("origin") or default_origin
        out.append((lid, label, fname, *ints, *(nums[c] for c in (*BOX_COLUMNS, *RECIST_COLUMNS)),
                    nums["score"], str(origin)))
    return out


def _same_geometry(a: tuple, b: tuple) -> bool:
    """Whether two stored geometries (``ADDED_LESION_COLUMNS`` values) are the same lesion: the
    same key slice and box (RECIST points, score and origin may differ)."""
    n = 5 + len(BOX_COLUMNS)
    for x, y in zip(a[:n], b[:n], strict=True):
        if isinstance(x, float) or isinstance(y, float):
            if x is None or y is None:
                if x is not y:
                    return False
            elif not math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-6):
                return False
        elif x != y and not (x is None and y is None):
            return False
    return True


class AddedLesionsMixin(StoreBase):
    """Methods of :class:`~deeplesion_lab.labels.store.LabelStore` (lesions people add)."""

    def add_lesions(
        self,
        lesions: pd.DataFrame,
        user: str,
        *,
        label: str | None = None,
        tool: str = "api",
        comment: str | None = None,
        origin: str = "proposal",
    ) -> int | None:
        """Add lesions to the dataset, with their geometry, as one event.

        Parameters
        ----------
        lesions : pandas.DataFrame
            ``lesion_id``, ``file_name``, ``patient_index``, ``study_index``, ``series_id``,
            ``key_slice_index``, ``bbox_x1..bbox_y2`` (pixels of the key slice); optional
            ``recist_x1..recist_y4``, ``score`` (detector score), ``label`` (per lesion),
            ``origin``.
        user : str
            Who adds them (recorded with the time).
        label : str, optional
            Class of lesions without their own ``label`` (None: no type yet).
        tool, comment, origin : str, optional

        Returns
        -------
        int or None
            The event id; None when every lesion was already added (adding is idempotent, so
            accepting a proposal twice changes nothing).

        Raises
        ------
        LabelStoreError
            Missing columns, bad values (the row and field are named), duplicate ids, an id
            that is already a lesion of the dataset, an unknown class. Nothing is written.
        """
        user = check_user(user)
        tool = check_text(tool, "tool")
        comment = check_comment(comment)
        db = self._db
        rows = _rows(lesions, label, origin, set(self._class_names()))
        with self._tx() as events:
            self._require_dataset()
            ids = [r[0] for r in rows]
            db.fill_selection(ids)
            # ids the dataset has already: added earlier (skipped) or original lesions (an error)
            present = db.query(
                "SELECT c.lesion_id, a.lesion_id IS NOT NULL FROM sel_ids s "
                "JOIN labels_current c ON c.lesion_id = s.lesion_id "
                "LEFT JOIN added_lesions a ON a.lesion_id = s.lesion_id"
            )
            added = {lid for lid, was_added in present if was_added}
            clash = sorted(lid for lid, was_added in present if not was_added)
            if clash:
                raise LabelStoreError(
                    f"{len(clash)} lesion id(s) are lesions of the dataset already, not new "
                    f"ones: {', '.join(clash[:5])}; nothing was written"
                )
            new = [r for r in rows if r[0] not in added]
            if not new:
                return None
            # added before and taken out again by an undo: the geometry is kept (append-only),
            # so the same lesion comes back; another box under the same id is an error
            geo = ", ".join(schema.ADDED_LESION_COLUMNS)
            kept = {r[0]: r[1:] for r in db.query(
                f"SELECT a.lesion_id, {geo} FROM sel_ids s "
                "JOIN added_lesions a ON a.lesion_id = s.lesion_id"
            )}
            for r in new:
                if r[0] in kept and not _same_geometry(kept[r[0]], r[2:]):
                    raise LabelStoreError(
                        f"lesion id {r[0]!r} was added before (then undone) with another key "
                        "slice or box; give the new lesion another id; nothing was written"
                    )
            labels = sorted({r[1] for r in new if r[1] is not None})
            bid = self._insert_batch(
                "add_lesions", user, tool, comment, len(new),
                {"n_lesions": len(new), "labels": labels, "origin": origin},
            )
            db.bulk_insert(
                "labels_current",
                ["lesion_id", "label", "cluster", "confidence", "source", "last_batch"],
                [(r[0], r[1], None, 1.0, "added", bid) for r in new],
            )
            db.bulk_insert(
                "changes",
                ["batch_id", "lesion_id", "label_before", "label_after", "cluster_before",
                 "cluster_after", "confidence_before", "confidence_after", "source_before",
                 "source_after", "last_before", "last_after"],
                [(bid, r[0], None, r[1], None, None, None, 1.0, None, "added", None, bid)
                 for r in new],
            )
            db.bulk_insert(
                "added_lesions",
                ["lesion_id", "batch_id", *schema.ADDED_LESION_COLUMNS],
                [(r[0], bid, *r[2:]) for r in new if r[0] not in kept],
            )
            events.append(ChangeEvent(bid, "add_lesions", user, tuple(r[0] for r in new),
                                      labels[0] if len(labels) == 1 else None))
        return bid

    def added_lesions(self) -> pd.DataFrame:
        """Lesions people added, with their geometry and current label.

        Returns
        -------
        pandas.DataFrame
            :data:`ADDED_COLUMNS`, sorted by lesion id: geometry, ``label`` and ``source`` (the
            current label: ``"added"`` until relabelled, ``"corrected"`` after), ``added_by``,
            ``added_at`` and ``event_id`` (the ``add_lesions`` event).
        """
        geo = ", ".join(f"a.{c}" for c in schema.ADDED_LESION_COLUMNS)
        # the lesions in the dataset now (an undone add is not), with their latest add event
        rows = self._db.query(
            f"SELECT a.lesion_id, {geo}, c.label, c.source, b.user_name, b.created_at, b.id "
            "FROM added_lesions a JOIN labels_current c ON c.lesion_id = a.lesion_id "
            "JOIN (SELECT ch.lesion_id, MAX(ch.batch_id) AS bid FROM changes ch "
            "JOIN batches ab ON ab.id = ch.batch_id WHERE ab.op = 'add_lesions' "
            "GROUP BY ch.lesion_id) last ON last.lesion_id = a.lesion_id "
            "JOIN batches b ON b.id = last.bid "
            f"ORDER BY a.lesion_id{self._db.collate}"
        )
        df = pd.DataFrame(rows, columns=list(ADDED_COLUMNS))
        for c in _INT_COLS:
            df[c] = df[c].astype("int64")
        for c in (*BOX_COLUMNS, *RECIST_COLUMNS, "score"):
            df[c] = df[c].astype(float)
        df["added_at"] = pd.to_datetime(df["added_at"], utc=True, format="ISO8601")
        return df

    def _added_ids(self) -> set[str]:
        return {r[0] for r in self._db.query("SELECT lesion_id FROM added_lesions")}


def manifest_with_added(manifest: pd.DataFrame, added: pd.DataFrame, *,
                        keep_not_lesion: bool = False) -> pd.DataFrame:
    """The manifest plus the added lesions as manifest rows.

    Per-image columns (split, spacing, slice range, image size, window, patient data, image
    path) come from an annotated lesion of the same key slice (proposals are found on annotated
    slices), else of the same series. Diameters come from the RECIST points (the box when there
    are none); the normalised location is the box centre over the image size in x and y and the
    key slice's annotated lesion's z (an approximation: DeepLesion's is body-relative);
    ``coarse_type`` is the label's DeepLesion type or -1; ``source_line`` is 0 (not from a
    CSV). Lesions whose current label is "not a lesion" are left out unless ``keep_not_lesion``.

    Raises
    ------
    LabelStoreError
        An added lesion on a series the manifest does not have (nothing to take the image's
        properties from), or an id the manifest already has.
    """
    from ..lesion_types import TYPE_CODES, UNLABELED, UNLABELED_NAME, type_name
    from .taxonomy import NOT_A_LESION

    if added is None or added.empty:
        return manifest
    add = added
    if not keep_not_lesion:
        add = add[add["label"].astype(object) != NOT_A_LESION]
    if add.empty:
        return manifest
    dup = sorted(set(add["lesion_id"]) & set(manifest["lesion_id"].astype(str)))
    if dup:
        raise LabelStoreError(f"added lesion id(s) already in the manifest: {', '.join(dup[:5])}")
    by_file = manifest.drop_duplicates("file_name").set_index("file_name")
    series_key = ["patient_index", "study_index", "series_id"]
    by_series = manifest.drop_duplicates(series_key).set_index(series_key)
    rows: list[dict[str, Any]] = []
    for r in add.to_dict("records"):
        fname = r["file_name"]
        if fname in by_file.index:
            base = by_file.loc[fname].to_dict()
        else:
            key = (r["patient_index"], r["study_index"], r["series_id"])
            if key not in by_series.index:
                raise LabelStoreError(
                    f"added lesion {r['lesion_id']}: series {key} of {fname} is not in the "
                    "manifest; nothing to take its image's properties from"
                )
            base = by_series.loc[key].to_dict()
            base["file_name"] = fname
            base["image_path"] = str(base["image_path"]).rsplit("/", 1)[0] + "/" + \
                fname.rsplit("_", 1)[-1]
        row = dict(base, file_name=fname)
        row["lesion_id"] = r["lesion_id"]
        row["key_slice_index"] = int(r["key_slice_index"])
        box = np.array([r[c] for c in BOX_COLUMNS], dtype=float)
        rec = np.array([r.get(c, np.nan) for c in RECIST_COLUMNS], dtype=float)
        for c in BOX_COLUMNS:
            row[c] = float(r[c])
        for c, v in zip(RECIST_COLUMNS, rec, strict=True):
            row[c] = float(v)
        if np.isfinite(rec).all():
            p = rec.reshape(4, 2)
            long_d = float(np.hypot(*(p[0] - p[1])))
            short_d = float(np.hypot(*(p[2] - p[3])))
        else:
            w, h = box[2] - box[0], box[3] - box[1]
            long_d, short_d = float(max(w, h)), float(min(w, h))
        row["long_diameter_px"], row["short_diameter_px"] = long_d, short_d
        row["box_clipped"] = False
        row["location_x"] = float((box[0] + box[2]) / 2 / max(int(row["image_width"]), 1))
        row["location_y"] = float((box[1] + box[3]) / 2 / max(int(row["image_height"]), 1))
        label = r.get("label")
        tid = TYPE_CODES.get(label, UNLABELED) if isinstance(label, str) else UNLABELED
        row["coarse_type"] = tid
        row["coarse_type_name"] = type_name(tid) if tid != UNLABELED else UNLABELED_NAME
        row["possibly_noisy"] = False
        row["source_line"] = 0
        rows.append(row)
    extra = pd.DataFrame(rows)[list(manifest.columns)].astype(manifest.dtypes.to_dict())
    out = pd.concat([manifest, extra], ignore_index=True)
    out.attrs = dict(manifest.attrs)
    out.attrs["n_added_lesions"] = len(extra)
    return out
