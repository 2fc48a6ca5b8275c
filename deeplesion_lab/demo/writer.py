"""Writing a demo dataset: the output folder, ``DL_info.csv`` in the official format, the truth
file and a README.

Order matters for safety: a marker file first (so that a re-run recognises the folder), then
the images, then ``truth.parquet`` and the README, and ``DL_info.csv`` last, written atomically.
An interrupted run therefore never leaves a ``DL_info.csv`` that points at missing images.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from ..atomic import atomic_path, write_json, write_parquet
from ..dl_info import OFFICIAL_COLUMNS
from ..errors import LabError

__all__ = [
    "DemoOutputError",
    "MARKER",
    "TRUTH_COLUMNS",
    "fmt",
    "fmt_list",
    "prepare_output",
    "write_dl_info",
    "write_truth",
    "write_readme",
    "finish_marker",
]

#: Marker file that identifies a folder written by the demo generator.
MARKER = ".deeplesion-demo.json"
_OWNED = ("DL_info.csv", "truth.parquet", "README.md", "Images_png", MARKER)

#: Columns of ``truth.parquet`` (the shared contract first, then extras).
TRUTH_COLUMNS: tuple[str, ...] = (
    "truth_id", "track_id", "patient_index", "study_index", "series_id", "file_name",
    "slice_index", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "long_diameter_px",
    "short_diameter_px", "coarse_type", "annotated", "lesion_id",
    # extras
    "coarse_type_name", "site", "appearance", "on_key_image", "possibly_noisy", "split",
    "center_x", "center_y", "first_slice", "last_slice", "mean_hu", "companion_of",
    "study_months", "spacing_x", "spacing_z", "lesion_kind", "related_track",
    "study_rotation_deg",
)


class DemoOutputError(LabError, ValueError):
    """The output folder cannot be used (not empty and not a previous demo output)."""


def fmt(value: float) -> str:
    """A number as the official CSV writes it: 6 significant digits, no exponent."""
    v = float(value)
    if v == 0:
        return "0"
    s = format(v, ".6g")
    if "e" in s:
        s = f"{v:.6f}".rstrip("0").rstrip(".")
    return s


def fmt_list(values: Iterable[float]) -> str:
    """Several numbers packed in one cell: ``"226.169, 90.0204, 241.252, 111.977"``."""
    return ", ".join(fmt(v) for v in values)


def prepare_output(out_dir: str | Path, kind: str, params: dict) -> Path:
    """Make ``out_dir`` ready: create it, or clear a previous demo output in it.

    Raises
    ------
    DemoOutputError
        ``out_dir`` is a file, or a non-empty folder without the demo marker.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DemoOutputError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        marker = out / MARKER
        if not marker.is_file():
            names = sorted(p.name for p in out.iterdir())[:5]
            raise DemoOutputError(
                f"{out}: folder is not empty and is not a previous demo-data output (no {MARKER};"
                f" found {', '.join(names)}{', ...' if len(names) == 5 else ''}); "
                "choose an empty or new folder"
            )
        try:
            json.loads(marker.read_text())
        except (OSError, ValueError) as exc:
            raise DemoOutputError(f"{marker}: unreadable demo marker ({exc})") from exc
        # the CSV goes first, so no CSV ever points at images that are being replaced
        for name in _OWNED:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_json({"generator": "deeplesion-lab demo-data", "kind": kind, "complete": False,
                "params": params}, out / MARKER)
    return out


def write_dl_info(rows: Sequence[dict[str, str]], path: str | Path,
                  columns: Sequence[str] = OFFICIAL_COLUMNS) -> Path:
    """Write rows (column -> text) as ``DL_info.csv``: header, CRLF lines, packed cells quoted."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
            w.writerow(columns)
            for r in rows:
                w.writerow([r.get(c, "") for c in columns])
    return Path(path)


def write_truth(rows: list[dict], path: str | Path, metadata: dict[str, str]) -> Path:
    """Write the truth table (every lesion instance, annotated or not)."""
    df = pd.DataFrame(rows, columns=list(TRUTH_COLUMNS))
    types = {
        "patient_index": "int32", "study_index": "int16", "series_id": "int16",
        "slice_index": "int32", "coarse_type": "int8", "annotated": "bool",
        "on_key_image": "bool", "possibly_noisy": "bool", "split": "int8",
        "first_slice": "int32", "last_slice": "int32",
    }
    for c, t in types.items():
        df[c] = df[c].astype(t)
    for c in ("truth_id", "track_id", "file_name", "lesion_id", "coarse_type_name", "site",
              "appearance", "companion_of", "lesion_kind", "related_track"):
        df[c] = df[c].astype("string")
    for c in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "long_diameter_px",
              "short_diameter_px", "center_x", "center_y", "mean_hu", "study_months",
              "spacing_x", "spacing_z", "study_rotation_deg"):
        df[c] = df[c].astype("float64")
    return write_parquet(df, path, metadata=metadata)


def write_readme(out: Path, text: str) -> Path:
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(text)
    return out / "README.md"


def finish_marker(out: Path, kind: str, params: dict, summary: dict) -> None:
    write_json({"generator": "deeplesion-lab demo-data", "kind": kind, "complete": True,
                "params": params, "summary": summary}, out / MARKER)
