"""``--like``: synthetic slices for the rows of a real ``DL_info.csv``.

Every valid row keeps its metadata (patient, study, series, key slice index, RECIST points,
box, diameters, location, type, spacing, image size, DICOM window, gender, age, split): the
slices are drawn at the row's level along the body (from its normalised z), with the body placed
so that the row's normalised x, y fall where its box is, and the lesion drawn at the box with
the RECIST axes' length and orientation. Lesions of rows in the same series appear on each
other's slices when their extents meet. A benchmark thus gets the real metadata and realistic
pixel work without the real images.

The written ``DL_info.csv`` is a copy of the rendered rows (all source columns, the same text),
except ``Slice_range``, which is narrowed to the slices actually written around each key slice
(so that every slice in range exists).

As in :func:`~deeplesion_lab.demo.generate_demo`, unannotated lesions of every type that occurs
at the level are added around each series' key slices (some on a key slice, some only on its
neighbours) so that ``unannotated_share`` of the truth file's lesions are not in the CSV.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..dl_info import read_dl_info
from ..errors import LabError
from ..images import write_png16
from ..lesion_types import COARSE_TYPES
from . import anatomy as an
from .canvas import Canvas
from .cohort import CONTEXT_HALF, ON_KEY_SHARE, UNANNOTATED_SHARE, _make_lesion, _place, _sites_at
from .generator import DemoResult, _check_int, check_share, noise_bank, run_jobs
from .lesions import (
    SITES,
    TYPE_SITES,
    Lesion,
    lesion_harmonics,
    paint_lesion,
    recist_points,
    sample_appearance,
)
from .render import finish_slice
from .writer import finish_marker, prepare_output, write_dl_info, write_readme, write_truth

__all__ = ["render_like"]

_ROW_FIELDS = (
    "lesion_id", "file_name", "patient_index", "study_index", "series_id", "key_slice_index",
    "recist_x1", "recist_y1", "recist_x2", "recist_y2", "recist_x3", "recist_y3", "recist_x4",
    "recist_y4", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "long_diameter_px",
    "short_diameter_px", "location_x", "location_y", "location_z", "coarse_type", "slice_start",
    "slice_end", "spacing_x", "spacing_z", "image_height", "image_width", "gender", "split",
    "possibly_noisy", "source_line",
)


def _context_half(dz: float) -> int:
    best = min(CONTEXT_HALF, key=lambda k: abs(np.log(k / max(dz, 1e-3))))
    return CONTEXT_HALF[best]


def _infer_site(row: dict, rng: np.random.Generator) -> tuple[int, str, str]:
    """(type, site, source) for a row: its own type, or one plausible at its level."""
    ctype = int(row["coarse_type"])
    if ctype in COARSE_TYPES:
        opts = TYPE_SITES[ctype]
        names = list(opts)
        w = np.array([opts[k] for k in names])
        return ctype, names[int(rng.choice(len(names), p=w / w.sum()))], "csv"
    t = float(row["location_z"])
    near = [s for s in SITES.values() if s.t_range[0] <= t <= s.t_range[1]]
    if not near:
        near = [min(SITES.values(), key=lambda s: min(abs(t - s.t_range[0]),
                                                      abs(t - s.t_range[1])))]
    pick = near[int(rng.integers(len(near)))]
    return pick.coarse_type, pick.name, "inferred from location"


def _like_patient(args: tuple) -> tuple[list[dict], int, dict[int, tuple[int, int]]]:
    """Render one patient's series; returns truth rows, slices written, new slice ranges."""
    patient_index, rows, seed, root, share = args
    root = Path(root)
    rng = np.random.default_rng([int(seed), int(patient_index), 7])
    gender = str(rows[0]["gender"]) if str(rows[0]["gender"]) in ("M", "F") else "M"
    body = an.Body.sample(rng, gender)
    truth: list[dict] = []
    ranges: dict[int, tuple[int, int]] = {}
    n_slices = 0
    by_series: dict[tuple[int, int], list[dict]] = {}
    for r in rows:
        by_series.setdefault((int(r["study_index"]), int(r["series_id"])), []).append(r)
    for (study, series), srows in by_series.items():
        srng = np.random.default_rng([int(seed), int(patient_index), study, series, 8])
        h, w = int(srows[0]["image_height"]), int(srows[0]["image_width"])
        size = max(h, w)
        bank = noise_bank(seed, size)
        dz = float(srows[0]["spacing_z"])
        a_max = max(body.A_chest, body.A_abd, body.A_pelv)
        # canvas millimetres: real pixel size, or larger so that the body fits the image
        step = max(float(srows[0]["spacing_x"]), 2.25 * a_max / size)
        e = 0.0 if srng.random() < 0.25 else float(srng.uniform(0.5, 1.0))
        noise_sigma = float(srng.uniform(9, 18))
        fov_circle = bool(srng.random() < 0.6)
        # place the body so that each row's normalised x, y fall on its box
        x0s, y0s, lesions = [], [], []
        for r in srows:
            t = float(np.clip(r["location_z"], 0.3, 0.95))
            lev = body.level(t)
            p = np.array([r[f"recist_{a}{i}"] for i in range(1, 5) for a in "xy"],
                         dtype=float).reshape(4, 2)
            c = p.mean(axis=0)
            x0s.append(c[0] - (float(r["location_x"]) - 0.5) * 2.0 * lev.A / step)
            y0s.append(c[1] - float(r["location_y"]) * (lev.Ba + lev.Bp) / step + lev.Ba / step)
        x0 = float(np.clip(np.median(x0s), 0.35 * w, 0.65 * w))
        y0 = float(np.clip(np.median(y0s), 0.35 * h, 0.65 * h))
        key_z = {}
        for r in srows:
            p = np.array([r[f"recist_{a}{i}"] for i in range(1, 5) for a in "xy"],
                         dtype=float).reshape(4, 2)
            c = p.mean(axis=0)
            long_v, short_v = p[1] - p[0], p[3] - p[2]
            ctype, site, source = _infer_site(r, srng)
            look = sample_appearance(site, srng)
            ra = max(np.linalg.norm(long_v) / 2.0, 1.0) * step
            rb = max(np.linalg.norm(short_v) / 2.0, 0.7) * step
            phys = float(r["spacing_x"])
            rc = max(np.sqrt(np.linalg.norm(long_v) * np.linalg.norm(short_v)) / 2.0 * phys, 3.5)
            z = int(r["key_slice_index"]) * dz
            key_z[id(r)] = z
            les = Lesion(u=(c[0] - x0) * step, v=(c[1] - y0) * step, z=z, ra=ra, rb=rb, rc=rc,
                         angle=float(np.arctan2(long_v[1], long_v[0])),
                         harmonics=lesion_harmonics(look, srng), look=look,
                         calc_xy=srng.uniform(-0.5, 0.5, (look.calcs, 2)))
            lesions.append((r, les, ctype, site, source))
        # slices: key +- context, within each row's own Slice_range
        half = _context_half(dz)
        want: list[tuple[int, int]] = []
        for r in srows:
            k = int(r["key_slice_index"])
            want.append((max(k - half, int(r["slice_start"])), min(k + half, int(r["slice_end"]))))
        groups: list[list[int]] = []
        for a, b in sorted(want):
            if groups and a <= groups[-1][1] + 1:
                groups[-1][1] = max(groups[-1][1], b)
            else:
                groups.append([a, b])
        folder = f"{int(patient_index):06d}_{study:02d}_{series:02d}"
        t_of = {id(r): float(np.clip(r["location_z"], 0.3, 0.95)) for r in srows}
        t_ref = float(np.median(list(t_of.values())))
        z_ref = float(np.median([key_z[id(r)] for r in srows]))
        extra = _unannotated_for_series(body, srows, lesions, groups, key_z, t_ref, z_ref, dz,
                                        step, size, share, srng)
        for g0, g1 in groups:
            for i in range(g0, g1 + 1):
                z = i * dz
                t = t_ref + (z - z_ref) / body.length
                cv = Canvas(h, w, step, x0, y0)
                body.paint(cv, float(np.clip(t, 0.28, 0.97)), e)
                for les in [x[1] for x in lesions] + [x[0] for x in extra]:
                    if les.section(z)[0] <= 0:
                        continue
                    px = cv.to_px(les.u, les.v)
                    jj = int(np.clip(round(px[0]), 0, w - 1))
                    ii = int(np.clip(round(px[1]), 0, h - 1))
                    bg = an.tissue_hu(int(cv.lab[ii, jj]), e)
                    paint_lesion(cv, les, z, e, bank, srng, bg_hu=bg)
                noise = bank.crop(srng, h, w)
                hu = finish_slice(cv, noise, noise_sigma, fov_circle)
                write_png16(root / folder / f"{i:03d}.png", hu)
                n_slices += 1
        for r, les, ctype, site, source in lesions:
            k = int(r["key_slice_index"])
            g0, g1 = next((a, b) for a, b in groups if a <= k <= b)
            ranges[int(r["source_line"])] = (g0, g1)
            truth.append({
                "truth_id": str(r["lesion_id"]),
                "track_id": str(r["lesion_id"]),
                "patient_index": int(patient_index), "study_index": study, "series_id": series,
                "file_name": str(r["file_name"]), "slice_index": k,
                "bbox_x1": float(r["bbox_x1"]), "bbox_y1": float(r["bbox_y1"]),
                "bbox_x2": float(r["bbox_x2"]), "bbox_y2": float(r["bbox_y2"]),
                "long_diameter_px": float(r["long_diameter_px"]),
                "short_diameter_px": float(r["short_diameter_px"]),
                "coarse_type": ctype, "annotated": True, "lesion_id": str(r["lesion_id"]),
                "coarse_type_name": COARSE_TYPES[ctype], "site": site,
                "appearance": les.look.kind, "on_key_image": True,
                "possibly_noisy": bool(r["possibly_noisy"]), "split": int(r["split"]),
                "center_x": float(x0 + les.u / step), "center_y": float(y0 + les.v / step),
                "first_slice": g0, "last_slice": g1,
                "mean_hu": float(les.look.mean_hu(e)), "companion_of": None,
                "study_months": float("nan"), "spacing_x": float(r["spacing_x"]),
                "spacing_z": dz,
                "_type_source": source,
            })
        for j, (les, ctype, site, sl, on_key) in enumerate(extra):
            pts = recist_points(les, sl * dz)
            if pts is None:
                continue
            xy = np.vstack(pts) / step + np.array([x0, y0])
            long_px = float(np.linalg.norm(xy[0] - xy[1]))
            short_px = float(np.linalg.norm(xy[2] - xy[3]))
            tid = f"{folder}-U{j:02d}"
            truth.append({
                "truth_id": tid, "track_id": tid,
                "patient_index": int(patient_index), "study_index": study, "series_id": series,
                "file_name": f"{folder}_{sl:03d}.png", "slice_index": int(sl),
                "bbox_x1": float(xy[:, 0].min() - 5), "bbox_y1": float(xy[:, 1].min() - 5),
                "bbox_x2": float(xy[:, 0].max() + 5), "bbox_y2": float(xy[:, 1].max() + 5),
                "long_diameter_px": long_px, "short_diameter_px": short_px,
                "coarse_type": ctype, "annotated": False, "lesion_id": None,
                "coarse_type_name": COARSE_TYPES[ctype], "site": site,
                "appearance": les.look.kind, "on_key_image": on_key,
                "possibly_noisy": False, "split": int(srows[0]["split"]),
                "center_x": float(x0 + les.u / step), "center_y": float(y0 + les.v / step),
                "first_slice": int(sl), "last_slice": int(sl),
                "mean_hu": float(les.look.mean_hu(e)), "companion_of": None,
                "study_months": float("nan"), "spacing_x": float(srows[0]["spacing_x"]),
                "spacing_z": dz, "lesion_kind": "unannotated",
                "_type_source": "unannotated lesion added",
            })
    return truth, n_slices, ranges


def _unannotated_for_series(
    body: an.Body, srows: list[dict], lesions: list, groups: list[list[int]], key_z: dict,
    t_ref: float, z_ref: float, dz: float, step: float, size: int, share: float,
    rng: np.random.Generator,
) -> list[tuple[Lesion, int, str, int, bool]]:
    """Unannotated lesions for one series: ``(lesion, type, site, truth slice, on a key)``.

    As many as ``share`` of the series' lesions need (rounded at random), each shown on a
    written slice: on a key slice (:data:`ON_KEY_SHARE`) or only on its neighbours.
    """
    if share <= 0:
        return []
    target = int(np.floor(len(srows) * share / (1.0 - share) + rng.random()))
    keys = sorted({int(r["key_slice_index"]) for r in srows})
    slices = [i for g0, g1 in groups for i in range(g0, g1 + 1)]
    others = [x[1] for x in lesions]
    out: list[tuple[Lesion, int, str, int, bool]] = []
    cache: dict = {}
    for _ in range(3 * target + 2):
        if len(out) >= target:
            break
        r = srows[int(rng.integers(len(srows)))]
        zk = key_z[id(r)]
        t_key = t_ref + (zk - z_ref) / body.length
        by_type = _sites_at(float(np.clip(t_key, 0.28, 0.97)) - body.dt)
        if not by_type:
            continue
        types = sorted(by_type)
        ctype = types[int(rng.integers(len(types)))]
        site = by_type[ctype][int(rng.integers(len(by_type[ctype])))]
        les = _make_lesion(ctype, site, step, size, rng)
        z = zk
        if rng.random() >= ON_KEY_SHARE:
            z = zk + (1.0 if rng.random() < 0.5 else -1.0) * (les.rc + rng.uniform(0.15, 0.6) * dz)
        t = float(np.clip(t_key + (z - zk) / body.length, 0.28, 0.97))
        moved = [Lesion(u=o.u, v=o.v, z=t_ref * body.length + (o.z - z_ref), ra=o.ra, rb=o.rb,
                        rc=o.rc, angle=o.angle, harmonics=o.harmonics, look=o.look,
                        calc_xy=o.calc_xy) for o in others]
        pos = _place(body, site, les.ra, les.rc, rng, moved, t_fixed=t, cache=cache, tries=4)
        if pos is None:
            continue
        les.u, les.v, les.z = pos[0], pos[1], z
        seen = {i: les.section(i * dz) for i in slices}
        seen = {i: a * b for i, (a, b) in seen.items() if min(a, b) >= 0.35 * step}
        if not seen:
            continue
        on_key = [i for i in keys if i in seen]
        sl = max(on_key, key=seen.get) if on_key else max(seen, key=seen.get)
        others.append(les)
        out.append((les, ctype, site, sl, bool(on_key)))
    return out


def render_like(
    csv_path: str | Path,
    out_dir: str | Path,
    *,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = False,
    n_jobs: int = 1,
    unannotated_share: float = UNANNOTATED_SHARE,
) -> DemoResult:
    """Render synthetic slices for the rows of a real ``DL_info.csv``.

    Parameters
    ----------
    csv_path : str or pathlib.Path
        A ``DL_info.csv`` (official columns; extra columns are copied along).
    out_dir : str or pathlib.Path
        An empty or new folder, or a previous demo output (replaced).
    limit : int, optional
        Render only the first ``limit`` key images (and all their rows).
    seed : int, default 0
        Seeds the synthetic bodies and appearances.
    progress : bool, default False
        Show a progress bar.
    n_jobs : int, default 1
        Worker processes.
    unannotated_share : float, default 0.5
        Share of the truth file's lesions that are unannotated ones added around the rows' key
        slices (see :func:`~deeplesion_lab.demo.generate_demo`).

    Returns
    -------
    DemoResult
        ``n_skipped`` counts source rows rejected by :func:`read_dl_info` (not rendered).
    """
    t_start = time.perf_counter()
    csv_path = Path(csv_path)
    seed = _check_int("seed", seed, 0, 2**32 - 1)
    n_jobs = _check_int("n_jobs", n_jobs, 1, 256)
    share = check_share(unannotated_share)
    if limit is not None:
        limit = _check_int("limit", limit, 1, 10**9)
    info = read_dl_info(csv_path)
    les = info.lesions
    if les.empty:
        raise LabError(f"{csv_path}: no valid rows to render ({info.n_rejected_rows} rejected)")
    too_small = les[(les["image_height"] < 64) | (les["image_width"] < 64)]
    if len(too_small):
        r = too_small.iloc[0]
        raise LabError(f"{csv_path}: line {int(r['source_line'])} ({r['file_name']}): "
                       f"Image_size {int(r['image_height'])}x{int(r['image_width'])} is too small")
    files = les["file_name"].drop_duplicates()
    if limit is not None:
        files = files.iloc[:limit]
    les = les[les["file_name"].isin(set(files))]

    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, skipinitialspace=False)
        header = [h.strip() for h in next(reader)]
        raw = {i + 2: rec for i, rec in enumerate(r for r in reader if r)}

    params = {"like": str(csv_path), "limit": limit, "seed": seed, "unannotated_share": share}
    out = prepare_output(out_dir, "like", params)
    images_root = out / "Images_png"
    images_root.mkdir(exist_ok=True)
    records = les[list(_ROW_FIELDS)].to_dict("records")
    by_patient: dict[int, list[dict]] = {}
    for r in records:
        by_patient.setdefault(int(r["patient_index"]), []).append(r)
    jobs = [(p, rows, seed, str(images_root), share) for p, rows in by_patient.items()]

    from tqdm.auto import tqdm

    truth: list[dict] = []
    ranges: dict[int, tuple[int, int]] = {}
    n_slices = 0
    with tqdm(total=len(jobs), desc="demo-data --like", unit="patient",
              disable=not progress) as bar:
        for t_rows, n, rg in run_jobs(_like_patient, jobs, n_jobs):
            truth.extend(t_rows)
            ranges.update(rg)
            n_slices += n
            bar.update(1)
            bar.set_postfix(slices=n_slices, refresh=False)

    sources = {t["truth_id"]: t.pop("_type_source") for t in truth}
    truth_path = write_truth(truth, out / "truth.parquet", metadata={
        "deeplesion_lab.demo": f"like={csv_path.name} limit={limit} seed={seed}",
        "deeplesion_lab.demo.type_inferred": str(sum(v == "inferred from location"
                                                     for v in sources.values())),
    })
    i_range = header.index("Slice_range")
    rows_out = []
    for line in sorted(ranges):
        rec = list(raw[line])
        g0, g1 = ranges[line]
        rec[i_range] = f"{g0}, {g1}"
        rows_out.append(dict(zip(header, rec, strict=False)))
    write_readme(out, LIKE_README.format(source=csv_path, n=len(rows_out), n_slices=n_slices,
                                         seed=seed))
    csv_out = write_dl_info(rows_out, out / "DL_info.csv", columns=header)
    result = DemoResult(
        csv_path=csv_out, images_root=images_root, truth_path=truth_path,
        n_patients=len(jobs), n_lesions=len(rows_out),
        n_key_images=int(pd.Series([r["File_name"] for r in rows_out]).nunique()),
        n_slices=n_slices, n_truth=len(truth), seconds=time.perf_counter() - t_start,
        n_skipped=info.n_rejected_rows,
    )
    finish_marker(out, "like", params, {"lesions": result.n_lesions, "slices": n_slices})
    return result


LIKE_README = """\
# Synthetic slices for real DeepLesion rows

**Synthetic images.** `deeplesion-lab demo-data --like {source}` (seed {seed}) drew these
{n_slices} slices for {n} rows of that file: no real pixel data is here.

- `DL_info.csv`: a copy of the rendered rows (every source column, the same text) except
  `Slice_range`, narrowed to the slices written around each key slice.
- `Images_png/`: 16-bit PNG, HU = value - 32768, drawn at each row's level along the body with
  the lesion at the row's box, RECIST axes and orientation.
- `truth.parquet`: one row per CSV row (evaluation only). Rows whose type is -1 (training
  split) get a type plausible at their level, drawn at random, in `coarse_type`.
"""
