"""Tiny DeepLesion-format datasets for the embedding, mining and evaluation tests.

``make_synthetic`` writes a ``DL_info.csv`` (official 18 columns), 16-bit slices under
``Images_png`` (three slices per series) and a ``truth.parquet`` (lesion_id, coarse_type). Each
coarse type has its own lesion and surrounding intensities and a typical body location, with
enough location noise that location alone does not separate the types. Train lesions carry type
-1 in the CSV, as in DeepLesion; their true types are only in the truth file.

``demo_data`` writes the demo generator's data (``deeplesion_lab.demo``); an error there fails
the tests that use it (no silent switch to other data).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from factory import write_dl_info

from deeplesion_lab.images import box_to_recist, write_png16

# type -> (lesion HU, surrounding HU, texture amplitude, typical (x, y, z))
APPEARANCE = {
    1: (350.0, 800.0, 60.0, (0.50, 0.75, 0.55)),
    2: (10.0, 45.0, 8.0, (0.45, 0.55, 0.50)),
    3: (35.0, -90.0, 10.0, (0.50, 0.40, 0.30)),
    4: (-5.0, 90.0, 6.0, (0.35, 0.50, 0.45)),
    5: (30.0, -820.0, 15.0, (0.65, 0.40, 0.30)),
    6: (15.0, 160.0, 10.0, (0.60, 0.55, 0.50)),
    7: (70.0, -110.0, 25.0, (0.30, 0.65, 0.55)),
    8: (25.0, 40.0, 40.0, (0.50, 0.60, 0.80)),
}


def _slice(rng, size, cx, cy, r_long, r_short, lesion_hu, bg_hu, tex):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.full((size, size), -1000.0, dtype=np.float32)
    body = ((xx - size / 2) / (size * 0.47)) ** 2 + ((yy - size / 2) / (size * 0.42)) ** 2 < 1
    img[body] = 40.0
    region = ((xx - cx) ** 2 + (yy - cy) ** 2) < (3.2 * r_long) ** 2
    img[region & body] = bg_hu
    les = ((xx - cx) / r_long) ** 2 + ((yy - cy) / r_short) ** 2 < 1
    img[les] = lesion_hu
    img += rng.normal(0, tex, img.shape).astype(np.float32) * (body | les)
    return img


def make_synthetic(
    out_dir: str | Path, n_per_type: int = 6, size: int = 96, seed: int = 0,
    loc_noise: float = 0.12,
) -> tuple[Path, Path]:
    """Write a tiny dataset; returns ``(csv_path, truth_path)``."""
    out = Path(out_dir)
    root = out / "Images_png"
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    n = 0
    for code, (les_hu, bg_hu, tex, (lx, ly, lz)) in APPEARANCE.items():
        for _ in range(n_per_type):
            n += 1
            patient, study, series = 1 + (n - 1) // 2, 1 + (n - 1) % 2, 1
            r_long = float(rng.uniform(4.0, 9.0)) * size / 96
            r_short = r_long * float(rng.uniform(0.6, 1.0))
            x = np.clip(lx + rng.normal(0, loc_noise), 0.2, 0.8)
            y = np.clip(ly + rng.normal(0, loc_noise), 0.2, 0.8)
            z = float(np.clip(lz + rng.normal(0, loc_noise), 0.02, 0.98))
            cx, cy = float(x * size), float(y * size)
            folder = root / f"{patient:06d}_{study:02d}_{series:02d}"
            for s in (1, 2, 3):
                shrink = 1.0 if s == 2 else 0.8
                img = _slice(rng, size, cx, cy, r_long * shrink, r_short * shrink, les_hu, bg_hu, tex)
                write_png16(folder / f"{s:03d}.png", np.round(img).astype(np.int16))
            box = [cx - r_long - 5, cy - r_short - 5, cx + r_long + 5, cy + r_short + 5]
            recist = box_to_recist(box)
            split = (1, 2, 3)[patient % 3]
            fname = f"{patient:06d}_{study:02d}_{series:02d}_002.png"
            rows.append({
                "File_name": fname,
                "Patient_index": patient,
                "Study_index": study,
                "Series_ID": series,
                "Key_slice_index": 2,
                "Measurement_coordinates": ", ".join(f"{v:.3f}" for v in recist),
                "Bounding_boxes": ", ".join(f"{v:.3f}" for v in box),
                "Lesion_diameters_Pixel_": f"{2 * r_long:.3f}, {2 * r_short:.3f}",
                "Normalized_lesion_location": f"{x:.4f}, {y:.4f}, {z:.4f}",
                "Coarse_lesion_type": code if split != 1 else -1,
                "Possibly_noisy": 0,
                "Slice_range": "1, 3",
                "Spacing_mm_px_": "0.8, 0.8, 5",
                "Image_size": f"{size}, {size}",
                "DICOM_windows": "-175, 275",
                "Patient_gender": "F" if patient % 2 else "M",
                "Patient_age": 40 + patient,
                "Train_Val_Test": split,
            })
            truth.append({"file_name": fname, "coarse_type": code})
    csv_path = write_dl_info(rows, out / "DL_info.csv")
    from deeplesion_lab.dl_info import read_dl_info

    les = read_dl_info(csv_path).lesions
    t = pd.DataFrame(truth)
    t = les[["lesion_id", "file_name"]].merge(t, on="file_name")
    truth_path = out / "truth.parquet"
    t[["lesion_id", "coarse_type"]].to_parquet(truth_path, index=False)
    return csv_path, truth_path


def demo_data(out_dir: str | Path, n_patients: int = 6, size: int = 256, seed: int = 0):
    """``(csv_path, truth_path)`` of the demo generator's data."""
    from deeplesion_lab.demo import generate_demo

    res = generate_demo(out_dir, n_patients=n_patients, seed=seed, size=size, progress=False)
    return Path(res.csv_path), Path(res.truth_path)


# --- shared, computed once per test session (cached here, not per test module) -----------------
_CACHE: dict[str, object] = {}


def session_demo(tmp_path_factory) -> dict:
    """Small demo data (6 patients, 256 px) and its manifest: ``csv``, ``truth``, ``manifest``."""
    if "demo" not in _CACHE:
        from deeplesion_lab.manifest import write_manifest

        d = tmp_path_factory.mktemp("emb_demo")
        csv_path, truth = demo_data(d / "data", n_patients=6, size=256, seed=0)
        manifest = d / "demo.parquet"
        write_manifest(csv_path, manifest)
        _CACHE["demo"] = {"dir": d, "csv": csv_path, "truth": truth, "manifest": manifest}
    return _CACHE["demo"]


def session_patches(tmp_path_factory):
    """The demo's PatchSet (default patch settings)."""
    if "patches" not in _CACHE:
        from deeplesion_lab.embedding import build_patches
        from deeplesion_lab.manifest import read_manifest

        demo = session_demo(tmp_path_factory)
        df = read_manifest(demo["manifest"])
        _CACHE["patches"] = build_patches(df, cache_dir=demo["dir"] / "patch_cache")
    return _CACHE["patches"]


def session_run(tmp_path_factory) -> dict:
    """A run made with the CLI: embed (2 epochs) -> mine -> evaluate, and what each printed."""
    if "run" not in _CACHE:
        import contextlib
        import io

        from deeplesion_lab.cli import main

        demo = session_demo(tmp_path_factory)
        run = demo["dir"] / "run"
        out = {}
        for name, argv in [
            ("embed", ["embed", demo["manifest"], "--run", run, "--epochs", "2",
                       "--truth", demo["truth"], "--no-progress"]),
            ("mine", ["mine", "--run", run, "--k-min", "3", "--k-max", "6", "--rounds", "2",
                      "--no-progress"]),
            ("evaluate", ["evaluate", "--run", run, "--no-progress"]),
        ]:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                code = main([str(a) for a in argv])
            assert code == 0, f"{name} failed: {buf.getvalue()}"
            out[name] = buf.getvalue()
        _CACHE["run"] = {"run": run, "output": out, **demo}
    return _CACHE["run"]
