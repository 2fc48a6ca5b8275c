"""Render one synthetic patient: every study's slices to PNG, and its CSV and truth rows."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..dl_info import make_lesion_id
from ..images import write_png16
from ..lesion_types import COARSE_TYPES
from . import anatomy as an
from .canvas import Canvas, NoiseBank
from .cohort import CONTEXT_HALF, Patient, Study
from .lesions import SITES, Lesion, paint_lesion, recist_points
from .writer import fmt, fmt_list

__all__ = ["PatientOutput", "render_patient", "render_slice", "finish_slice", "window_for"]

#: Probability that an annotated row is flagged (and made) possibly noisy.
NOISY_RATE = 0.03


@dataclass
class PatientOutput:
    """Rows and counts from rendering one patient."""

    csv_rows: list[dict[str, str]] = field(default_factory=list)
    truth_rows: list[dict] = field(default_factory=list)
    n_slices: int = 0


def window_for(coarse_type: int, rng: np.random.Generator) -> tuple[float, float]:
    """A DICOM window as the real rows have them for this type."""
    r = rng.random()
    if coarse_type == 5:
        return (-1500.0, 500.0) if r < 0.8 else (-1350.0, 150.0) if r < 0.9 else (-175.0, 275.0)
    if coarse_type == 1:
        return (-1500.0, 500.0) if r < 0.6 else (-450.0, 1050.0) if r < 0.8 else (-175.0, 275.0)
    return (-175.0, 275.0) if r < 0.92 else (-160.0, 240.0) if r < 0.97 else (-1500.0, 500.0)


def finish_slice(cv: Canvas, noise: np.ndarray, sigma: float, fov_circle: bool) -> np.ndarray:
    """Add noise, blank the outside of the scan field (-2048) and quantise to int16 HU."""
    hu = cv.hu
    hu += np.float32(sigma) * noise
    if fov_circle:
        hu[_outside_fov(cv.height, cv.width)] = -2048.0
    np.rint(hu, out=hu)
    np.clip(hu, -2048, 3071, out=hu)
    return hu.astype(np.int16)


@functools.lru_cache(maxsize=4)
def _outside_fov(height: int, width: int) -> np.ndarray:
    """Pixels outside the scanner's circular field of view (as in real CT)."""
    yy, xx = np.ogrid[:height, :width]
    r = min(height, width) / 2.0
    return (xx - (width - 1) / 2.0) ** 2 + (yy - (height - 1) / 2.0) ** 2 > r * r


def _rotate_about(hu: np.ndarray, angle: float, x0: float, y0: float) -> np.ndarray:
    """The image content rotated by ``angle`` (radians, image axes) about pixel ``(x0, y0)``."""
    from scipy import ndimage

    c, s = np.cos(angle), np.sin(angle)
    m = np.array([[c, -s], [s, c]])  # output (row, col) -> input (row, col), about the centre
    centre = np.array([y0, x0])
    return ndimage.affine_transform(hu, m, offset=centre - m @ centre, order=1,
                                    mode="constant", cval=-1000.0, output=np.float32)


def to_image_px(study: Study, size: int, u, v) -> tuple[np.ndarray, np.ndarray]:
    """Body millimetres to image pixels in ``study`` (its shift and in-plane rotation)."""
    s = study.spacing(size)
    x0, y0 = size / 2.0 + study.ox * size, size / 2.0 + study.oy * size
    du, dv = np.asarray(u, dtype=float) / s, np.asarray(v, dtype=float) / s
    c, sn = np.cos(study.rot), np.sin(study.rot)
    return x0 + c * du - sn * dv, y0 + sn * du + c * dv


def render_slice(
    patient: Patient,
    study: Study,
    z: float,
    size: int,
    lesions: dict[int, tuple[Lesion, float]],
    bank: NoiseBank,
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[int, float]]:
    """Render the slice at ``z`` (mm) of ``study``; returns HU and each lesion's section area.

    The patient lies shifted (``study.ox, oy``) and rotated (``study.rot``) in the scanner; the
    table stays level.
    """
    s = study.spacing(size)
    x0, y0 = size / 2.0 + study.ox * size, size / 2.0 + study.oy * size
    cv = Canvas(size, size, s, x0, y0)
    level = patient.body.paint(cv, z / patient.body.length, study.e, table=not study.rot)
    areas = {}
    for num, (les, bg) in lesions.items():
        a, b = les.section(z)
        if a > 0 and paint_lesion(cv, les, z, study.e, bank, rng, bg_hu=bg):
            areas[num] = a * b
    if study.rot:
        body = _rotate_about(cv.hu, study.rot, x0, y0)
        cv.hu = body.copy()
        patient.body._table(cv, level)
        inside = body > -900.0
        cv.hu[inside] = body[inside]
    noise = bank.crop(rng, size, size)
    return finish_slice(cv, noise, study.noise, study.fov_circle), areas


def _normalized_location(patient: Patient, study: Study, les: Lesion,
                         rng: np.random.Generator) -> np.ndarray:
    """DeepLesion's normalised location as a body-box and body-part estimate would give it.

    x, y: relative to the box of the (rotated) body outline in the image, whose estimate errs
    by ``study.box_err``; z: the level along the body plus the study's body-part error
    ``study.z_err`` and a little per-lesion noise. Clipped to 0-1.
    """
    body = patient.body
    level = body.level(les.z / body.length)
    c, sn = np.cos(study.rot), np.sin(study.rot)
    u, v = les.u, les.v
    ur, vr = c * u - sn * v, sn * u + c * v
    half_b = (level.Ba + level.Bp) / 2.0
    cy = (level.Bp - level.Ba) / 2.0  # v of the box centre (unrotated)
    cxr, cyr = -sn * cy, c * cy
    scale = float(np.exp(study.box_err))
    wx = np.hypot(level.A * c, half_b * sn) * scale
    wy = np.hypot(level.A * sn, half_b * c) * scale
    lx = (ur - cxr + wx) / (2.0 * wx) + rng.normal(0.0, 0.004)
    ly = (vr - cyr + wy) / (2.0 * wy) + rng.normal(0.0, 0.004)
    lz = les.z / body.length + study.z_err + rng.normal(0.0, 0.002)
    return np.clip([lx, ly, lz], 0.0, 1.0)


def _choose_unannotated(
    patient: Patient, k: int, regular: list[int], pool: list[int],
    seen: dict[int, dict[int, float]], n_annotated: int, seed: int,
) -> set[int]:
    """Which unannotated lesions study ``k`` shows so that they are the patient's share.

    The target is ``n_annotated * share / (1 - share)`` rounded at random (unbiased), counted
    over the lesions that the rendered slices show (``seen``). Unannotated track lesions count
    first (some are dropped from this study when they alone exceed it), then pool lesions in
    their planned order fill it up.
    """
    share = float(patient.unannotated_share)
    rng = np.random.default_rng([int(seed), patient.index, k, 0x5A4E])
    want = n_annotated * share / (1.0 - share)
    target = int(np.floor(want + rng.random()))
    shown = [n for n in regular if seen[n]]
    if len(shown) > target:
        keep = rng.permutation(len(shown))[:target]
        return {shown[i] for i in sorted(keep)}
    chosen = set(shown)
    for n in pool:
        if len(chosen) >= target:
            break
        if seen[n]:
            chosen.add(n)
    return chosen


def _merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def render_patient(
    patient: Patient, size: int, images_root: Path, bank: NoiseBank, seed: int
) -> PatientOutput:
    """Render every study of ``patient`` into ``images_root``; return its CSV and truth rows."""
    out = PatientOutput()
    for k, st in enumerate(patient.studies):
        rng = np.random.default_rng([int(seed), patient.index, st.index, 99])
        s = st.spacing(size)
        present = {tr.number: tr for tr in patient.tracks if tr.present[k]}
        lesions = {n: tr.in_study(k) for n, tr in present.items()}
        keys = {n: st.slice_index(lesions[n].z) for n, tr in present.items() if tr.annotated[k]}
        if not keys:
            continue
        half = CONTEXT_HALF[st.dz]
        groups = _merge([(max(i - half, 0), i + half) for i in keys.values()])
        # which lesions the rendered slices will show (the same rule as paint_lesion)
        seen: dict[int, dict[int, float]] = {}
        for n, les in lesions.items():
            seen[n] = {}
            for g0, g1 in groups:
                for i in range(g0, g1 + 1):
                    a, b = les.section(st.slice_z(i))
                    if min(a, b) >= 0.35 * s:
                        seen[n][i] = a * b
        n_keys = sum(1 for n, i in keys.items() if seen[n])
        regular = [n for n, tr in present.items() if n not in keys and tr.kind != "unannotated"]
        pool = [n for n, tr in present.items() if tr.kind == "unannotated"]
        chosen = _choose_unannotated(patient, k, regular, pool, seen, n_keys, seed)
        present = {n: tr for n, tr in present.items() if n in keys or n in chosen}
        bgs = {n: an.tissue_hu(SITES[present[n].site].labels[0], st.e) for n in present}
        series = f"{patient.index:06d}_{st.index:02d}_{st.series_id:02d}"
        areas: dict[int, dict[int, float]] = {n: {} for n in present}
        for g0, g1 in groups:
            for i in range(g0, g1 + 1):
                hu, a = render_slice(patient, st, st.slice_z(i), size,
                                     {n: (lesions[n], bgs[n]) for n in present}, bank, rng)
                write_png16(images_root / series / f"{i:03d}.png", hu)
                out.n_slices += 1
                for n, area in a.items():
                    areas[n][i] = area
        for n in list(keys):
            if keys[n] not in areas[n]:  # too thin to show on its centre slice
                if areas[n]:
                    keys[n] = max(areas[n], key=areas[n].get)
                else:
                    del keys[n]
        key_set = set(keys.values())
        age = "" if patient.age is None else str(int(patient.age + st.months // 12))
        for n, tr in present.items():
            if not areas[n]:
                continue  # not on any rendered slice
            les = lesions[n]
            if n in keys:
                sl = keys[n]
            else:
                on_keys = {i: a for i, a in areas[n].items() if i in key_set}
                pool = on_keys or areas[n]
                sl = max(pool, key=pool.get)
            pts = recist_points(les, st.slice_z(sl))
            if pts is None:  # the chosen slice misses it (only for a key slice off-centre)
                sl = max(areas[n], key=areas[n].get)
                pts = recist_points(les, st.slice_z(sl))
            long_mm, short_mm = pts
            both = np.vstack([long_mm, short_mm])
            px, py = to_image_px(st, size, both[:, 0], both[:, 1])
            recist = np.column_stack([px, py]).ravel()
            box = _box(recist)
            diam = _diameters(recist)
            file_name = f"{series}_{sl:03d}.png"
            cx, cy = to_image_px(st, size, les.u, les.v)
            truth = {
                "truth_id": f"{patient.index:06d}_{st.index:02d}-L{n:02d}",
                "track_id": f"P{patient.index:06d}-L{n:02d}",
                "patient_index": patient.index, "study_index": st.index,
                "series_id": st.series_id, "file_name": file_name, "slice_index": sl,
                "bbox_x1": box[0], "bbox_y1": box[1], "bbox_x2": box[2], "bbox_y2": box[3],
                "long_diameter_px": diam[0], "short_diameter_px": diam[1],
                "coarse_type": tr.coarse_type, "annotated": n in keys, "lesion_id": None,
                "coarse_type_name": COARSE_TYPES[tr.coarse_type], "site": tr.site,
                "appearance": les.look.kind, "on_key_image": sl in key_set,
                "possibly_noisy": False, "split": patient.split,
                "center_x": float(cx), "center_y": float(cy),
                "first_slice": min(areas[n]), "last_slice": max(areas[n]),
                "mean_hu": float(les.look.mean_hu(st.e) + les.hu_shift),
                "companion_of": (None if tr.companion_of is None
                                 else f"P{patient.index:06d}-L{tr.companion_of:02d}"),
                "study_months": float(st.months), "spacing_x": s, "spacing_z": st.dz,
                "lesion_kind": tr.kind,
                "related_track": (None if tr.related_to is None
                                  else f"P{patient.index:06d}-L{tr.related_to:02d}"),
                "study_rotation_deg": float(np.degrees(st.rot)),
            }
            if n in keys:
                noisy = bool(rng.random() < NOISY_RATE)
                shown = _annotate(recist, rng, noisy)
                cells = [float(fmt(v)) for v in shown]
                truth["lesion_id"] = make_lesion_id(file_name, cells)
                truth["possibly_noisy"] = noisy
                sbox = _box(shown)
                sd = _diameters(shown)
                g0, g1 = next((a, b) for a, b in groups if a <= sl <= b)
                loc = _normalized_location(patient, st, les, rng)
                ctype = tr.coarse_type if patient.split != 1 else -1
                win = window_for(tr.coarse_type, rng)
                out.csv_rows.append({
                    "File_name": file_name,
                    "Patient_index": str(patient.index),
                    "Study_index": str(st.index),
                    "Series_ID": str(st.series_id),
                    "Key_slice_index": str(sl),
                    "Measurement_coordinates": fmt_list(shown),
                    "Bounding_boxes": fmt_list(sbox),
                    "Lesion_diameters_Pixel_": fmt_list(sd),
                    "Normalized_lesion_location": fmt_list(loc),
                    "Coarse_lesion_type": str(ctype),
                    "Possibly_noisy": "1" if noisy else "0",
                    "Slice_range": f"{g0}, {g1}",
                    "Spacing_mm_px_": fmt_list([s, s, st.dz]),
                    "Image_size": f"{size}, {size}",
                    "DICOM_windows": fmt_list(win),
                    "Patient_gender": patient.sex,
                    "Patient_age": age,
                    "Train_Val_Test": str(patient.split),
                })
            out.truth_rows.append(truth)
    return out


def _box(recist: np.ndarray, pad: float = 5.0) -> np.ndarray:
    p = np.asarray(recist, dtype=float).reshape(4, 2)
    return np.array([p[:, 0].min() - pad, p[:, 1].min() - pad,
                     p[:, 0].max() + pad, p[:, 1].max() + pad])


def _diameters(recist: np.ndarray) -> tuple[float, float]:
    p = np.asarray(recist, dtype=float).reshape(4, 2)
    return float(np.linalg.norm(p[0] - p[1])), float(np.linalg.norm(p[2] - p[3]))


def _annotate(recist: np.ndarray, rng: np.random.Generator, noisy: bool) -> np.ndarray:
    """What an annotator wrote: the true end points with a little hand jitter, or, for a noisy
    row, a clearly off measurement (shifted and mis-sized)."""
    pts = np.asarray(recist, dtype=float).reshape(4, 2).copy()
    pts += rng.normal(0.0, 0.35, pts.shape)
    if noisy:
        c = pts.mean(axis=0)
        long_px = float(np.linalg.norm(pts[0] - pts[1]))
        pts = c + (pts - c) * float(rng.uniform(0.65, 1.4))
        pts += rng.normal(0.0, 0.15 * long_px + 1.0, 2)
    # the long axis must stay the longer one
    if np.linalg.norm(pts[2] - pts[3]) > np.linalg.norm(pts[0] - pts[1]):
        pts = pts[[2, 3, 0, 1]]
    return pts.ravel()
