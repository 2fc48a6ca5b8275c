"""Tiny DeepLesion-format data for the detector tests: bright lesions in 5-slice series.

``make_detection_data`` writes ``DL_info.csv`` (the 18 official columns), 16-bit slices under
``Images_png`` and builds the manifest. Each series has 5 slices (spacing 1 mm in-plane, 2 mm
between slices); its lesions are bright ellipses crossing the slices around their key slice.
The layout is known to the tests:

- series 1..4 are the training split, 5 validation, 6 test;
- series 1 has two lesions annotated on different key slices 1 slice apart (each crosses the
  other's key slice: the "neighbours" strategy must see it), series 2 has two lesions on the
  same key slice;
- one test lesion is flagged ``Possibly_noisy``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from factory import write_dl_info

from deeplesion_lab.images import box_to_recist, write_png16
from deeplesion_lab.manifest import read_manifest, write_manifest

SIZE = 96
N_SLICES = 5

# series -> list of (key slice, cx, cy, radius_long, radius_short, type, noisy)
LAYOUT: dict[int, list[tuple[int, float, float, float, float, int, int]]] = {
    1: [(3, 30.0, 40.0, 9.0, 7.0, 4, 0), (2, 64.0, 56.0, 8.0, 7.0, 5, 0)],
    2: [(3, 28.0, 30.0, 8.0, 6.0, 4, 0), (3, 66.0, 62.0, 10.0, 8.0, 2, 0)],
    3: [(3, 48.0, 36.0, 9.0, 8.0, 5, 0)],
    4: [(3, 40.0, 60.0, 10.0, 7.0, 2, 0)],
    5: [(3, 56.0, 44.0, 9.0, 7.0, 4, 0)],
    6: [(3, 36.0, 42.0, 9.0, 8.0, 5, 0), (3, 66.0, 64.0, 8.0, 6.0, 2, 1)],
}
SPLIT = {1: 1, 2: 1, 3: 1, 4: 1, 5: 2, 6: 3}
TYPE_NAMES = {2: "abdomen", 4: "liver", 5: "lung"}


@dataclass
class DetectionData:
    csv_path: Path
    images_root: Path
    manifest_path: Path
    manifest: pd.DataFrame


def _slice(size: int, lesions: list[tuple[float, float, float, float]], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.full((size, size), -1000.0, dtype=np.float32)
    body = ((xx - size / 2) / (size * 0.47)) ** 2 + ((yy - size / 2) / (size * 0.44)) ** 2 < 1
    img[body] = 40.0
    for cx, cy, rl, rs in lesions:
        img[((xx - cx) / rl) ** 2 + ((yy - cy) / rs) ** 2 < 1] = 300.0
    img += rng.normal(0, 10, img.shape).astype(np.float32) * body
    return np.round(img).astype(np.int16)


def make_detection_data(out_dir: str | Path, size: int = SIZE) -> DetectionData:
    """Write the tiny dataset of this module's LAYOUT under ``out_dir``."""
    out = Path(out_dir)
    root = out / "Images_png"
    f = size / SIZE
    rows = []
    for series, lesions in LAYOUT.items():
        folder = root / f"{series:06d}_01_01"
        for s in range(1, N_SLICES + 1):
            present = []
            for key, cx, cy, rl, rs, _t, _n in lesions:
                # radius shrinks with distance from the key slice (2 mm per slice)
                d = abs(s - key) * 2.0
                if d < rs:
                    k = np.sqrt(1 - (d / rs) ** 2)
                    present.append((cx * f, cy * f, rl * f * k, rs * f * k))
            write_png16(folder / f"{s:03d}.png", _slice(size, present, seed=series * 10 + s))
        for key, cx, cy, rl, rs, ctype, noisy in lesions:
            box = [(cx - rl) * f - 5, (cy - rs) * f - 5, (cx + rl) * f + 5, (cy + rs) * f + 5]
            recist = box_to_recist(box)
            split = SPLIT[series]
            rows.append({
                "File_name": f"{series:06d}_01_01_{key:03d}.png",
                "Patient_index": series,
                "Study_index": 1,
                "Series_ID": 1,
                "Key_slice_index": key,
                "Measurement_coordinates": ", ".join(f"{v:.3f}" for v in recist),
                "Bounding_boxes": ", ".join(f"{v:.3f}" for v in box),
                "Lesion_diameters_Pixel_": f"{2 * rl * f:.3f}, {2 * rs * f:.3f}",
                "Normalized_lesion_location": f"{cx / SIZE:.3f}, {cy / SIZE:.3f}, 0.5",
                "Coarse_lesion_type": ctype if split != 1 else -1,
                "Possibly_noisy": noisy,
                "Slice_range": f"1, {N_SLICES}",
                "Spacing_mm_px_": f"{1.0 / f:.4f}, {1.0 / f:.4f}, 2",
                "Image_size": f"{size}, {size}",
                "DICOM_windows": "-175, 275",
                "Patient_gender": "F",
                "Patient_age": 60,
                "Train_Val_Test": split,
            })
    csv_path = write_dl_info(rows, out / "DL_info.csv")
    manifest_path = out / "manifest.parquet"
    write_manifest(csv_path, manifest_path, root)
    return DetectionData(csv_path, root, manifest_path, read_manifest(manifest_path))


def true_types(manifest: pd.DataFrame) -> pd.DataFrame:
    """``lesion_id, label`` with each lesion's true type name (from LAYOUT)."""
    out = []
    for r in manifest.itertuples():
        series = int(r.patient_index)
        for key, cx, _cy, _rl, _rs, ctype, _n in LAYOUT[series]:
            if key == int(r.key_slice_index) and abs((r.bbox_x1 + r.bbox_x2) / 2 * SIZE
                                                       / r.image_width - cx) < 1:
                out.append({"lesion_id": r.lesion_id, "label": TYPE_NAMES[ctype]})
    return pd.DataFrame(out)


def interrupt_fit(params: dict, manifest: pd.DataFrame, folder: Path, at_step: int = 5) -> None:
    """Start ``LesionDetector(**params).fit`` into ``folder`` and stop it when it reaches
    global step ``at_step`` (its callback raises, as a kill would stop it); what it saved
    stays in ``folder`` for a resume."""
    from deeplesion_lab.detection.train import LesionDetector

    class Stop(Exception):
        pass

    def stop(info: dict) -> None:
        if info["global_step"] == at_step:
            raise Stop

    with pytest.raises(Stop):
        LesionDetector(**params).fit(manifest, checkpoint_dir=folder, callback=stop)


def train_dataset(data, **kwargs):
    """The training split of :func:`make_detection_data`'s series as a ``KeySliceDataset`` at
    96 px and 1 mm/px with augmentation on; ``kwargs`` set or override its parameters."""
    from deeplesion_lab.detection.dataset import KeySliceDataset
    from deeplesion_lab.detection.train import select_split

    params = {"image_size": 96, "spacing_mm": 1.0, "augment": True, **kwargs}
    return KeySliceDataset(select_split(data.manifest, "train"), data.images_root, **params)
