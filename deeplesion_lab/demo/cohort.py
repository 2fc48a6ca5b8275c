"""The synthetic cohort: patients, their studies (follow-up) and their lesions over time.

Planning is in two steps so that the generator needs constant memory per patient and gives the
same result in any order or process: :func:`plan_cohort` makes the few cohort-wide choices
(patient-level split, the lesion types dealt to each patient so that every type is spread over
many patients), then :func:`build_patient` draws everything else about one patient from that
patient's own random stream.

A patient has 1-4 studies months apart (2.2 on average; DeepLesion has 2.4) and about 7
annotated lesions over them (DeepLesion: 7.4). Lesions are *tracks*: the same physical lesion in every
study where it is present, moved a little and grown or shrunk; some appear later, some
disappear. Some tracks are companions placed on the same slice as another lesion, so that an
annotated key slice often shows other lesions that nobody annotated (as in the real data).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import anatomy as an
from .canvas import Canvas
from .lesions import (
    SITES,
    TYPE_SITES,
    Appearance,
    Lesion,
    lesion_harmonics,
    sample_appearance,
    sample_long_diameter_px,
    site_candidates,
)

__all__ = ["PatientPlan", "Study", "Track", "Patient", "plan_cohort", "build_patient"]

#: How many of the 8 coarse types (codes 1-8) one deck holds; common types come twice.
_DECK = [1, 2, 3, 4, 5, 6, 7, 8, 2, 3, 4, 5]
#: Context slices on each side of a key slice, by slice interval (mm).
CONTEXT_HALF = {1.0: 5, 2.0: 3, 5.0: 2}
#: Sites whose tissue is checked above and below the lesion centre when placing it.
_Z_CHECKED = {"lung", "liver", "spleen", "kidney", "vertebra", "pelvic bone"}


@dataclass
class PatientPlan:
    """Cohort-wide decisions about one patient."""

    index: int
    split: int
    types: list[int]


@dataclass
class Study:
    """One CT study (a single series of axial slices)."""

    index: int
    series_id: int
    fov_mm: float
    dz: float
    e: float  # contrast enhancement 0-1
    noise: float  # noise sigma (HU)
    fov_circle: bool
    ox: float  # body centre offset from the image centre (fraction of the image)
    oy: float
    months: float
    z0: float = 0.0  # z (mm) of slice index 0

    def spacing(self, size: int) -> float:
        return self.fov_mm / size

    def slice_z(self, index: int) -> float:
        return self.z0 + index * self.dz

    def slice_index(self, z: float) -> int:
        return int(round((z - self.z0) / self.dz))


@dataclass
class Track:
    """One physical lesion followed over a patient's studies."""

    number: int
    coarse_type: int
    site: str
    base: Lesion
    companion_of: int | None
    present: list[bool] = field(default_factory=list)
    annotated: list[bool] = field(default_factory=list)
    changes: list[tuple[float, float, float, float, float, float]] = field(default_factory=list)

    def in_study(self, k: int) -> Lesion | None:
        """The lesion as it is in study ``k`` (0-based), or ``None`` if absent."""
        if not self.present[k]:
            return None
        du, dv, dz, g, dang, dhu = self.changes[k]
        b = self.base
        return Lesion(u=b.u + du, v=b.v + dv, z=b.z + dz, ra=b.ra * g, rb=b.rb * g,
                      rc=b.rc * g, angle=b.angle + dang, harmonics=b.harmonics, look=b.look,
                      calc_xy=b.calc_xy, hu_shift=dhu)


@dataclass
class Patient:
    """A synthetic patient: body, studies, lesion tracks."""

    index: int
    split: int
    sex: str
    age: int | None
    body: an.Body
    studies: list[Study]
    tracks: list[Track]


def plan_cohort(n_patients: int, seed: int) -> list[PatientPlan]:
    """Patient-level split (~70/15/15) and the lesion types of every patient.

    Types are dealt from shuffled decks holding every type, so each type reaches many patients
    and the few validation and test patients see most types.
    """
    rng = np.random.default_rng([int(seed), 0xDE1E5])
    n = int(n_patients)
    if n >= 3:
        n_val = max(1, int(round(0.15 * n)))
        n_test = max(1, int(round(0.15 * n)))
    else:
        n_val, n_test = 0, n - 1
    splits = np.array([1] * (n - n_val - n_test) + [2] * n_val + [3] * n_test)
    rng.shuffle(splits)
    counts = rng.choice([3, 3, 4, 4, 5], size=n)
    deck: list[int] = []
    plans = []
    for i in range(n):
        types = []
        for _ in range(int(counts[i])):
            if not deck:
                deck = list(rng.permutation(_DECK))
            types.append(int(deck.pop()))
        plans.append(PatientPlan(index=i + 1, split=int(splits[i]), types=types))
    return plans


def _coarse_labels(body: an.Body, t: float, step: float = 2.0, n: int = 260):
    cv = Canvas(n, n, step, n / 2.0, n / 2.0)
    level = body.paint(cv, t, 0.5, table=False, detail=False)
    return cv.lab, level, cv.u, cv.v


def _place(
    body: an.Body,
    site_name: str,
    ra: float,
    rc: float,
    rng: np.random.Generator,
    others: list[Lesion],
    t_hint: float | None = None,
    tries: int = 14,
) -> tuple[float, float, float] | None:
    """Find a centre (u, v, z mm) for a lesion of ``site`` away from ``others``."""
    from scipy import ndimage

    site = SITES[site_name]
    for attempt in range(tries):
        if t_hint is not None and attempt < tries // 2:
            t = t_hint + float(rng.normal(0.0, 0.15 * rc / body.length))
        else:
            t = float(rng.uniform(*site.t_range)) + body.dt
        labels, level, u, v = _coarse_labels(body, t)
        mask = site_candidates(labels, site, level, u, v)
        if not mask.any():
            continue
        if site_name in _Z_CHECKED:
            # the lesion is 3-D: it must stay in its tissue on the slices above and below too
            # (and a vertebral lesion clear of the discs)
            dzz = max(min(0.6 * rc, 8.0), 3.0)
            for sign in (-1.0, 1.0):
                lab2, lev2, _, _ = _coarse_labels(body, t + sign * dzz / body.length)
                m2 = site_candidates(lab2, site, lev2, u, v)
                if site.depth > 0:
                    m2 = ndimage.distance_transform_edt(m2) * 2.0 >= 0.8 * site.depth * ra
                mask &= m2
            if not mask.any():
                continue
        z = t * body.length
        for o in others:
            if abs(o.z - z) < (o.rc + rc) * 1.1 + 4.0:
                keep = np.hypot(u[None, :] - o.u, v[:, None] - o.v) > 1.3 * (o.ra + ra) + 5.0
                mask &= keep
        if not mask.any():
            continue
        if site_name in ("subcutaneous", "muscle"):
            # a body-wall lesion stays under the skin
            inside = (labels != an.AIR) & (labels != an.TABLE)
            mask &= ndimage.distance_transform_edt(inside) * 2.0 >= 0.9 * ra + 2.0
            if not mask.any():
                continue
        dist = ndimage.distance_transform_edt(mask) * 2.0
        need = site.depth * ra
        ok = dist >= max(need, 1.0)
        if not ok.any():
            if dist.max() < 0.5 * need:
                continue
            ok = dist >= 0.8 * dist.max()
        rows, cols = np.nonzero(ok)
        k = int(rng.integers(len(rows)))
        jitter = rng.uniform(-1.0, 1.0, 2)
        return float(u[cols[k]] + jitter[0]), float(v[rows[k]] + jitter[1]), z
    return None


def _make_lesion(
    coarse_type: int, site: str, spacing: float, size: int, rng: np.random.Generator
) -> Lesion:
    look: Appearance = sample_appearance(site, rng)
    long_px = sample_long_diameter_px(coarse_type, rng, size)
    long_mm = min(long_px * spacing, SITES[site].cap_mm * float(rng.uniform(0.8, 1.0)))
    long_mm = max(long_mm, 4.0)
    if look.kind in ("calcified",) and long_mm > 14.0:
        long_mm = float(rng.uniform(5.0, 14.0))  # calcified granulomas are small
    ratio = float(np.clip(rng.beta(4.25, 1.57), 0.35, 1.0))
    ra = long_mm / 2.0
    rb = ra * ratio
    rc = max(float(np.sqrt(ra * rb) * rng.uniform(0.75, 1.25)), 3.5)
    harmonics = lesion_harmonics(look, rng)
    calc_xy = rng.uniform(-0.5, 0.5, (look.calcs, 2)) if look.calcs else np.zeros((0, 2))
    return Lesion(u=0.0, v=0.0, z=0.0, ra=ra, rb=rb, rc=rc,
                  angle=float(rng.uniform(0, np.pi)), harmonics=harmonics, look=look,
                  calc_xy=calc_xy)


def _choose_site(coarse_type: int, rng: np.random.Generator) -> str:
    opts = TYPE_SITES[coarse_type]
    names = list(opts)
    w = np.array([opts[k] for k in names])
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def build_patient(plan: PatientPlan, seed: int, size: int) -> Patient:
    """Draw one patient: body, studies and lesion tracks (placed, with follow-up changes)."""
    rng = np.random.default_rng([int(seed), int(plan.index), 1])
    sex = "M" if rng.random() < 0.58 else "F"
    age = None if rng.random() < 0.05 else int(np.clip(rng.normal(56, 15), 18, 89))
    body = an.Body.sample(rng, sex)

    # DeepLesion: 10,594 studies and 32,735 lesions of 4,427 patients (2.4 and 7.4 each)
    n_studies = int(rng.choice([1, 2, 3, 4], p=[0.32, 0.3, 0.22, 0.16]))
    a_max = max(body.A_chest, body.A_abd, body.A_pelv)
    base_fov = 2.0 * a_max * float(rng.uniform(1.1, 1.25))
    studies = []
    months = 0.0
    for k in range(n_studies):
        fov = float(np.clip(round(base_fov * rng.uniform(0.97, 1.05) / 5.0) * 5.0, 260, 500))
        studies.append(
            Study(
                index=k + 1,
                series_id=int(rng.choice([1, 2, 3], p=[0.8, 0.12, 0.08])),
                fov_mm=fov,
                dz=float(rng.choice([5.0, 2.0, 1.0], p=[0.5, 0.15, 0.35])),
                e=0.0 if rng.random() < 0.25 else float(rng.uniform(0.5, 1.0)),
                noise=float(rng.uniform(9, 18)),
                fov_circle=bool(rng.random() < 0.6),
                ox=float(rng.uniform(-0.03, 0.03)),
                oy=float(rng.uniform(-0.05, 0.03)),
                months=months,
            )
        )
        months += float(rng.uniform(2, 12))

    # tracks: the dealt types, plus companions on the same slice
    first_spacing = studies[0].spacing(size)
    tracks: list[Track] = []
    placed: list[Lesion] = []
    todo = list(plan.types)
    attempts = 0
    while todo and attempts < len(plan.types) + 6:
        attempts += 1
        ctype = todo.pop(0)
        site = _choose_site(ctype, rng)
        les = _make_lesion(ctype, site, first_spacing, size, rng)
        pos = _place(body, site, les.ra, les.rc, rng, placed)
        if pos is None:
            if not todo and not tracks:
                todo.append(ctype)  # never leave a patient without lesions
            continue
        les.u, les.v, les.z = pos
        placed.append(les)
        tracks.append(Track(len(tracks) + 1, ctype, site, les, None))
        if rng.random() < 0.5:
            t = les.z / body.length - body.dt
            if rng.random() < 0.45:
                ctype2, site2 = ctype, site
            else:
                near = [s for s in SITES.values()
                        if s.t_range[0] - 0.01 <= t <= s.t_range[1] + 0.01]
                pick = near[int(rng.integers(len(near)))]
                ctype2, site2 = pick.coarse_type, pick.name
            les2 = _make_lesion(ctype2, site2, first_spacing, size, rng)
            pos2 = _place(body, site2, les2.ra, les2.rc, rng, placed, t_hint=les.z / body.length)
            if pos2 is not None:
                les2.u, les2.v, les2.z = pos2
                placed.append(les2)
                tracks.append(Track(len(tracks) + 1, ctype2, site2, les2, len(tracks)))

    # presence, annotation and change over the studies
    for tr in tracks:
        primary = tr.companion_of is None
        start = 0 if (rng.random() < 0.8 or n_studies == 1) else int(rng.integers(1, n_studies))
        present, alive = [], True
        for k in range(n_studies):
            if k > start and alive and rng.random() < 0.12:
                alive = False
            present.append(k >= start and alive)
        tr.present = present
        tr.annotated = [p and rng.random() < (0.85 if primary else 0.25) for p in present]
        if primary and not any(tr.annotated):
            tr.annotated[present.index(True)] = True
        g = 1.0
        changes = []
        for k in range(n_studies):
            if k > 0:
                g = float(np.clip(g * np.exp(rng.normal(0.0, 0.2)), 0.5, 2.0))
            drift = rng.normal(0.0, 2.0, 3) if k > 0 else np.zeros(3)
            changes.append((float(drift[0]), float(drift[1]), float(drift[2]), g,
                            float(rng.normal(0, 0.08)) if k else 0.0,
                            float(rng.normal(0, 4.0)) if k else 0.0))
        tr.changes = changes
    for k in range(n_studies):
        if tracks and not any(tr.annotated[k] for tr in tracks):
            cands = [tr for tr in tracks if tr.present[k]] or tracks
            tr = cands[int(rng.integers(len(cands)))]
            tr.present[k] = tr.annotated[k] = True

    # each study scans from a little above its highest lesion
    for k, st in enumerate(studies):
        zs = [tr.in_study(k).z for tr in tracks if tr.present[k]]
        top = (min(zs) if zs else 0.45 * body.length) - float(rng.uniform(40, 220))
        st.z0 = float(np.floor(top / st.dz) * st.dz)
    return Patient(plan.index, plan.split, sex, age, body, studies, tracks)
