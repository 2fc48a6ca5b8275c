"""Read and validate ``DL_info.csv``, DeepLesion's lesion table.

The official file has 18 columns, several of which pack several numbers into one quoted cell
(``"226.169, 90.0204, 241.252, 111.977"``). :func:`read_dl_info` splits and types every field,
checks each row, keeps every valid row and reports every rejected one with its 1-based line
number, the column, the offending value and the reason. Extra columns written by other tools are
kept as text.

Examples
--------
>>> info = read_dl_info("DL_info.csv")                      # doctest: +SKIP
>>> info.lesions[["lesion_id", "coarse_type_name", "long_diameter_px"]].head()  # doctest: +SKIP
>>> info.rejected                                           # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import LabError
from .lesion_types import COARSE_TYPES, SPLITS, UNLABELED, UNLABELED_NAME

__all__ = [
    "OFFICIAL_COLUMNS",
    "DLInfo",
    "DLInfoError",
    "read_dl_info",
    "make_lesion_id",
    "BOX_TOLERANCE_PX",
    "RECIST_COLUMNS",
    "BOX_COLUMNS",
    "FILE_NAME_RE",
]

#: Typed names of the 8 RECIST coordinates (``Measurement_coordinates``), x1, y1, ... y4.
RECIST_COLUMNS: tuple[str, ...] = tuple(f"recist_{a}{i}" for i in range(1, 5) for a in "xy")
#: Typed names of the box (``Bounding_boxes``).
BOX_COLUMNS: tuple[str, ...] = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")
#: A DeepLesion key slice name, ``{patient}_{study}_{series}_{slice}.png`` (the 4 numbers).
FILE_NAME_RE = re.compile(r"^(\d+)_(\d+)_(\d+)_(\d+)\.png$")

#: The 18 columns of the official ``DL_info.csv``, in order.
OFFICIAL_COLUMNS: tuple[str, ...] = (
    "File_name",
    "Patient_index",
    "Study_index",
    "Series_ID",
    "Key_slice_index",
    "Measurement_coordinates",
    "Bounding_boxes",
    "Lesion_diameters_Pixel_",
    "Normalized_lesion_location",
    "Coarse_lesion_type",
    "Possibly_noisy",
    "Slice_range",
    "Spacing_mm_px_",
    "Image_size",
    "DICOM_windows",
    "Patient_gender",
    "Patient_age",
    "Train_Val_Test",
)

#: How far (pixels) a box may reach past the image border and still be clipped rather than
#: rejected. The release pads every box by about 5 px around the RECIST end points.
BOX_TOLERANCE_PX = 10.0

#: column -> (output names, integer?). Multi-value cells split on commas.
_NUMERIC: dict[str, tuple[tuple[str, ...], bool]] = {
    "Patient_index": (("patient_index",), True),
    "Study_index": (("study_index",), True),
    "Series_ID": (("series_id",), True),
    "Key_slice_index": (("key_slice_index",), True),
    "Measurement_coordinates": (RECIST_COLUMNS, False),
    "Bounding_boxes": (BOX_COLUMNS, False),
    "Lesion_diameters_Pixel_": (("long_diameter_px", "short_diameter_px"), False),
    "Normalized_lesion_location": (("location_x", "location_y", "location_z"), False),
    "Coarse_lesion_type": (("coarse_type",), True),
    "Possibly_noisy": (("possibly_noisy",), True),
    "Slice_range": (("slice_start", "slice_end"), True),
    "Spacing_mm_px_": (("spacing_x", "spacing_y", "spacing_z"), False),
    "Image_size": (("image_height", "image_width"), True),
    "DICOM_windows": (("window_low", "window_high"), False),
    "Train_Val_Test": (("split",), True),
}

#: Typed columns of :attr:`DLInfo.lesions`, in order (extra source columns follow).
LESION_COLUMNS: tuple[str, ...] = (
    "lesion_id",
    "file_name",
    "patient_index",
    "study_index",
    "series_id",
    "key_slice_index",
    *_NUMERIC["Measurement_coordinates"][0],
    "bbox_x1",
    "bbox_y1",
    "bbox_x2",
    "bbox_y2",
    "box_clipped",
    "long_diameter_px",
    "short_diameter_px",
    "location_x",
    "location_y",
    "location_z",
    "coarse_type",
    "coarse_type_name",
    "possibly_noisy",
    "slice_start",
    "slice_end",
    "spacing_x",
    "spacing_y",
    "spacing_z",
    "image_height",
    "image_width",
    "window_low",
    "window_high",
    "gender",
    "age",
    "split",
    "split_name",
    "source_line",
)


class DLInfoError(LabError, ValueError):
    """A ``DL_info.csv`` cannot be read at all (missing file, unreadable, missing column)."""


@dataclass
class DLInfo:
    """The result of reading a ``DL_info.csv``.

    Attributes
    ----------
    lesions : pandas.DataFrame
        One typed row per valid lesion (columns :data:`LESION_COLUMNS`, then extra columns).
    rejected : pandas.DataFrame
        One row per problem found: ``line`` (1-based, the header is line 1), ``file_name``,
        ``column``, ``value``, ``reason``. A row with several problems appears several times.
    source : pathlib.Path
        The file read.
    extra_columns : list of str
        Source columns beyond the 18 official ones, kept as text.
    """

    lesions: pd.DataFrame
    rejected: pd.DataFrame
    source: Path
    extra_columns: list[str] = field(default_factory=list)

    @property
    def n_rejected_rows(self) -> int:
        """Number of distinct source rows rejected."""
        return int(self.rejected["line"].nunique()) if len(self.rejected) else 0

    def summary(self) -> str:
        """A one-line human summary: counts of lesions, images, patients and rejections."""
        les = self.lesions
        return (
            f"{self.source.name}: {len(les)} lesions on {les['file_name'].nunique()} key images "
            f"of {les['patient_index'].nunique()} patients; {self.n_rejected_rows} rows rejected"
            f"; {int(les['box_clipped'].sum())} boxes clipped to the image"
        )


def make_lesion_id(file_name: str, recist: Sequence[float]) -> str:
    """Stable lesion id from the key image name and the RECIST end points.

    ``"000001_01_01_109.png"`` with its 8 coordinates gives ``"000001_01_01_109-1a2b3c4d"``:
    readable (patient, study, series, slice) and unique per lesion on the image. The same CSV
    read twice, in any row order, gives the same ids.
    """
    stem = file_name[:-4] if file_name.endswith(".png") else file_name
    key = ",".join(f"{float(v):.2f}" for v in recist)
    digest = hashlib.sha1(f"{stem}|{key}".encode()).hexdigest()[:8]
    return f"{stem}-{digest}"


def _read_raw(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DLInfoError(f"{path}: no such file")
    if path.is_dir():
        raise DLInfoError(f"{path}: is a directory, expected a DL_info.csv file")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except UnicodeDecodeError as exc:
        raise DLInfoError(f"{path}: not a text CSV file ({exc.reason})") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as exc:
        line = unbalanced_quote_line(path) if isinstance(exc, pd.errors.ParserError) else None
        where = f" (line {line}: a quote opens there and never closes)" if line else ""
        reason = " ".join(str(exc).split())
        raise DLInfoError(f"{path}: cannot be read as CSV: {reason}{where}") from exc
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [c for c in OFFICIAL_COLUMNS if c not in raw.columns]
    if missing:
        raise DLInfoError(
            f"{path}: missing required column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)} (a DL_info.csv has {len(OFFICIAL_COLUMNS)} columns: "
            f"{', '.join(OFFICIAL_COLUMNS)})"
        )
    if raw.empty:
        raise DLInfoError(f"{path}: no rows: the file has a header but no lesions")
    multiline = raw.apply(lambda c: c.str.contains("[\r\n]", regex=True)).to_numpy().any()
    if multiline:  # a stray quote swallowed line ends: rows would be silently merged
        line = unbalanced_quote_line(path)
        raise DLInfoError(
            f"{path}, line {line}: a quote opens here and does not close on the same line "
            "(each DL_info row is one line); fix or remove the stray '\"'; nothing was read"
        )
    return raw


def unbalanced_quote_line(path: Path) -> int | None:
    """The first line (1-based) with an odd number of quotes, where a quoted field stays open
    past the end of the line (None: every line balanced). DL_info values never hold a quote."""
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        for number, line in enumerate(fh, start=1):
            if line.count('"') % 2:
                return number
    return None


class _Problems:
    """Collects (row position, column, reason) triples, vectorised by masks."""

    def __init__(self, raw: pd.DataFrame):
        self.raw = raw
        self.parts: list[pd.DataFrame] = []

    def add(self, mask: np.ndarray | pd.Series, column: str, reason: str | pd.Series) -> None:
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        idx = np.flatnonzero(mask)
        if isinstance(reason, pd.Series):
            reasons = reason.to_numpy()[idx]
        else:
            reasons = np.full(len(idx), reason, dtype=object)
        self.parts.append(
            pd.DataFrame(
                {
                    "pos": idx,
                    "column": column,
                    "value": self.raw[column].to_numpy()[idx] if column in self.raw else "",
                    "reason": reasons,
                }
            )
        )

    def frame(self) -> pd.DataFrame:
        if not self.parts:
            return pd.DataFrame(columns=["pos", "column", "value", "reason"])
        return pd.concat(self.parts, ignore_index=True)


def _split_numeric(
    raw: pd.DataFrame, column: str, names: tuple[str, ...], integer: bool, problems: _Problems
) -> pd.DataFrame:
    """Split one packed cell into ``len(names)`` numbers; record malformed cells."""
    text = raw[column].str.strip()
    n = len(names)
    if n == 1:
        pieces = text.to_frame(name=0)
        counts = pd.Series(np.where(text == "", 0, 1), index=text.index)
    else:
        pieces = text.str.split(",", expand=True, regex=False)
        if pieces.shape[1] < n:
            for k in range(pieces.shape[1], n):
                pieces[k] = None
        counts = pieces.notna().sum(axis=1)
    out = pd.DataFrame(index=raw.index)
    bad_count = (counts != n).to_numpy()
    problems.add(
        bad_count,
        column,
        f"expected {n} comma-separated number{'s' if n > 1 else ''}",
    )
    bad_num = np.zeros(len(raw), dtype=bool)
    for k, name in enumerate(names):
        col = pieces[k].astype("string").str.strip()
        num = pd.to_numeric(col, errors="coerce")
        bad = (num.isna() | ~np.isfinite(num.astype(float))).to_numpy() & ~bad_count
        if integer:
            frac = (num - np.round(num)).abs()
            bad |= (frac > 1e-9).fillna(False).to_numpy() & ~bad_count
        bad_num |= bad
        out[name] = num.astype(float)
    problems.add(bad_num, column, "malformed number" if n == 1 else "malformed number in list")
    return out


def read_dl_info(
    path: str | Path,
    *,
    box_tolerance: float = BOX_TOLERANCE_PX,
) -> DLInfo:
    """Read a ``DL_info.csv`` in the official DeepLesion format.

    Parameters
    ----------
    path : str or pathlib.Path
        The CSV file.
    box_tolerance : float, default 10
        Boxes reaching at most this many pixels past the image border are clipped to it (and
        flagged ``box_clipped``); boxes further out are rejected.

    Returns
    -------
    DLInfo
        Valid lesions (typed) and the rejected rows with reasons.

    Raises
    ------
    DLInfoError
        The file is missing or unreadable, or lacks a required column.
    """
    path = Path(path)
    raw = _read_raw(path)
    problems = _Problems(raw)
    n = len(raw)

    parsed = [
        _split_numeric(raw, col, names, integer, problems)
        for col, (names, integer) in _NUMERIC.items()
    ]
    t = pd.concat(parsed, axis=1)

    fname = raw["File_name"].str.strip()
    m = fname.str.extract(FILE_NAME_RE)
    bad_name = m[0].isna().to_numpy()
    problems.add(bad_name, "File_name", "expected {patient}_{study}_{series}_{slice}.png")
    name_nums = m.astype(float)
    for k, col, tcol in [
        (0, "Patient_index", "patient_index"),
        (1, "Study_index", "study_index"),
        (2, "Series_ID", "series_id"),
        (3, "Key_slice_index", "key_slice_index"),
    ]:
        mismatch = (~bad_name) & t[tcol].notna().to_numpy() & (
            name_nums[k].to_numpy() != t[tcol].to_numpy()
        )
        problems.add(mismatch, col, "does not match File_name")

    # Value checks (NaNs compare False, so malformed cells are not reported twice).
    ctype = t["coarse_type"]
    problems.add(
        ctype.notna() & ~ctype.isin([UNLABELED, *COARSE_TYPES]),
        "Coarse_lesion_type",
        "unknown coarse type code (expected -1 or 1-8)",
    )
    problems.add(
        t["split"].notna() & ~t["split"].isin(list(SPLITS)),
        "Train_Val_Test",
        "unknown split (expected 1 train, 2 val or 3 test)",
    )
    problems.add(
        t["possibly_noisy"].notna() & ~t["possibly_noisy"].isin([0, 1]),
        "Possibly_noisy",
        "expected 0 or 1",
    )
    problems.add(
        (t["long_diameter_px"] <= 0) | (t["short_diameter_px"] <= 0),
        "Lesion_diameters_Pixel_",
        "diameter must be positive",
    )
    problems.add(
        (t["spacing_x"] <= 0) | (t["spacing_y"] <= 0) | (t["spacing_z"] <= 0),
        "Spacing_mm_px_",
        "spacing must be positive",
    )
    problems.add(
        (t["image_height"] <= 0) | (t["image_width"] <= 0), "Image_size", "size must be positive"
    )
    problems.add(t["slice_start"] > t["slice_end"], "Slice_range", "start after end")
    problems.add(
        (t["key_slice_index"] < t["slice_start"]) | (t["key_slice_index"] > t["slice_end"]),
        "Key_slice_index",
        "key slice outside Slice_range",
    )
    problems.add(
        t["window_low"] >= t["window_high"], "DICOM_windows", "window low must be below high"
    )
    problems.add(
        (t["bbox_x2"] <= t["bbox_x1"]) | (t["bbox_y2"] <= t["bbox_y1"]),
        "Bounding_boxes",
        "box must have x2 > x1 and y2 > y1",
    )
    w, h = t["image_width"], t["image_height"]
    far = (
        (t["bbox_x1"] < -box_tolerance)
        | (t["bbox_y1"] < -box_tolerance)
        | (t["bbox_x2"] > w + box_tolerance)
        | (t["bbox_y2"] > h + box_tolerance)
    )
    problems.add(
        far,
        "Bounding_boxes",
        f"box outside the image (more than {box_tolerance:g} px past the border of Image_size)",
    )
    age_text = raw["Patient_age"].str.strip()
    age = pd.to_numeric(age_text, errors="coerce")
    problems.add(
        ((age_text != "") & (age.isna() | (age < 0) | (age > 130))).to_numpy(),
        "Patient_age",
        "expected an age in years (0-130) or empty",
    )

    # Duplicates: the same key image and RECIST end points twice.
    recist_cols = list(_NUMERIC["Measurement_coordinates"][0])
    ids = np.array(
        [
            make_lesion_id(f, r) if not np.isnan(r).any() else ""
            for f, r in zip(fname.to_numpy(), t[recist_cols].to_numpy(), strict=True)
        ],
        dtype=object,
    )
    id_series = pd.Series(ids, index=raw.index)
    dup = id_series.duplicated(keep="first") & (id_series != "")
    if dup.any():
        first_line = (
            id_series.reset_index(drop=True)
            .pipe(lambda s: s.groupby(s).transform(lambda g: g.index[0] + 2))
            .to_numpy()
        )
        problems.add(
            dup.to_numpy(),
            "Measurement_coordinates",
            pd.Series([f"duplicate of line {int(x)} (same key image and RECIST points)"
                       for x in first_line]),
        )

    pr = problems.frame()
    bad_pos = np.zeros(n, dtype=bool)
    if len(pr):
        bad_pos[pr["pos"].to_numpy(dtype=int)] = True
    rejected = pd.DataFrame(
        {
            "line": pr["pos"].to_numpy(dtype=int) + 2,
            "file_name": fname.to_numpy()[pr["pos"].to_numpy(dtype=int)] if len(pr) else [],
            "column": pr["column"].to_numpy(),
            "value": pr["value"].to_numpy(),
            "reason": pr["reason"].to_numpy(),
        }
    ).sort_values(["line", "column"], kind="stable", ignore_index=True)

    keep = ~bad_pos
    t = t.loc[keep].copy()
    les = pd.DataFrame(index=t.index)
    les["lesion_id"] = ids[keep]
    les["file_name"] = fname[keep]
    for c in ("patient_index", "key_slice_index", "slice_start", "slice_end"):
        t[c] = t[c].astype("int32")
    for c in ("study_index", "series_id", "image_height", "image_width"):
        t[c] = t[c].astype("int16")
    t["coarse_type"] = t["coarse_type"].astype("int8")
    t["split"] = t["split"].astype("int8")
    for c in ("patient_index", "study_index", "series_id", "key_slice_index"):
        les[c] = t[c]
    for c in recist_cols:
        les[c] = t[c]
    # Clip boxes that reach a little past the border (the release pads boxes by ~5 px).
    x1 = t["bbox_x1"].clip(lower=0)
    y1 = t["bbox_y1"].clip(lower=0)
    x2 = np.minimum(t["bbox_x2"], t["image_width"].astype(float))
    y2 = np.minimum(t["bbox_y2"], t["image_height"].astype(float))
    les["bbox_x1"], les["bbox_y1"], les["bbox_x2"], les["bbox_y2"] = x1, y1, x2, y2
    les["box_clipped"] = (
        (x1 != t["bbox_x1"]) | (y1 != t["bbox_y1"]) | (x2 != t["bbox_x2"]) | (y2 != t["bbox_y2"])
    )
    for c in ("long_diameter_px", "short_diameter_px", "location_x", "location_y", "location_z"):
        les[c] = t[c]
    les["coarse_type"] = t["coarse_type"]
    names = {**COARSE_TYPES, UNLABELED: UNLABELED_NAME}
    les["coarse_type_name"] = t["coarse_type"].map(names).astype("string")
    les["possibly_noisy"] = t["possibly_noisy"].astype(bool)
    for c in (
        "slice_start", "slice_end", "spacing_x", "spacing_y", "spacing_z",
        "image_height", "image_width", "window_low", "window_high",
    ):
        les[c] = t[c]
    les["gender"] = raw.loc[keep, "Patient_gender"].str.strip().astype("string")
    les["age"] = age[keep].round().astype("Int16")
    les["split"] = t["split"]
    les["split_name"] = t["split"].map(SPLITS).astype("string")
    les["source_line"] = (np.flatnonzero(keep) + 2).astype("int32")

    extra = [c for c in raw.columns if c not in OFFICIAL_COLUMNS]
    for c in extra:
        name = c if c not in les.columns else f"extra_{c}"
        les[name] = raw.loc[keep, c].astype("string")
    les = les.reset_index(drop=True)
    return DLInfo(lesions=les, rejected=rejected, source=path, extra_columns=extra)
