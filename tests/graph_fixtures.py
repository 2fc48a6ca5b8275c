"""Synthetic lesion tables for the graph tests: patients followed over studies, with known tracks.

Each patient has a few physical lesions (tracks), each with its own random embedding direction,
body location and size; each study sees each lesion with some probability (lesions appear and
disappear), with noise on the embedding, a small location jitter and size change. Nothing here
is the code under test: the tests check that the matcher recovers the tracks it was not told.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from factory import write_dl_info


def synthetic_lesions(
    n_patients: int = 30,
    *,
    seed: int = 0,
    dim: int = 16,
    emb_noise: float = 0.35,
    loc_noise: float = 0.01,
    max_studies: int = 4,
    max_tracks: int = 5,
    p_seen: float = 0.8,
) -> tuple[pd.DataFrame, np.ndarray]:
    """A lesion table (with ``e0..`` columns and ``split`` by patient) and the true track ids."""
    rng = np.random.default_rng(seed)
    rows, vecs, tracks = [], [], []
    for p in range(1, n_patients + 1):
        n_st = int(rng.integers(1, max_studies + 1))
        n_tr = int(rng.integers(1, max_tracks + 1))
        base_v = rng.normal(size=(n_tr, dim))
        base_v /= np.linalg.norm(base_v, axis=1, keepdims=True)
        base_loc = rng.uniform(0.15, 0.85, size=(n_tr, 3))
        base_size = rng.uniform(8, 60, size=n_tr)
        split = (p % 3) + 1
        for s in range(1, n_st + 1):
            for t in range(n_tr):
                if rng.random() > p_seen:
                    continue
                v = base_v[t] + emb_noise * rng.normal(size=dim) / np.sqrt(dim)
                loc = np.clip(base_loc[t] + rng.normal(scale=loc_noise, size=3), 0, 1)
                size = base_size[t] * np.exp(rng.normal(scale=0.15) + 0.05 * (s - 1))
                sl = int(rng.integers(10, 200))
                rows.append({
                    "file_name": f"{p:06d}_{s:02d}_01_{sl:03d}.png",
                    "patient_index": p,
                    "study_index": s,
                    "location_x": loc[0],
                    "location_y": loc[1],
                    "location_z": loc[2],
                    "long_diameter_px": size,
                    "short_diameter_px": size * 0.7,
                    "spacing_x": 0.8,
                    "split": split,
                })
                vecs.append(v)
                tracks.append(f"p{p}-t{t}")
    df = pd.DataFrame(rows)
    df.insert(0, "lesion_id", [f"{f[:-4]}-{i:08x}" for i, f in enumerate(df["file_name"])])
    emb = pd.DataFrame(np.asarray(vecs, np.float32), columns=[f"e{i}" for i in range(dim)])
    return pd.concat([df, emb], axis=1), np.asarray(tracks, dtype=object)


# ------------------------------------------------------------------------------------------------
# On-disk runs: DL_info.csv -> manifest -> RunDir with embeddings and a truth file
# ------------------------------------------------------------------------------------------------
def _fmt(*v: float) -> str:
    return ", ".join(f"{x:.4f}" for x in v)


def with_boxes(X: pd.DataFrame, *, size: int = 512, seed: int = 0) -> pd.DataFrame:
    """Add image positions (RECIST points, padded boxes) derived from the body location."""
    X = X.copy()
    cx = 60 + X["location_x"].to_numpy() * (size - 120)
    cy = 60 + X["location_y"].to_numpy() * (size - 120)
    L = X["long_diameter_px"].to_numpy()
    S = X["short_diameter_px"].to_numpy()
    X["cx"], X["cy"] = cx, cy
    X["bbox_x1"], X["bbox_x2"] = cx - L / 2 - 5, cx + L / 2 + 5
    X["bbox_y1"], X["bbox_y2"] = cy - S / 2 - 5, cy + S / 2 + 5
    return X


def write_lesions(X: pd.DataFrame, path) -> None:
    """Write lesions (with :func:`with_boxes` columns) as an official-format DL_info.csv."""
    rows = []
    for r in X.itertuples(index=False):
        L, S = r.long_diameter_px, r.short_diameter_px
        sl = int(r.file_name[:-4].rsplit("_", 1)[1])
        rows.append({
            "File_name": r.file_name,
            "Patient_index": r.patient_index,
            "Study_index": r.study_index,
            "Series_ID": 1,
            "Key_slice_index": sl,
            "Measurement_coordinates": _fmt(r.cx - L / 2, r.cy, r.cx + L / 2, r.cy,
                                            r.cx, r.cy - S / 2, r.cx, r.cy + S / 2),
            "Bounding_boxes": _fmt(r.bbox_x1, r.bbox_y1, r.bbox_x2, r.bbox_y2),
            "Lesion_diameters_Pixel_": _fmt(L, S),
            "Normalized_lesion_location": _fmt(r.location_x, r.location_y, r.location_z),
            "Coarse_lesion_type": -1 if r.split == 1 else 4,
            "Possibly_noisy": 0,
            "Slice_range": f"{sl - 5}, {sl + 5}",
            "Spacing_mm_px_": "0.8, 0.8, 5",
            "Image_size": "512, 512",
            "DICOM_windows": "-175, 275",
            "Patient_gender": "F",
            "Patient_age": 60,
            "Train_Val_Test": r.split,
        })
    write_dl_info(rows, path)


def make_run(tmp_path, n_patients: int = 24, *, seed: int = 0, missing_share: float = 0.5,
             drop_embeddings: int = 0, **kw):
    """A run directory from synthetic lesions: manifest, embeddings, truth.

    Returns ``(run_dir, truth_path, lesions)``: ``lesions`` is the manifest joined to the truth
    ``track_id`` and carries ``missing_boxes`` (unannotated truth lesions, one per chosen key
    image) in ``attrs``.
    """
    from deeplesion_lab.manifest import read_manifest, write_manifest
    from deeplesion_lab.run import RunDir

    X, tracks = synthetic_lesions(n_patients, seed=seed, **kw)
    X = with_boxes(X)
    tmp_path.mkdir(parents=True, exist_ok=True)
    csv = tmp_path / "DL_info.csv"
    write_lesions(X, csv)
    man_path = tmp_path / "manifest.parquet"
    write_manifest(csv, man_path)
    man = read_manifest(man_path)
    # manifest ids are made by the reader: map them back by file name + order of rows
    assert len(man) == len(X)
    key = man["file_name"].astype(str) + "|" + man["bbox_x1"].round(2).astype(str)
    xkey = X["file_name"] + "|" + X["bbox_x1"].round(2).astype(str)
    pos = pd.Index(xkey).get_indexer(key)
    assert (pos >= 0).all()
    X = X.iloc[pos].reset_index(drop=True)
    X["lesion_id"] = man["lesion_id"].astype(str).to_numpy()
    tracks = tracks[pos]

    rng = np.random.default_rng(seed + 1)
    # unannotated truth lesions: on a share of key images, a box in the corner opposite the lesion
    keys = X.drop_duplicates("file_name")
    chosen = keys.loc[rng.random(len(keys)) < missing_share]
    miss = []
    for r in chosen.itertuples(index=False):
        mx = 512 - r.cx
        my = 512 - r.cy
        s = float(rng.uniform(14, 30))
        miss.append({
            "file_name": r.file_name, "patient_index": r.patient_index,
            "study_index": r.study_index, "bbox_x1": mx - s, "bbox_y1": my - s,
            "bbox_x2": mx + s, "bbox_y2": my + s,
        })
    miss = pd.DataFrame(miss, columns=["file_name", "patient_index", "study_index", "bbox_x1",
                                       "bbox_y1", "bbox_x2", "bbox_y2"])
    ann = pd.DataFrame({
        "track_id": tracks.astype(str),
        "patient_index": X["patient_index"], "study_index": X["study_index"],
        "file_name": X["file_name"],
        "bbox_x1": X["bbox_x1"], "bbox_y1": X["bbox_y1"],
        "bbox_x2": X["bbox_x2"], "bbox_y2": X["bbox_y2"],
        "annotated": True, "lesion_id": X["lesion_id"],
    })
    un = miss.assign(track_id=[f"missing-{i}" for i in range(len(miss))], annotated=False,
                     lesion_id=None)
    truth = pd.concat([ann, un[ann.columns]], ignore_index=True)
    truth.insert(0, "truth_id", np.arange(len(truth)))
    truth_path = tmp_path / "truth.parquet"
    truth.to_parquet(truth_path)

    run = RunDir(tmp_path / "run").init(man_path, truth_path)
    ecols = [c for c in X.columns if c.startswith("e") and c[1:].isdigit()]
    keep = np.ones(len(X), bool)
    keep[:drop_embeddings] = False
    run.save_embeddings(X.loc[keep, "lesion_id"], X.loc[keep, ecols].to_numpy(np.float32))
    X["track_id"] = tracks
    X.attrs["missing_boxes"] = miss
    return run.path, truth_path, X
