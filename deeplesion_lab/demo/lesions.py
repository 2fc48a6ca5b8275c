"""Synthetic lesions: where each coarse type occurs, how it looks, and its RECIST measurement.

Each DeepLesion coarse type has *sites* (lung parenchyma; liver; kidney; mediastinal fat;
abdominal nodes, adrenal, spleen; pelvic nodes and masses; subcutaneous fat and muscle;
vertebrae, ribs and pelvic bones). A lesion is placed inside its site's tissue on the slice
where it is centred, away from the other lesions.

Appearance is drawn per *kind* (cyst, solid nodule, node, rim-enhancing metastasis, necrotic
mass, ground-glass, cavitating or calcified nodule, lytic or sclerotic bone lesion) and the
kinds are shared between types (hypodense liver lesions and renal cysts overlap in HU; nodes in
the mediastinum, abdomen and pelvis look alike), so that no single feature (density, rim,
texture, margin, shape) separates the types: location and context do.

A lesion is a 3-D blob (an ellipsoid with a lobulated or spiculated margin): it shrinks on the
slices away from its centre and disappears after a few slices.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from . import anatomy as an
from .canvas import Canvas, NoiseBank, label_lut

__all__ = [
    "SITES",
    "TYPE_SITES",
    "TYPE_SIZE",
    "Appearance",
    "Lesion",
    "sample_appearance",
    "sample_long_diameter_px",
    "site_candidates",
    "paint_lesion",
    "recist_points",
]

#: Real DeepLesion long diameters (DL_info, test split): median 23.6 px, quartiles 15.2, 39.0.
REAL_MEDIAN_PX = 23.6
REAL_LOG_SIGMA = 0.70
#: Smallest difference (HU) between a lesion's mean density and its surrounding tissue.
MIN_CONTRAST = 35.0


@dataclass(frozen=True)
class Site:
    """Where a lesion of a type can be: tissue labels, levels, how deep inside."""

    name: str
    coarse_type: int
    t_range: tuple[float, float]
    labels: tuple[int, ...]
    depth: float  # required distance to the tissue border, as a fraction of the semi-axis
    cap_mm: float  # largest long diameter


SITES: dict[str, Site] = {
    s.name: s
    for s in [
        Site("lung", 5, (0.36, 0.57), (an.LUNG,), 1.15, 70.0),
        Site("mediastinal node", 3, (0.38, 0.53), (an.MEDIASTINUM,), 0.55, 40.0),
        Site("liver", 4, (0.55, 0.655), (an.LIVER,), 0.85, 110.0),
        Site("kidney", 6, (0.632, 0.69), (an.KIDNEY,), 0.3, 70.0),
        Site("retroperitoneal node", 2, (0.6, 0.76), (an.ABDOMEN_FAT,), 0.55, 60.0),
        Site("mesenteric node", 2, (0.62, 0.77), (an.ABDOMEN_FAT,), 0.55, 60.0),
        Site("adrenal", 2, (0.6, 0.625), (an.ABDOMEN_FAT,), 0.3, 40.0),
        Site("spleen", 2, (0.56, 0.625), (an.SPLEEN,), 0.8, 55.0),
        Site("pelvic node", 8, (0.79, 0.9), (an.PELVIS_FAT,), 0.55, 55.0),
        Site("pelvic mass", 8, (0.8, 0.9), (an.PELVIS_FAT, an.PELVIC_ORGAN), 0.5, 100.0),
        Site("subcutaneous", 7, (0.38, 0.9), (an.SUBCUT_FAT,), 0.25, 60.0),
        Site("muscle", 7, (0.4, 0.9), (an.MUSCLE,), 0.4, 80.0),
        Site("vertebra", 1, (0.38, 0.77), (an.VERTEBRA,), 0.0, 40.0),
        Site("rib", 1, (0.38, 0.56), (an.RIB,), 0.0, 30.0),
        Site("pelvic bone", 1, (0.78, 0.92), (an.PELVIC_BONE,), 0.0, 50.0),
    ]
}

#: Coarse type -> {site: weight}.
TYPE_SITES: dict[int, dict[str, float]] = {
    1: {"vertebra": 0.5, "rib": 0.2, "pelvic bone": 0.3},
    2: {"retroperitoneal node": 0.35, "mesenteric node": 0.3, "adrenal": 0.15, "spleen": 0.2},
    3: {"mediastinal node": 1.0},
    4: {"liver": 1.0},
    5: {"lung": 1.0},
    6: {"kidney": 1.0},
    7: {"subcutaneous": 0.55, "muscle": 0.45},
    8: {"pelvic node": 0.55, "pelvic mass": 0.45},
}

#: Size factor of each type's median long diameter (the real per-type medians differ).
#: Bone, kidney and pelvis raised after bench/demo_fidelity.py found them smaller than real.
TYPE_SIZE: dict[int, float] = {1: 1.05, 2: 1.05, 3: 1.0, 4: 1.22, 5: 0.72, 6: 1.15, 7: 1.2, 8: 1.35}


@dataclass(frozen=True)
class Appearance:
    """How a lesion looks (HU at contrast enhancement ``e``: ``core + enh * e``)."""

    kind: str
    core: float
    enh: float = 0.0
    rim_frac: float = 0.0
    rim_delta: float = 0.0
    nec_frac: float = 0.0
    nec_delta: float = 0.0
    texture: float = 4.0
    edge_mm: float = 0.8
    p: float = 2.0
    lobulation: float = 0.03
    spiculation: float = 0.0
    calcs: int = 0
    cavity_frac: float = 0.0

    def mean_hu(self, e: float) -> float:
        return self.core + self.enh * e


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _node(rng):
    return Appearance("node", _u(rng, 28, 50), _u(rng, 15, 45), texture=_u(rng, 3, 8),
                      edge_mm=_u(rng, 0.6, 1.2), lobulation=_u(rng, 0.01, 0.06))


def _necrotic(rng):
    return Appearance("necrotic", _u(rng, 30, 50), _u(rng, 20, 45), rim_frac=_u(rng, 0.15, 0.3),
                      rim_delta=_u(rng, 10, 35), nec_frac=_u(rng, 0.35, 0.6),
                      nec_delta=-_u(rng, 20, 40), texture=_u(rng, 6, 14),
                      lobulation=_u(rng, 0.04, 0.12))


def _cyst(rng, lo=0.0, hi=20.0):
    return Appearance("cyst", _u(rng, lo, hi), _u(rng, 0, 4), texture=_u(rng, 1, 4),
                      edge_mm=_u(rng, 0.4, 0.8), lobulation=_u(rng, 0.0, 0.03))


def _rim(rng):
    return Appearance("rim-enhancing", _u(rng, 22, 42), _u(rng, 10, 30),
                      rim_frac=_u(rng, 0.15, 0.3), rim_delta=_u(rng, 25, 60),
                      texture=_u(rng, 6, 14), lobulation=_u(rng, 0.04, 0.1))


def _solid(rng, lo=30.0, hi=50.0):
    return Appearance("solid", _u(rng, lo, hi), _u(rng, 20, 70), texture=_u(rng, 6, 15),
                      edge_mm=_u(rng, 0.6, 1.6), lobulation=_u(rng, 0.04, 0.14),
                      nec_frac=_u(rng, 0.3, 0.5) if rng.random() < 0.25 else 0.0,
                      nec_delta=-_u(rng, 15, 35))


def _hyper(rng):
    return Appearance("hyperdense", _u(rng, 55, 80), _u(rng, 55, 100), texture=_u(rng, 6, 14),
                      lobulation=_u(rng, 0.02, 0.08))


def _choose(rng, options):
    weights = np.array([w for w, _ in options], dtype=float)
    k = int(rng.choice(len(options), p=weights / weights.sum()))
    return options[k][1](rng)


def sample_appearance(site: str, rng: np.random.Generator) -> Appearance:
    """Draw a type-typical (but overlapping) appearance for a lesion at ``site``."""
    if site == "lung":
        return _choose(rng, [
            (0.58, lambda r: Appearance(
                "solid", _u(r, 20, 50), _u(r, 10, 30), texture=_u(r, 3, 10),
                edge_mm=_u(r, 0.5, 1.2), lobulation=_u(r, 0.02, 0.12),
                spiculation=_u(r, 0.0, 0.09) if r.random() < 0.5 else 0.0)),
            (0.12, lambda r: Appearance(
                "ground-glass", _u(r, -650, -350), 0.0, texture=_u(r, 25, 50),
                edge_mm=_u(r, 1.5, 3.0), lobulation=_u(r, 0.04, 0.12))),
            (0.08, lambda r: Appearance(
                "cavitating", _u(r, 25, 50), _u(r, 10, 30), cavity_frac=_u(r, 0.3, 0.55),
                texture=_u(r, 4, 10), lobulation=_u(r, 0.05, 0.14))),
            (0.06, lambda r: Appearance(
                "calcified", _u(r, 180, 450), 0.0, texture=_u(r, 10, 30), edge_mm=0.5,
                lobulation=0.01)),
            (0.16, _necrotic),
        ])
    if site in ("liver", "spleen"):
        # fewer water-dense cysts than before: the real liver key slices' lesions are 63 HU
        # median (bench/demo_fidelity.py)
        return _choose(rng, [(0.18, _cyst), (0.35, _rim), (0.2, _hyper), (0.27, _solid)])
    if site == "kidney":
        return _choose(rng, [
            (0.5, _cyst),
            (0.35, lambda r: _solid(r, 30, 48)),
            (0.15, lambda r: Appearance("hyperdense cyst", _u(r, 50, 80), 0.0,
                                        texture=_u(r, 2, 6), edge_mm=0.6)),
        ])
    if site in ("mediastinal node", "retroperitoneal node", "mesenteric node", "pelvic node"):
        return _choose(rng, [
            (0.66, _node),
            (0.16, _necrotic),
            (0.1, lambda r: replace(_node(r), kind="calcified node", calcs=int(r.integers(1, 4)))),
            (0.08, lambda r: replace(_solid(r), kind="conglomerate", lobulation=_u(r, 0.1, 0.18))),
        ])
    if site == "adrenal":
        return _choose(rng, [(0.6, lambda r: _cyst(r, 0, 30)), (0.4, _node)])
    if site == "pelvic mass":
        return _choose(rng, [(0.4, lambda r: replace(_cyst(r, 5, 22), kind="cystic mass",
                                                   rim_frac=0.12, rim_delta=_u(r, 20, 40))),
                             (0.35, _solid), (0.25, _necrotic)])
    if site in ("subcutaneous", "muscle"):
        return _choose(rng, [
            (0.45, _node),
            (0.25, lambda r: _cyst(r, 5, 28)),
            (0.3, lambda r: replace(_solid(r, 25, 50), kind="infiltrative",
                                    edge_mm=_u(r, 1.5, 3.0), lobulation=_u(r, 0.1, 0.2))),
        ])
    if site in ("vertebra", "rib", "pelvic bone"):
        return _choose(rng, [
            (0.55, lambda r: Appearance("lytic", _u(r, 25, 80), _u(r, 10, 40),
                                        texture=_u(r, 8, 20), edge_mm=_u(r, 0.6, 1.5),
                                        lobulation=_u(r, 0.04, 0.14))),
            (0.3, lambda r: Appearance("sclerotic", _u(r, 550, 950), 0.0, texture=_u(r, 20, 60),
                                       edge_mm=_u(r, 1.0, 2.0), lobulation=_u(r, 0.04, 0.12))),
            (0.15, lambda r: Appearance("mixed", _u(r, 40, 90), _u(r, 10, 30),
                                        rim_frac=_u(r, 0.2, 0.35), rim_delta=_u(r, 350, 600),
                                        texture=_u(r, 10, 25), lobulation=_u(r, 0.05, 0.12))),
        ])
    raise ValueError(f"unknown lesion site {site!r}")


def sample_long_diameter_px(coarse_type: int, rng: np.random.Generator, size: int = 512) -> float:
    """A long diameter in pixels following the real DeepLesion distribution (per type)."""
    median = REAL_MEDIAN_PX * TYPE_SIZE.get(int(coarse_type), 1.0) * size / 512.0
    d = median * float(np.exp(rng.normal(0.0, REAL_LOG_SIGMA)))
    return float(np.clip(d, 6.0 * size / 512.0, 0.45 * size))


@dataclass
class Lesion:
    """A lesion in one study: a 3-D blob in body millimetres."""

    u: float
    v: float
    z: float  # mm along the body
    ra: float  # semi-axes (mm): in-plane long, in-plane short, along z
    rb: float
    rc: float
    angle: float
    harmonics: np.ndarray  # (k, 3) order, amplitude, phase
    look: Appearance
    calc_xy: np.ndarray  # (n, 2) calcification positions, lesion-normalised
    hu_shift: float = 0.0

    def section(self, z: float) -> tuple[float, float]:
        """In-plane semi-axes (mm) of the cross-section at ``z`` (0 if it misses)."""
        d = (z - self.z) / self.rc
        if abs(d) >= 1.0:
            return 0.0, 0.0
        k = float(np.sqrt(1.0 - d * d))
        return self.ra * k, self.rb * k


def lesion_harmonics(look: Appearance, rng: np.random.Generator) -> np.ndarray:
    """Margin harmonics: lobulation (orders 2-5) and spiculation (orders 9-16)."""
    rows = []
    for k in (2, 3, 4, 5):
        rows.append((k, look.lobulation * float(rng.uniform(0.3, 1.0)) / (k - 1) ** 0.5,
                     float(rng.uniform(0, 2 * np.pi))))
    if look.spiculation > 0:
        for k in rng.choice(np.arange(9, 17), size=3, replace=False):
            rows.append((float(k), look.spiculation * float(rng.uniform(0.5, 1.0)),
                         float(rng.uniform(0, 2 * np.pi))))
    return np.array(rows, dtype=np.float32)


def site_candidates(
    labels: np.ndarray, site: Site, level: an.Level, u: np.ndarray, v: np.ndarray
) -> np.ndarray:
    """Boolean mask of a coarse label map where a lesion of ``site`` may be centred."""
    mask = label_lut(site.labels)[labels]
    R, vb = level.R, level.v_body
    uu, vv = u[None, :], v[:, None]
    if site.name == "retroperitoneal node":
        mask &= (np.abs(uu) < R + 55.0) & (vv > vb - R - 50.0) & (vv < vb + 12.0)
    elif site.name == "mesenteric node":
        mask &= vv < vb - R - 25.0
    elif site.name == "adrenal":
        near = np.minimum(np.hypot(uu - (R + 28.0), vv - (vb - 14.0)),
                          np.hypot(uu + (R + 28.0), vv - (vb - 14.0)))
        mask &= near < 22.0
    elif site.name == "pelvic node":
        mask &= np.abs(uu) > 0.2 * level.Ac
    elif site.name == "muscle":
        mask &= np.hypot(uu / level.A, vv / max(level.Ba, level.Bp)) < 0.97
    return mask


def _smooth_step(x: np.ndarray, width: float) -> np.ndarray:
    return np.clip(0.5 + x / width, 0.0, 1.0)


def paint_lesion(
    cv: Canvas,
    les: Lesion,
    z: float,
    e: float,
    bank: NoiseBank,
    rng: np.random.Generator,
    bg_hu: float | None = None,
) -> bool:
    """Paint the cross-section of ``les`` at ``z``; ``False`` if the slice misses it.

    ``bg_hu`` is the typical HU of the tissue around the lesion in this study: the lesion's
    density is pushed at least :data:`MIN_CONTRAST` HU away from it so that every lesion is
    visible.
    """
    a, b = les.section(z)
    if min(a, b) < 0.35 * cv.step:
        return False
    look = les.look
    core = look.mean_hu(e) + les.hu_shift
    if bg_hu is not None and look.kind not in ("ground-glass",):
        diff = core - bg_hu
        if abs(diff) < MIN_CONTRAST:
            sign = np.sign(diff) if abs(diff) > 3 else (1.0 if look.enh > 20 else -1.0)
            core = bg_hu + sign * MIN_CONTRAST
    blk = cv.shape(les.u, les.v, a, b, angle=les.angle, p=look.p, harmonics=les.harmonics,
                   edge=look.edge_mm)
    if blk is None:
        return False
    tex = None
    if look.texture > 0:
        h, w = blk.r.shape
        tex = bank.crop(rng, h, w)

    def value(block):
        r = block.r
        val = np.full(r.shape, core, dtype=np.float32)
        if look.rim_frac > 0:
            val += np.float32(look.rim_delta * (0.3 + 0.7 * e)) * _smooth_step(
                r - (1.0 - look.rim_frac), 0.08
            )
        if look.nec_frac > 0:
            val += np.float32(look.nec_delta) * _smooth_step(look.nec_frac - r, 0.1)
        if tex is not None:
            val += np.float32(look.texture) * tex
        if look.cavity_frac > 0:
            air = _smooth_step(look.cavity_frac - r, 0.08)
            val += air * (np.float32(-950.0) - val)
        return val

    cv.paint(blk, value, an.LESION)
    if look.calcs:
        c, s = np.cos(les.angle), np.sin(les.angle)
        for x, y in les.calc_xy:
            du, dv = x * a, y * b
            cv.ellipse(les.u + du * c - dv * s, les.v + du * s + dv * c, 1.4, 1.2, 650.0, None,
                       only=label_lut([an.LESION]))
    return True


def recist_points(
    les: Lesion, z: float, n: int = 144
) -> tuple[np.ndarray, np.ndarray] | None:
    """RECIST end points (mm, body frame) of the cross-section at ``z``.

    Returns ``(long, short)``, each ``(2, 2)`` (two points of u, v): the longest chord of the
    boundary and the longest chord perpendicular to it (within 3 degrees). ``None`` if the
    slice misses the lesion.
    """
    a, b = les.section(z)
    if a <= 0:
        return None
    phi = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rho = np.ones(n)
    for order, amp, phase in les.harmonics:
        rho += amp * np.cos(order * phi + phase)
    p = les.look.p
    norm = (np.abs(np.cos(phi)) ** p + np.abs(np.sin(phi)) ** p) ** (1.0 / p)
    x = a * rho * np.cos(phi) / norm
    y = b * rho * np.sin(phi) / norm
    c, s = np.cos(les.angle), np.sin(les.angle)
    pts = np.column_stack([les.u + x * c - y * s, les.v + x * s + y * c])
    d = pts[:, None, :] - pts[None, :, :]
    dist = np.hypot(d[..., 0], d[..., 1])
    i, j = np.unravel_index(np.argmax(dist), dist.shape)
    axis = (pts[j] - pts[i]) / max(dist[i, j], 1e-9)
    cos = np.abs(d[..., 0] * axis[0] + d[..., 1] * axis[1]) / np.maximum(dist, 1e-9)
    perp = np.where(cos < np.sin(np.deg2rad(3.0)), dist, 0.0)
    k, m = np.unravel_index(np.argmax(perp), perp.shape)
    if perp[k, m] <= 0:
        # a tiny or degenerate outline: fall back to the ellipse's own short axis
        mid = (pts[i] + pts[j]) / 2
        nrm = np.array([-axis[1], axis[0]])
        short = np.array([mid - nrm * b, mid + nrm * b])
    else:
        short = np.array([pts[k], pts[m]])
    return np.array([pts[i], pts[j]]), short
