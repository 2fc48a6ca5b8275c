"""Run a detector over key slices and write the predictions CSV.

The CSV has exactly the columns ``file_name, x1, y1, x2, y2, score, label`` (one row per
detection, boxes in the pixels of the original key slice, ``score`` the class-agnostic lesion
score, ``label`` the most likely class name), so that any DeepLesion evaluation script can read
it; :func:`deeplesion_lab.detection.froc.read_predictions` reads it back.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..atomic import write_csv
from .dataset import KeySliceDataset, collate
from .froc import PREDICTION_COLUMNS

__all__ = ["predict_dataset", "write_predictions", "empty_predictions"]


def empty_predictions() -> pd.DataFrame:
    """A predictions frame with no rows and the right columns."""
    return pd.DataFrame({c: pd.Series(dtype="float64") for c in PREDICTION_COLUMNS}).astype(
        {"file_name": "object", "label": "object"}
    )


@torch.no_grad()
def predict_dataset(
    model: torch.nn.Module,
    dataset: KeySliceDataset,
    classes: Sequence[str],
    *,
    batch_size: int = 4,
    device: str = "cpu",
    progress: bool = False,
) -> tuple[pd.DataFrame, float]:
    """Detections on every image of ``dataset``, in original pixel coordinates.

    Returns
    -------
    (pandas.DataFrame, float)
        The predictions (columns :data:`~deeplesion_lab.detection.froc.PREDICTION_COLUMNS`) and
        the mean inference time in ms per image (loading excluded).
    """
    from tqdm.auto import tqdm

    model.eval()
    model.to(device)
    parts = []
    n = len(dataset)
    compute_s = 0.0
    starts = range(0, n, batch_size)
    for s in tqdm(starts, desc="detect", unit="batch", disable=not progress):
        images, _, metas = collate([dataset[i] for i in range(s, min(s + batch_size, n))])
        t0 = time.perf_counter()
        outs = model([im.to(device) for im in images])
        if device != "cpu" and torch.cuda.is_available():
            torch.cuda.synchronize()
        compute_s += time.perf_counter() - t0
        for out, meta in zip(outs, metas, strict=True):
            boxes = out["boxes"].cpu().numpy().astype(np.float64) / meta["scale"]
            labels = out["labels"].cpu().numpy()
            parts.append(
                pd.DataFrame(
                    {
                        "file_name": meta["file_name"],
                        "x1": boxes[:, 0],
                        "y1": boxes[:, 1],
                        "x2": boxes[:, 2],
                        "y2": boxes[:, 3],
                        "score": out["scores"].cpu().numpy().astype(np.float64),
                        "label": [classes[int(c) - 1] for c in labels],
                    }
                )
            )
    df = pd.concat(parts, ignore_index=True) if parts else empty_predictions()
    df = df[list(PREDICTION_COLUMNS)]
    df = df[(df["x2"] > df["x1"]) & (df["y2"] > df["y1"])].reset_index(drop=True)
    return df, 1000.0 * compute_s / max(n, 1)


def write_predictions(df: pd.DataFrame, path: str | Path) -> Path:
    """Write predictions atomically with exactly the columns of the predictions CSV."""
    out = df[list(PREDICTION_COLUMNS)].copy()
    for c in ("x1", "y1", "x2", "y2"):
        out[c] = out[c].round(2)
    out["score"] = out["score"].round(6)
    return write_csv(out, path)
