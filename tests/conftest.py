"""Shared fixtures: the real DeepLesion material beside the checkout, and tiny demo data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_DIR = Path(os.environ.get("DEEPLESION_REAL", REPO.parent / "shared" / "deeplesion_real"))

os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".cache" / "numba"))
# The test process draws off-screen; MPLBACKEND stays unset so that the notebook kernels the
# tests start use the inline backend, as in JupyterLab (a figure in each plotting cell's output).
import matplotlib  # noqa: E402

matplotlib.use("Agg")


@pytest.fixture(scope="session")
def real_dir() -> Path:
    """``../shared/deeplesion_real`` (or ``$DEEPLESION_REAL``); skips when absent."""
    if not (REAL_DIR / "DL_info_test.csv").is_file():
        pytest.skip(
            f"real DeepLesion material not found at {REAL_DIR} "
            "(set DEEPLESION_REAL or place shared/deeplesion_real beside the checkout)"
        )
    return REAL_DIR
