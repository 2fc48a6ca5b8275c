"""Timings of the lesion grid and the FROC click-through (issue 21).

Usage: ``.venv/bin/python bench/bench_lab_grid.py RUN_DIR [--images N] [--boxes K]``

Measures on a run directory: the grid's first page (24 thumbnails) and a re-sort by the
suggest-next score; and on synthetic predictions (``N`` test key images, ``K`` boxes each):
:func:`widgets.models.froc_cases` at 4 false positives per image, which scores them exactly as
``evaluate-detector`` does. Writes nothing; prints one line per figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--boxes", type=int, default=50)
    args = ap.parse_args()
    from widgets.lesion_grid import LesionGrid
    from widgets.models import LabModel, froc_cases

    lab = LabModel(args.run, user="bench", store=None)
    t = time.perf_counter()
    LesionGrid(lab.grid)
    print(f"grid first page, 24 thumbnails ({len(lab.data)} lesions): "
          f"{time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    lab.grid.set(sort_by="suggest")
    print(f"grid sorted by suggest-next score: {time.perf_counter() - t:.2f} s")

    rng = np.random.default_rng(1)
    n, k = args.images, args.boxes
    names = np.array([f"{i:06d}_01_01_001.png" for i in range(n)])
    les = pd.DataFrame({"lesion_id": [f"L{i}" for i in range(n)], "file_name": names,
                        "bbox_x1": 100.0, "bbox_y1": 100.0, "bbox_x2": 130.0, "bbox_y2": 130.0,
                        "possibly_noisy": 0, "split_name": "test", "split": 3,
                        "coarse_type_name": "liver", "key_slice_index": 1})
    x, y = rng.uniform(0, 400, n * k), rng.uniform(0, 400, n * k)
    pred = pd.DataFrame({"file_name": np.repeat(names, k), "x1": x, "y1": y, "x2": x + 30,
                         "y2": y + 30, "score": rng.uniform(0, 1, n * k), "label": "lesion"})
    t = time.perf_counter()
    cases, thr = froc_cases(pred, les, "test", 4.0)
    print(f"froc_cases, {n:,} images x {k} boxes at 4 FP/image: {time.perf_counter() - t:.1f} s "
          f"({len(cases):,} cases, threshold {thr:.3f})")


if __name__ == "__main__":
    main()
