"""Which lesions have their key slice on disk: partial downloads and other image layouts.

DeepLesion's images come as 56 zip archives (``Images_png_01.zip`` ... ``Images_png_56.zip``,
about 221 GB), each holding whole series folders (``PPPPPP_SS_NN``) in patient order, and most
people unzip only some of them. A manifest keeps every row of ``DL_info.csv`` and flags in
``has_image`` whether the row's key slice is present under the images root. This module

- finds the images root of the layouts people hold: ``Images_png`` beside the CSV, a folder
  given separately (or a folder that holds ``Images_png``), and the Kaggle subset's ``images/``
  named by its ``kaggle_path`` column (:func:`resolve_images_root`);
- counts the lesions whose key slice is present and groups the missing series folders into runs
  of consecutive folders, which is what the missing archives would add
  (:class:`ImageAvailability`); the archives' published folder ranges are not known to the lab,
  so the folders are named, not the zip numbers;
- applies the explicit choice to work on the present lesions only
  (:func:`select_present`): ``--present-only`` on a step, or a manifest written with
  ``--require-images``. The missing lesions stay in the manifest; they are left out of training
  and evaluation, never dropped from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import LabError

__all__ = [
    "PRESENT_ONLY",
    "ImageAvailability",
    "ImageLayoutError",
    "image_availability",
    "resolve_images_root",
    "key_slices_present",
    "select_present",
    "missing_series_table",
    "run_uses_present_only",
    "record_run_images",
    "run_images_line",
]

#: The manifest/run policy value meaning "later steps use the lesions with a key slice only".
PRESENT_ONLY = "present-only"
#: Folder names under which the same series folders are found (official zips, Kaggle subset).
_ROOT_NAMES = ("Images_png", "images", "minideeplesion")


class ImageLayoutError(LabError, ValueError):
    """The images cannot be found in any layout the lab knows, or a path column is malformed."""


def _series_of(file_names: np.ndarray) -> np.ndarray:
    """``000001_01_01_109.png`` -> ``000001_01_01`` for every name."""
    s = pd.Series(file_names, dtype="string").str.replace(r"\.png$", "", regex=True)
    return s.str.rsplit("_", n=1).str[0].to_numpy(dtype=object)


def key_slices_present(root: str | Path, rel_paths: np.ndarray) -> np.ndarray:
    """Boolean mask: which ``series/slice.png`` paths exist under ``root``.

    Lists each series folder once (``os.scandir``) instead of one ``stat`` per path, which is
    what makes 32,735 lesions on a network disk take a fraction of a second.
    """
    root = Path(root)
    listing: dict[str, set[str] | None] = {}
    out = np.zeros(len(rel_paths), dtype=bool)
    for k, rel in enumerate(rel_paths):
        series, _, name = str(rel).rpartition("/")
        if series not in listing:
            try:
                with os.scandir(root / series) as it:
                    listing[series] = {e.name for e in it}
            except (FileNotFoundError, NotADirectoryError):
                listing[series] = None
        files = listing[series]
        out[k] = files is not None and name in files
    return out


def _kaggle_prefix(lesions: pd.DataFrame, column: str = "kaggle_path") -> str:
    """The folder that ``kaggle_path`` puts the series folders in (``images`` for
    ``images/000001_01_01/109.png``), checked row by row against ``File_name``."""
    kp = lesions[column].astype("string").str.strip().str.replace("\\", "/", regex=False)
    rel = pd.Series(lesions["image_path"], dtype="string").to_numpy(dtype=object)
    prefixes: set[str] = set()
    for k, (path, want) in enumerate(zip(kp.to_numpy(dtype=object), rel, strict=True)):
        if path is None or path is pd.NA or path == "":
            continue
        if not str(path).endswith("/" + want) and str(path) != want:
            line = int(lesions["source_line"].iloc[k])
            raise ImageLayoutError(
                f"line {line}, {column} = {path!r}: does not end with {want} "
                f"(the key slice of File_name {lesions['file_name'].iloc[k]})"
            )
        prefixes.add(str(path)[: -len(want)].rstrip("/"))
    if len(prefixes) > 1:
        raise ImageLayoutError(
            f"{column} puts the series folders under several folders "
            f"({', '.join(sorted(prefixes)[:3])}); give the images root with --images"
        )
    return prefixes.pop() if prefixes else ""


def resolve_images_root(
    csv_path: str | Path,
    images: str | Path | None,
    lesions: pd.DataFrame,
) -> tuple[Path | None, str]:
    """Find the folder that holds the series folders of ``lesions``.

    Parameters
    ----------
    csv_path : path
        The ``DL_info.csv`` the lesions were read from.
    images : path or None
        The images root the user gave (``--images``). It may be the folder of the series folders
        itself, or a folder holding ``Images_png`` (or the Kaggle ``images``) folder.
    lesions : pandas.DataFrame
        The lesions, with ``image_path`` (``series/slice.png``) and, for the Kaggle subset, a
        ``kaggle_path`` column.

    Returns
    -------
    (pathlib.Path or None, str)
        The root (None: no images anywhere, a metadata-only manifest) and how it was found.

    Raises
    ------
    ImageLayoutError
        ``images`` does not exist, or ``kaggle_path`` disagrees with ``File_name``.
    """
    csv_dir = Path(csv_path).resolve().parent
    sample = lesions["image_path"].to_numpy(dtype=object)
    if len(sample) > 2000:  # enough to tell the layouts apart
        sample = sample[np.linspace(0, len(sample) - 1, 2000).astype(int)]
    kaggle = ""
    if "kaggle_path" in lesions.columns:
        kaggle = _kaggle_prefix(lesions)
    names = [n for n in (kaggle, *_ROOT_NAMES) if n]

    def score(root: Path) -> int:
        return int(key_slices_present(root, sample).sum()) if root.is_dir() else -1

    if images is not None:
        base = Path(images)
        if not base.is_dir():
            raise ImageLayoutError(f"{base}: images folder not found")
        cands = [(base, "given")] + [(base / n, f"given, {n}/ inside") for n in names]
    else:
        cands = [(csv_dir / n, f"{n}/ beside the CSV" + (" (kaggle_path)" if n == kaggle else ""))
                 for n in names]
    scored = [(score(p), p, how) for p, how in cands]
    best = max(scored, key=lambda t: t[0])
    if best[0] > 0:
        return best[1].resolve(), best[2]
    if images is not None:  # a folder without any of these key slices: kept, all flagged
        return Path(images).resolve(), "given (none of the key slices there)"
    # nothing found beside the CSV: an existing but empty Images_png still names the root
    for p, how in cands:
        if p.is_dir():
            return p.resolve(), how
    return None, "none"


@dataclass
class ImageAvailability:
    """How many lesions of a manifest have their key slice on disk, and what is missing.

    Attributes
    ----------
    n_lesions, n_present : int
        Lesions in the manifest, and those whose key slice is under ``images_root``.
    images_root : str
        The images root ('' for a metadata-only manifest).
    missing : pandas.DataFrame
        One row per missing series folder: ``series``, ``lesions`` (rows lacking their key slice
        there), ``first_line`` (the first CSV line of such a row) and ``run`` (runs of
        consecutive missing folders in the manifest's sorted list of series share a number).
    n_series : int
        Series folders the manifest names.
    """

    n_lesions: int
    n_present: int
    images_root: str
    missing: pd.DataFrame
    n_series: int

    @property
    def n_missing(self) -> int:
        return self.n_lesions - self.n_present

    @property
    def complete(self) -> bool:
        return self.n_missing == 0

    def runs(self) -> pd.DataFrame:
        """Runs of consecutive missing series folders: ``first``, ``last``, ``folders``,
        ``lesions``, in folder order."""
        if self.missing.empty:
            return pd.DataFrame(columns=["first", "last", "folders", "lesions"])
        g = self.missing.groupby("run", sort=True)
        return pd.DataFrame({
            "first": g["series"].first(), "last": g["series"].last(),
            "folders": g.size(), "lesions": g["lesions"].sum(),
        }).reset_index(drop=True)

    def folders_hint(self, limit: int = 3) -> str:
        """``"412 series folders (in 9 runs: 000001_01_01..000016_02_01 (12), ...)"``."""
        runs = self.runs()
        if runs.empty:
            return "no series folder"
        parts = [
            (f"{r.first}..{r.last} ({r.folders})" if r.folders > 1 else f"{r.first}")
            for r in runs.head(limit).itertuples()
        ]
        n_more = len(runs) - limit
        more = f", {n_more} more run{'s' if n_more > 1 else ''}" if n_more > 0 else ""
        return (f"{len(self.missing):,} series folder{'s' if len(self.missing) != 1 else ''} "
                f"(in {len(runs):,} run{'s' if len(runs) != 1 else ''} of consecutive folders: "
                f"{', '.join(parts)}{more})")

    def counts(self) -> str:
        """One line for the manifest: ``18 of 4,927 lesions have their key slice under ROOT;
        ... would add the other 4,909``."""
        where = f" under {self.images_root}" if self.images_root else " (no images folder)"
        if self.complete:
            return f"all {self.n_lesions:,} lesions have their key slice{where}"
        return (
            f"{self.n_present:,} of {self.n_lesions:,} lesions have their key slice{where}; "
            f"{self.folders_hint()} would add the other {self.n_missing:,}"
        )

    def summary(self) -> str:
        """One line: ``uses 18 of 4,927 lesions; 4,909 lack their key slice: ... would add
        them``."""
        if self.complete:
            return f"uses all {self.n_lesions:,} lesions (every key slice is on disk)"
        where = f" under {self.images_root}" if self.images_root else " (no images folder)"
        return (
            f"uses {self.n_present:,} of {self.n_lesions:,} lesions; {self.n_missing:,} lack "
            f"their key slice{where}: {self.folders_hint()} would add them"
        )


def image_availability(manifest: pd.DataFrame) -> ImageAvailability:
    """The :class:`ImageAvailability` of a manifest (from its ``has_image`` column)."""
    root = str(manifest.attrs.get("images_root", "") or "")
    has = manifest["has_image"].to_numpy(dtype=bool) if root else np.zeros(len(manifest), bool)
    series = _series_of(manifest["file_name"].to_numpy(dtype=object))
    all_series = np.unique(series)
    miss = ~has
    if miss.any():
        lines = manifest["source_line"].to_numpy(dtype=np.int64)
        t = pd.DataFrame({"series": series[miss], "line": lines[miss]})
        g = t.groupby("series", sort=True)
        table = pd.DataFrame({"lesions": g.size(), "first_line": g["line"].min()})
        table = table.reset_index()
        # a series folder with every key slice present between two missing ones splits a run
        flags = np.isin(all_series, table["series"].to_numpy(dtype=object))
        run_of = np.cumsum(~flags)
        pos = np.searchsorted(all_series, table["series"].to_numpy(dtype=object))
        table["run"] = pd.factorize(run_of[pos])[0].astype(np.int64)
    else:
        table = pd.DataFrame(columns=["series", "lesions", "first_line", "run"])
    return ImageAvailability(
        n_lesions=len(manifest), n_present=int(has.sum()), images_root=root,
        missing=table, n_series=len(all_series),
    )


def missing_series_table(availability: ImageAvailability) -> pd.DataFrame:
    """The missing series folders as written beside a manifest (``NAME.missing_images.csv``)."""
    return availability.missing[["series", "lesions", "first_line", "run"]].copy()


def select_present(
    manifest: pd.DataFrame,
    present_only: bool = False,
    *,
    step: str = "this step",
) -> tuple[pd.DataFrame, ImageAvailability]:
    """The lesions a step that reads images may use, by the explicit choice of the user.

    Parameters
    ----------
    manifest : pandas.DataFrame
        A manifest (:func:`deeplesion_lab.manifest.read_manifest`).
    present_only : bool, default False
        Use the lesions whose key slice is present. A manifest written with
        ``--require-images`` (metadata ``images_policy = present-only``) chooses it too.
    step : str
        Named in the error message (``"embed"``).

    Returns
    -------
    (pandas.DataFrame, ImageAvailability)
        The lesions to use (all of them when every key slice is present; the manifest's
        ``attrs`` are kept, plus ``images_used``/``images_of``) and the counts.

    Raises
    ------
    LabError
        Some key slices are missing and neither choice was made (the message says how many, which
        series folders would add them and how to choose), or none is present.
    """
    av = image_availability(manifest)
    if av.complete:
        return manifest, av
    chosen = present_only or manifest.attrs.get("images_policy", "") == PRESENT_ONLY
    src = manifest.attrs.get("manifest_path", "the manifest")
    if av.n_present == 0:
        where = f"under {av.images_root}" if av.images_root else "(the manifest has no images folder)"
        raise LabError(
            f"{src}: none of the {av.n_lesions:,} lesions has its key slice {where}; {step} "
            f"needs images ({av.folders_hint()} would add them; rebuild the manifest with "
            "--images DIR if they are elsewhere)"
        )
    if not chosen:
        raise LabError(
            f"{src}: {av.n_missing:,} of {av.n_lesions:,} lesions have no key slice under "
            f"{av.images_root} ({av.folders_hint()} would add them); use --present-only to run "
            f"{step} on the {av.n_present:,} that do, or build the manifest with --images DIR "
            "--require-images"
        )
    used = manifest.loc[manifest["has_image"].to_numpy(dtype=bool)].reset_index(drop=True)
    used.attrs.update(manifest.attrs)
    used.attrs["images_used"] = str(av.n_present)
    used.attrs["images_of"] = str(av.n_lesions)
    return used, av


def record_run_images(run_json: str | Path, availability: ImageAvailability) -> None:
    """Record in a run's ``run.json`` that it uses the present lesions only (and how many), so
    that the later steps on the run (mine, evaluate, detector, serve) do the same."""
    from .atomic import update_json

    update_json(run_json, {"images": {
        "policy": PRESENT_ONLY if not availability.complete else "all",
        "used": availability.n_present, "of": availability.n_lesions,
    }})


def run_uses_present_only(info: dict) -> bool:
    """Whether a run (its ``run.json`` contents) was made on the present lesions only."""
    return (info.get("images") or {}).get("policy") == PRESENT_ONLY


def run_images_line(info: dict, step: str) -> str | None:
    """``"mine uses 18 of 4,927 lesions (...)"`` for a run made on the present lesions only
    (``info``: its ``run.json``), None for a run on every lesion."""
    if not run_uses_present_only(info):
        return None
    im = info["images"]
    return (f"{step} uses {int(im['used']):,} of {int(im['of']):,} lesions (the run's choice, "
            "embed --present-only: the others lack their key slice)")
