"""The synthetic cohort: patients, their studies (follow-up) and their lesions over time.

Planning is in two steps so that the generator needs constant memory per patient and gives the
same result in any order or process: :func:`plan_cohort` makes the few cohort-wide choices
(patient-level split, the lesion types dealt to each patient so that every type is spread over
many patients), then :func:`build_patient` draws everything else about one patient from that
patient's own random stream.

A patient has 1-4 studies months apart (2.2 on average; DeepLesion has 2.4) and about 7
annotated lesions over them (DeepLesion: 7.4). Lesions are *tracks*: the same physical lesion in
every study where it is present. Between studies a lesion grows, shrinks (or resolves and
vanishes) or stays stable, may split into two, and new lesions appear, some where a vanished one
was; similar-looking *siblings* (metastases of one primary) sit close together in the same organ;
and the patient lies differently (shift and small in-plane rotation in the scanner, another
slice offset and spacing, organs moved by breathing, another error of the body-part estimate of
the normalised location). Matching a lesion across studies by location alone or by appearance
alone therefore fails on some of them (issue 19).

Some tracks are companions placed on the same slice as another lesion, and each study gets
*unannotated* lesions of every type and size, on the key slices and only on their neighbouring
slices, up to the share set by ``unannotated_share``: by default :data:`UNANNOTATED_SHARE`, the
literature's estimate that about half of DeepLesion's lesions are not annotated (Cai et al.,
"Lesion Harvester: iteratively mining unlabeled lesions and hard-negative examples at scale",
IEEE TMI 40(1), 2021, doi:10.1109/TMI.2020.3022034: "50% of the lesions in DeepLesion are left
unlabeled"). The renderer (:func:`~deeplesion_lab.demo.render.render_patient`) draws from the
pool of such lesions planned here so that the truth file holds the share exactly up to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

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

__all__ = ["PatientPlan", "Study", "Track", "Patient", "plan_cohort", "build_patient",
           "UNANNOTATED_SHARE"]

#: Default share of the truth file's lesion instances that nobody annotated: Cai et al.,
#: Lesion Harvester (IEEE TMI 2021): "50% of the lesions in DeepLesion are left unlabeled".
UNANNOTATED_SHARE = 0.5
#: Of the planned unannotated lesions, the share placed on a key slice (the rest only on
#: its neighbouring slices).
ON_KEY_SHARE = 0.55
#: Sites whose lesions move along z with breathing between studies.
_BREATHING = {"lung", "liver", "spleen", "kidney", "adrenal"}
#: Sites where similar-looking lesions (siblings) cluster.
_SIBLING_SITES = {"lung", "liver", "kidney", "spleen",
                  "retroperitoneal node", "mesenteric node", "pelvic node"}

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
    unannotated_share: float = UNANNOTATED_SHARE


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
    rot: float = 0.0  # in-plane rotation of the patient in the scanner (radians)
    z_err: float = 0.0  # error of the normalised z (body-part estimate) in this study
    box_err: float = 0.0  # relative error of the body box behind the normalised x, y

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
    #: "primary", "companion", "sibling", "new near a vanished one", "split", or "unannotated"
    #: (a pool lesion for the unannotated share, in one study only)
    kind: str = "primary"
    related_to: int | None = None  # sibling of, split of, or appears where it vanished
    pool_of: int | None = None  # for kind "unannotated": the study (0-based) it belongs to

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
    unannotated_share: float = UNANNOTATED_SHARE


def plan_cohort(
    n_patients: int, seed: int, unannotated_share: float = UNANNOTATED_SHARE
) -> list[PatientPlan]:
    """Patient-level split (~70/15/15) and the lesion types of every patient.

    Types are dealt from shuffled decks holding every type, so each type reaches many patients
    and the few validation and test patients see most types. ``unannotated_share`` is passed to
    every patient's plan.
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
    counts = rng.choice([2, 3, 3, 4, 4], size=n)
    deck: list[int] = []
    plans = []
    for i in range(n):
        types = []
        for _ in range(int(counts[i])):
            if not deck:
                deck = list(rng.permutation(_DECK))
            types.append(int(deck.pop()))
        plans.append(PatientPlan(index=i + 1, split=int(splits[i]), types=types,
                                 unannotated_share=float(unannotated_share)))
    return plans


def _coarse_labels(body: an.Body, t: float, step: float = 2.0, n: int = 260,
                   cache: dict | None = None):
    key = round(float(t) * body.length, 1)
    if cache is not None and key in cache:
        return cache[key]
    cv = Canvas(n, n, step, n / 2.0, n / 2.0)
    level = body.paint(cv, t, 0.5, table=False, detail=False)
    out = (cv.lab, level, cv.u, cv.v)
    if cache is not None:
        if len(cache) > 64:
            cache.clear()
        cache[key] = out
    return out


def _place(
    body: an.Body,
    site_name: str,
    ra: float,
    rc: float,
    rng: np.random.Generator,
    others: list[Lesion],
    t_hint: float | None = None,
    tries: int = 14,
    *,
    t_fixed: float | None = None,
    near: tuple[float, float, float] | None = None,
    cache: dict | None = None,
) -> tuple[float, float, float] | None:
    """Find a centre (u, v, z mm) for a lesion of ``site`` away from ``others``.

    ``t_fixed``: at exactly this level (a key slice); ``near=(u, v, r)``: within ``r`` mm of
    ``(u, v)`` in the plane (a sibling in the same organ); ``cache``: coarse tissue maps by level.
    """
    from scipy import ndimage

    site = SITES[site_name]
    for attempt in range(tries):
        if t_fixed is not None:
            t = float(t_fixed)
        elif t_hint is not None and attempt < tries // 2:
            t = t_hint + float(rng.normal(0.0, 0.15 * rc / body.length))
        else:
            t = float(rng.uniform(*site.t_range)) + body.dt
        labels, level, u, v = _coarse_labels(body, t, cache=cache)
        mask = site_candidates(labels, site, level, u, v)
        if near is not None:
            mask = mask & (np.hypot(u[None, :] - near[0], v[:, None] - near[1]) < near[2])
        if not mask.any():
            if t_fixed is not None and attempt >= 2:
                return None
            continue
        if site_name in _Z_CHECKED:
            # the lesion is 3-D: it must stay in its tissue on the slices above and below too
            # (and a vertebral lesion clear of the discs)
            dzz = max(min(0.6 * rc, 8.0), 3.0)
            for sign in (-1.0, 1.0):
                lab2, lev2, _, _ = _coarse_labels(body, t + sign * dzz / body.length,
                                                  cache=cache)
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


def _similar_look(look: Appearance, rng: np.random.Generator) -> Appearance:
    """A sibling's appearance: the same kind and nearly the same densities and texture."""
    return replace(
        look,
        core=look.core + float(rng.uniform(-4.0, 4.0)),
        enh=max(look.enh + float(rng.uniform(-4.0, 4.0)), 0.0),
        texture=look.texture * float(rng.uniform(0.85, 1.15)),
        lobulation=look.lobulation * float(rng.uniform(0.8, 1.2)),
    )


def _sites_at(t: float) -> dict[int, list[str]]:
    """Coarse type -> sites whose levels cover ``t`` (organ level, i.e. without ``body.dt``)."""
    out: dict[int, list[str]] = {}
    for site in SITES.values():
        if site.t_range[0] - 0.005 <= t <= site.t_range[1] + 0.005:
            out.setdefault(site.coarse_type, []).append(site.name)
    return out


def _inside_direction(body: an.Body, site_name: str, les: Lesion, off: float,
                      rng: np.random.Generator, cache: dict) -> float | None:
    """A direction in which a point ``off`` mm from ``les`` is still in its site's tissue."""
    labels, level, u, v = _coarse_labels(body, les.z / body.length, cache=cache)
    mask = site_candidates(labels, SITES[site_name], level, u, v)
    start = float(rng.uniform(0, 2 * np.pi))
    for k in range(8):
        ang = start + k * np.pi / 4
        ok = True
        for d in (off, off + 0.6 * les.ra):  # the piece's centre and its far edge
            j = int(np.argmin(np.abs(u - (les.u + d * np.cos(ang)))))
            i = int(np.argmin(np.abs(v - (les.v + d * np.sin(ang)))))
            ok &= bool(mask[i, j])
        if ok:
            return ang
    return None


def _trend_step(trend: int, rng: np.random.Generator) -> float:
    """One study's size factor: stable, growing (progression) or shrinking (response)."""
    if trend == 0:
        return float(np.exp(rng.normal(0.0, 0.1)))
    if trend == 1:
        return float(np.exp(rng.uniform(0.12, 0.4)))
    return float(np.exp(-rng.uniform(0.12, 0.45)))


def _timeline(
    tr: Track, start: int, n_studies: int, rng: np.random.Generator, breath: list[float],
    can_split: bool,
) -> int | None:
    """Presence and change of ``tr`` over the studies; returns the study where it splits."""
    trend = int(rng.choice(3, p=[0.4, 0.35, 0.25]))
    g, alive, split_at = 1.0, True, None
    # growth stops at the site's largest lesion
    g_max = float(np.clip(SITES[tr.site].cap_mm / (2.0 * tr.base.ra), 1.0, 2.5))
    present, changes = [], []
    for k in range(n_studies):
        if k > start and alive:
            g = float(np.clip(g * _trend_step(trend, rng), 0.3, g_max))
            if (trend == 2 and g < 0.5) or rng.random() < 0.1:
                alive = False  # resolved or no longer seen
            elif (can_split and split_at is None and tr.base.ra * g >= 7.0
                  and rng.random() < 0.1):
                split_at = k
                g *= 0.75
        present.append(k >= start and alive)
        drift = rng.normal(0.0, 2.5, 3) if k > 0 else np.zeros(3)
        dz = float(drift[2]) + (breath[k] if tr.site in _BREATHING else 0.0)
        changes.append((float(drift[0]), float(drift[1]), dz, g,
                        float(rng.normal(0, 0.08)) if k else 0.0,
                        float(rng.normal(0, 4.0)) if k else 0.0))
    tr.present, tr.changes = present, changes
    return split_at


_ANNOTATE_P = {"primary": 0.85, "sibling": 0.7, "companion": 0.25, "split": 0.6,
               "new near a vanished one": 0.8}


def build_patient(plan: PatientPlan, seed: int, size: int) -> Patient:
    """Draw one patient: body, studies and lesion tracks (placed, with follow-up changes)."""
    rng = np.random.default_rng([int(seed), int(plan.index), 1])
    sex = "M" if rng.random() < 0.58 else "F"
    age = None if rng.random() < 0.05 else int(np.clip(rng.normal(56, 15), 18, 89))
    body = an.Body.sample(rng, sex)
    cache: dict = {}

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
                # DeepLesion test split: 5 mm 50 %, 1 mm 47 %, 2 mm 2 % of rows
                dz=float(rng.choice([5.0, 2.0, 1.0], p=[0.5, 0.03, 0.47])),
                e=0.0 if rng.random() < 0.25 else float(rng.uniform(0.5, 1.0)),
                noise=float(rng.uniform(9, 18)),
                fov_circle=bool(rng.random() < 0.6),
                ox=float(rng.uniform(-0.03, 0.03)),
                oy=float(rng.uniform(-0.05, 0.03)),
                months=months,
                rot=0.0 if k == 0 else float(np.clip(rng.normal(0.0, 0.045), -0.1, 0.1)),
                z_err=float(rng.normal(0.0, 0.01)),
                box_err=float(rng.normal(0.0, 0.03)),
            )
        )
        months += float(rng.uniform(2, 12))
    # organs move along z with breathing: one shift per study (mm)
    breath = [0.0] + [float(rng.normal(0.0, 5.0)) for _ in range(n_studies - 1)]

    # tracks: the dealt types, similar siblings in the same organ, companions on the same slice
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
        pos = _place(body, site, les.ra, les.rc, rng, placed, cache=cache)
        if pos is None:
            if not todo and not tracks:
                todo.append(ctype)  # never leave a patient without lesions
            continue
        les.u, les.v, les.z = pos
        placed.append(les)
        main = Track(len(tracks) + 1, ctype, site, les, None)
        tracks.append(main)
        if site in _SIBLING_SITES and rng.random() < 0.4:
            for _ in range(1 if rng.random() < 0.7 else 2):
                sib = _make_lesion(ctype, site, first_spacing, size, rng)
                sib.look = _similar_look(les.look, rng)
                sib.harmonics = lesion_harmonics(sib.look, rng)
                sib.calc_xy = (rng.uniform(-0.5, 0.5, (sib.look.calcs, 2)) if sib.look.calcs
                               else np.zeros((0, 2)))
                # close by in the same organ, often a few centimetres above or below
                reach = 1.3 * (les.ra + sib.ra) + 25.0
                dz_s = (float(rng.choice([-1.0, 1.0])) * float(rng.uniform(1.1, 2.5))
                        * (les.rc + sib.rc) if rng.random() < 0.6 else 0.0)
                pos_s = _place(body, site, sib.ra, sib.rc, rng, placed,
                               t_hint=(les.z + dz_s) / body.length,
                               near=(les.u, les.v, reach), cache=cache, tries=6)
                if pos_s is not None:
                    sib.u, sib.v, sib.z = pos_s
                    placed.append(sib)
                    tracks.append(Track(len(tracks) + 1, ctype, site, sib, None, kind="sibling",
                                        related_to=main.number))
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
            pos2 = _place(body, site2, les2.ra, les2.rc, rng, placed, t_hint=les.z / body.length,
                          cache=cache)
            if pos2 is not None:
                les2.u, les2.v, les2.z = pos2
                placed.append(les2)
                tracks.append(Track(len(tracks) + 1, ctype2, site2, les2, main.number,
                                    kind="companion"))

    # presence and change over the studies: growth, response, vanishing, splitting, new lesions
    for tr in list(tracks):
        start = 0 if (rng.random() < 0.8 or n_studies == 1) else int(rng.integers(1, n_studies))
        split_at = _timeline(tr, start, n_studies, rng, breath, can_split=True)
        if split_at is not None:
            # the lesion splits: the track goes on, a similar smaller piece appears beside it
            par = tr.in_study(split_at)
            piece = _make_lesion(tr.coarse_type, tr.site, first_spacing, size, rng)
            scale = par.ra * 0.6 / piece.ra
            off = 1.15 * (par.ra + par.ra * 0.6) + 3.0
            ang = _inside_direction(body, tr.site, par, off, rng, cache)
            if ang is None:
                split_at = None
        if split_at is not None:
            child = Lesion(
                u=par.u + off * np.cos(ang), v=par.v + off * np.sin(ang), z=par.z,
                ra=piece.ra * scale, rb=piece.rb * scale,
                rc=max(piece.rc * scale, 3.5), angle=float(rng.uniform(0, np.pi)),
                harmonics=lesion_harmonics(tr.base.look, rng), look=_similar_look(tr.base.look, rng),
                calc_xy=np.zeros((0, 2)))
            ch = Track(len(tracks) + 1, tr.coarse_type, tr.site, child, None, kind="split",
                       related_to=tr.number)
            _timeline(ch, split_at, n_studies, rng, [0.0] * n_studies, can_split=False)
            # the piece starts at the parent's position of that study: no breathing offset again
            ch.changes = [(0.0, 0.0, 0.0, c[3], c[4], c[5]) for c in ch.changes]
            tracks.append(ch)
            placed.append(child)
        for k in range(1, n_studies):
            if tr.present[k - 1] and not tr.present[k] and rng.random() < 0.8:
                # a new lesion where this one was: another look, nearly the same place
                old = tr.in_study(k - 1)
                site = tr.site
                nl = _make_lesion(tr.coarse_type, site, first_spacing, size, rng)
                others = [o for o in placed if o is not tr.base]
                pos_n = _place(body, site, nl.ra, nl.rc, rng, others,
                               t_hint=old.z / body.length,
                               near=(old.u, old.v, max(12.0, 1.5 * old.ra)), cache=cache, tries=6)
                if pos_n is None:
                    break
                nl.u, nl.v, nl.z = pos_n
                nt = Track(len(tracks) + 1, tr.coarse_type, site, nl, None,
                           kind="new near a vanished one", related_to=tr.number)
                _timeline(nt, k, n_studies, rng, breath, can_split=False)
                tracks.append(nt)
                placed.append(nl)
                break
    for tr in tracks:
        p_ann = _ANNOTATE_P[tr.kind]
        tr.annotated = [p and rng.random() < p_ann for p in tr.present]
        if tr.kind == "primary" and not any(tr.annotated) and any(tr.present):
            tr.annotated[tr.present.index(True)] = True
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

    _plan_unannotated(plan, body, studies, tracks, rng, size, cache)
    return Patient(plan.index, plan.split, sex, age, body, studies, tracks,
                   plan.unannotated_share)


def _plan_unannotated(
    plan: PatientPlan, body: an.Body, studies: list[Study], tracks: list[Track],
    rng: np.random.Generator, size: int, cache: dict,
) -> None:
    """Add each study's pool of unannotated lesions (kind "unannotated", one study each).

    Around the study's key slices: :data:`ON_KEY_SHARE` of them centred on a key slice, the
    others beside it so that only neighbouring slices show them; every coarse type that occurs
    at that level is equally likely, sizes follow the real distribution. The renderer takes as
    many as the share needs.
    """
    share = float(plan.unannotated_share)
    if share <= 0:
        return
    n_studies = len(studies)
    for k, st in enumerate(studies):
        keyed = [tr for tr in tracks if tr.present[k] and tr.annotated[k]]
        if not keyed:
            continue
        want = share / (1.0 - share) * len(keyed)
        n_pool = int(np.ceil(want)) + 2
        others = [tr.in_study(k) for tr in tracks if tr.present[k]]
        spacing = st.spacing(size)
        made = 0
        for _ in range(2 * n_pool):
            if made >= n_pool:
                break
            key = keyed[int(rng.integers(len(keyed)))].in_study(k)
            z_key = st.slice_z(st.slice_index(key.z))
            by_type = _sites_at(z_key / body.length - body.dt)
            if not by_type:
                continue
            types = sorted(by_type)
            ctype = types[int(rng.integers(len(types)))]
            site = by_type[ctype][int(rng.integers(len(by_type[ctype])))]
            les = _make_lesion(ctype, site, spacing, size, rng)
            z = z_key
            if rng.random() >= ON_KEY_SHARE:
                # just beside the key slice: its section misses the key slice
                sign = 1.0 if rng.random() < 0.5 else -1.0
                z = z_key + sign * (les.rc + float(rng.uniform(0.15, 0.6)) * st.dz)
            pos = _place(body, site, les.ra, les.rc, rng, others, t_fixed=z / body.length,
                         cache=cache, tries=4)
            if pos is None:
                continue
            les.u, les.v, les.z = pos[0], pos[1], z
            others.append(les)
            tracks.append(Track(len(tracks) + 1, ctype, site, les, None,
                                present=[j == k for j in range(n_studies)],
                                annotated=[False] * n_studies,
                                changes=[(0.0, 0.0, 0.0, 1.0, 0.0, 0.0)] * n_studies,
                                kind="unannotated", pool_of=k))
            made += 1
