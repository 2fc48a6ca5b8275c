"""What the test fixtures share: the one ``DL_info.csv`` writer and the one free-port finder.

Each fixture module makes its own rows (synthetic slices of its own design); they all write
them with :func:`write_dl_info`, in the released file's form: the 18 official columns in their
order (then any extra columns given), list cells as ``"a, b, c"``, CRLF line ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from deeplesion_lab.dl_info import OFFICIAL_COLUMNS
from widgets.dashboard.server import free_port

__all__ = ["cells", "free_port", "write_dl_info"]


def cells(values: Iterable[float], digits: int = 3) -> str:
    """A list cell of DL_info (``"1.500, 2.000"``): each value with ``digits`` decimals."""
    return ", ".join(f"{float(v):.{digits}f}" for v in values)


def write_dl_info(rows: Iterable[Mapping] | pd.DataFrame, path: str | Path) -> Path:
    """Write ``rows`` (keyed by DL_info column names) as a DL_info.csv; returns the path.

    Raises
    ------
    ValueError
        When a row lacks one of the official columns (the fixture is wrong: fail, do not
        write a file the reader would reject for another reason).
    """
    path = Path(path)
    df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    missing = [c for c in OFFICIAL_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: the rows lack DL_info column(s) {', '.join(missing)}")
    cols = [*OFFICIAL_COLUMNS, *[c for c in df.columns if c not in OFFICIAL_COLUMNS]]
    path.parent.mkdir(parents=True, exist_ok=True)
    df[cols].to_csv(path, index=False, lineterminator="\r\n")
    return path
