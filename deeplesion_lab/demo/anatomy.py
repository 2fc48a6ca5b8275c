"""A synthetic patient body: outline, organs, vessels and bones as functions of the z position.

Coordinates are millimetres in the axial plane with the body centre at ``(0, 0)``: ``u`` runs
to the image right (the patient's left, radiological convention) and ``v`` to the image bottom
(posterior). The level along the body is ``t``, normalised from 0 (head) to 1 (feet); a slice at
``t`` shows the chest (lungs, heart, mediastinum, ribs) around ``t`` 0.33-0.55, the upper abdomen
(liver, spleen, stomach, kidneys, pancreas, bowel) around 0.53-0.76 and the pelvis (pelvic bones,
bladder, rectum, uterus or prostate) around 0.76-0.94, with the spine throughout.

Structures that run along the body (lung and liver vessels, bowel loops) are short 3-D tubes,
so they move smoothly from slice to slice: slice context tells a vessel (a dot that persists
and drifts) from a nodule (a blob that grows then shrinks).

Densities follow CT: air -1000, fat about -100, muscle about 50, liver 55-65 HU without
contrast, kidney cortex about 30 HU without contrast, cancellous bone about 300-400 with a
cortical rim near 1000. A study's contrast enhancement ``e`` (0 none, 1 portal venous) raises
vessels, kidney cortex, liver and spleen as intravenous contrast does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .canvas import Canvas, label_lut

__all__ = [
    "Body",
    "Level",
    "LABELS",
    "LABEL_NAMES",
    "tissue_hu",
]

# tissue labels --------------------------------------------------------------------------------
AIR, TABLE, SUBCUT_FAT, MUSCLE, MEDIASTINUM, ABDOMEN_FAT, PELVIS_FAT, LUNG = range(8)
HEART, VESSEL, AIRWAY, LIVER, SPLEEN, KIDNEY, STOMACH, BOWEL = range(8, 16)
BLADDER, PANCREAS, GALLBLADDER, VERTEBRA, RIB, PELVIC_BONE, CORTEX, CANAL = range(16, 24)
DISC, PELVIC_ORGAN, ESOPHAGUS, STERNUM = range(24, 28)
LESION, OUTSIDE = 30, 31

#: Label name -> code of the tissue label map.
LABELS: dict[str, int] = {
    "air": AIR, "table": TABLE, "subcutaneous fat": SUBCUT_FAT, "muscle": MUSCLE,
    "mediastinum": MEDIASTINUM, "abdominal fat": ABDOMEN_FAT, "pelvic fat": PELVIS_FAT,
    "lung": LUNG, "heart": HEART, "vessel": VESSEL, "airway": AIRWAY, "liver": LIVER,
    "spleen": SPLEEN, "kidney": KIDNEY, "stomach": STOMACH, "bowel": BOWEL, "bladder": BLADDER,
    "pancreas": PANCREAS, "gallbladder": GALLBLADDER, "vertebra": VERTEBRA, "rib": RIB,
    "pelvic bone": PELVIC_BONE, "cortical bone": CORTEX, "spinal canal": CANAL, "disc": DISC,
    "pelvic organ": PELVIC_ORGAN, "esophagus": ESOPHAGUS, "sternum": STERNUM,
    "lesion": LESION, "outside scan field": OUTSIDE,
}
LABEL_NAMES: dict[int, str] = {v: k for k, v in LABELS.items()}

_CAVITY = label_lut([MEDIASTINUM, ABDOMEN_FAT, PELVIS_FAT, LUNG])
_CAVITY_NO_LUNG = label_lut([MEDIASTINUM, ABDOMEN_FAT, PELVIS_FAT])
_SOFT_CAVITY = label_lut([MEDIASTINUM, ABDOMEN_FAT, PELVIS_FAT, LUNG, LIVER, SPLEEN, STOMACH])
_FAT_CAVITY = label_lut([ABDOMEN_FAT, PELVIS_FAT])
_ONLY_LUNG = label_lut([LUNG])
_ONLY_LIVER = label_lut([LIVER])
_NOT_BONE = label_lut([i for i in range(256) if i not in (VERTEBRA, RIB, PELVIC_BONE, CORTEX)])


def tissue_hu(label: int, e: float) -> float:
    """Typical HU of a tissue label at contrast enhancement ``e`` (0-1), for contrast checks."""
    table = {
        SUBCUT_FAT: -100.0, MUSCLE: 50.0, MEDIASTINUM: -85.0, ABDOMEN_FAT: -95.0,
        PELVIS_FAT: -95.0, LUNG: -850.0, HEART: 45.0 + 60.0 * e, VESSEL: 45.0 + 140.0 * e,
        LIVER: 60.0 + 45.0 * e, SPLEEN: 48.0 + 60.0 * e, KIDNEY: 32.0 + 110.0 * e,
        STOMACH: 20.0, BOWEL: 20.0, BLADDER: 8.0, PANCREAS: 40.0 + 50.0 * e,
        GALLBLADDER: 8.0, VERTEBRA: 330.0, RIB: 300.0, PELVIC_BONE: 320.0, CORTEX: 900.0,
        STERNUM: 300.0, PELVIC_ORGAN: 50.0 + 40.0 * e, ESOPHAGUS: 40.0,
    }
    return table.get(int(label), 40.0)


def _prof(t: float, t0: float, t1: float) -> float:
    """Ellipsoidal profile: 0 outside ``[t0, t1]``, 1 in the middle."""
    if t <= t0 or t >= t1:
        return 0.0
    x = (2.0 * t - t0 - t1) / (t1 - t0)
    return float(np.sqrt(max(0.0, 1.0 - x * x)))


def _ramp(t: float, t0: float, t1: float) -> float:
    return float(np.clip((t - t0) / (t1 - t0), 0.0, 1.0))


@dataclass
class Level:
    """Body geometry at one level ``t`` (millimetres)."""

    t: float
    A: float  # lateral semi-axis of the outline
    Ba: float  # anterior semi-axis
    Bp: float  # posterior semi-axis
    fat: float  # subcutaneous fat thickness (front and sides)
    fat_p: float  # posterior fat thickness
    muscle: float  # body wall muscle thickness
    Ac: float  # cavity semi-axes
    Bca: float
    Bcp: float
    R: float  # vertebral body radius
    v_body: float  # vertebral body centre (v)
    v_canal: float
    v_tip: float  # spinous process tip

    def location(self, u: float, v: float) -> tuple[float, float]:
        """Position normalised to the body's bounding box (0-1, 0-1)."""
        return (u + self.A) / (2.0 * self.A), (v + self.Ba) / (self.Ba + self.Bp)


@dataclass
class Tubes:
    """Short 3-D tubes (vessels, bowel loops) in a host's normalised frame."""

    zc: np.ndarray  # centre z (mm)
    half: np.ndarray  # half length along z (mm)
    xi: np.ndarray  # position in the host frame (-1..1) at zc
    eta: np.ndarray
    dxi: np.ndarray  # drift per mm of z, host units
    deta: np.ndarray
    radius: np.ndarray  # mm
    kind: np.ndarray  # int code (meaning depends on the tube set)
    level: np.ndarray  # air-fluid level or other per-tube number

    def active(self, z: float) -> np.ndarray:
        return np.flatnonzero(np.abs(z - self.zc) < self.half)


@dataclass
class Body:
    """One synthetic patient's anatomy (sampled by :meth:`sample`)."""

    sex: str
    length: float  # mm from t=0 to t=1
    A_chest: float
    A_abd: float
    A_pelv: float
    B_chest: float
    B_abd: float
    B_pelv: float
    post_ratio: float
    fat_abd: float
    fat_chest: float
    fat_pelv: float
    muscle: float
    p: float
    harmonics: np.ndarray
    dt: float  # shift of all organ levels
    liver_s: float
    spleen_s: float
    kidney_s: float
    heart_s: float
    bladder_s: float
    rib_phase: float
    rib_pitch: float
    vert_height: float
    lung_vessels: tuple[Tubes, Tubes] = field(repr=False, default=None)
    liver_vessels: Tubes = field(repr=False, default=None)
    bowel: Tubes = field(repr=False, default=None)

    # -------------------------------------------------------------------------------------
    @classmethod
    def sample(cls, rng: np.random.Generator, sex: str) -> Body:
        """A random body (size, fat, organ sizes and levels, vessels, bowel)."""
        male = sex == "M"
        A_abd = float(rng.uniform(128, 178) * (1.04 if male else 0.97))
        ratio = float(rng.uniform(0.62, 0.8))
        body = cls(
            sex=sex,
            length=float(rng.uniform(1600, 1800) * (1.04 if male else 0.97)),
            A_chest=A_abd * float(rng.uniform(0.96, 1.08) if male else rng.uniform(0.92, 1.02)),
            A_abd=A_abd,
            A_pelv=A_abd * float(rng.uniform(0.98, 1.06) if male else rng.uniform(1.02, 1.12)),
            B_chest=A_abd * ratio * float(rng.uniform(0.88, 1.0)),
            B_abd=A_abd * ratio,
            B_pelv=A_abd * ratio * float(rng.uniform(0.92, 1.02)),
            post_ratio=float(rng.uniform(0.84, 0.95)),
            fat_abd=float(rng.uniform(8, 38)),
            fat_chest=0.0,
            fat_pelv=0.0,
            muscle=float(rng.uniform(4, 9)),
            p=float(rng.uniform(2.1, 2.6)),
            harmonics=np.column_stack(
                [np.array([2.0, 3.0, 4.0]), rng.uniform(0.0, 0.025, 3), rng.uniform(0, 2 * np.pi, 3)]
            ).astype(np.float32),
            dt=float(rng.normal(0.0, 0.006)),
            liver_s=float(rng.uniform(0.88, 1.12)),
            spleen_s=float(rng.uniform(0.75, 1.25)),
            kidney_s=float(rng.uniform(0.88, 1.12)),
            heart_s=float(rng.uniform(0.88, 1.1)),
            bladder_s=float(rng.uniform(0.6, 1.15)),
            rib_phase=float(rng.uniform(0, 1)),
            rib_pitch=float(rng.uniform(22, 30)),
            vert_height=float(rng.uniform(0.9, 1.1)),
        )
        body.fat_chest = body.fat_abd * float(rng.uniform(0.5, 0.8))
        body.fat_pelv = body.fat_abd * float(rng.uniform(1.0, 1.3))
        body.lung_vessels = (body._vessels(rng, 230), body._vessels(rng, 230))
        body.liver_vessels = body._liver_vessels(rng, 70)
        body.bowel = body._bowel(rng, 150)
        return body

    def _z(self, t: float) -> float:
        return t * self.length

    def _vessels(self, rng: np.random.Generator, n: int) -> Tubes:
        z0, z1 = self._z(0.33 + self.dt), self._z(0.585 + self.dt)
        # hilum at (xi, eta) = (-0.55, 0) (medial); vessels radiate from it
        xi = rng.uniform(-0.95, 0.95, n)
        eta = rng.uniform(-0.95, 0.95, n)
        dx, dy = xi + 0.55, eta
        rho = np.clip(np.hypot(dx, dy) / 1.5, 0, 1)
        slope = rng.uniform(0.002, 0.009, n)
        ang = np.arctan2(dy, dx) + rng.normal(0, 0.3, n)
        return Tubes(
            zc=rng.uniform(z0, z1, n),
            half=rng.uniform(8, 30, n),
            xi=xi,
            eta=eta,
            dxi=slope * np.cos(ang),
            deta=slope * np.sin(ang),
            radius=0.7 + 4.0 * (1.0 - rho) ** 1.6 + rng.uniform(0, 0.6, n),
            kind=np.zeros(n, dtype=np.int8),
            level=np.zeros(n),
        )

    def _liver_vessels(self, rng: np.random.Generator, n: int) -> Tubes:
        z0, z1 = self._z(0.53 + self.dt), self._z(0.67 + self.dt)
        ang = rng.uniform(0, 2 * np.pi, n)
        slope = rng.uniform(0.002, 0.012, n)
        return Tubes(
            zc=rng.uniform(z0, z1, n),
            half=rng.uniform(10, 28, n),
            xi=rng.uniform(-0.8, 0.8, n),
            eta=rng.uniform(-0.8, 0.8, n),
            dxi=slope * np.cos(ang),
            deta=slope * np.sin(ang),
            radius=rng.uniform(1.5, 5.5, n),
            kind=np.zeros(n, dtype=np.int8),
            level=np.zeros(n),
        )

    def _bowel(self, rng: np.random.Generator, n: int) -> Tubes:
        z0, z1 = self._z(0.6 + self.dt), self._z(0.86 + self.dt)
        ang = rng.uniform(0, 2 * np.pi, n)
        slope = rng.uniform(0.0, 0.012, n)
        # 0 fluid, 1 air, 2 air-fluid level, 3 stool
        kind = rng.choice(4, size=n, p=[0.42, 0.2, 0.26, 0.12]).astype(np.int8)
        return Tubes(
            zc=rng.uniform(z0, z1, n),
            half=rng.uniform(12, 35, n),
            xi=rng.uniform(-0.85, 0.85, n),
            eta=rng.uniform(-0.9, 0.35, n),
            dxi=slope * np.cos(ang),
            deta=slope * np.sin(ang),
            radius=rng.uniform(7, 14, n),
            kind=kind,
            level=rng.uniform(-0.1, 0.5, n),
        )

    # geometry ----------------------------------------------------------------------------
    def level(self, t: float) -> Level:
        """Outline, fat, cavity and spine geometry at level ``t``."""
        knots = np.array([0.26, 0.33, 0.40, 0.52, 0.60, 0.70, 0.78, 0.92, 0.97])
        A = np.interp(t, knots, [0.55 * self.A_chest, 0.85 * self.A_chest, self.A_chest,
                                 self.A_chest, self.A_abd, self.A_abd, self.A_pelv,
                                 self.A_pelv, 0.95 * self.A_pelv])
        B = np.interp(t, knots, [0.7 * self.B_chest, 0.9 * self.B_chest, self.B_chest,
                                 self.B_chest, self.B_abd, self.B_abd, self.B_pelv,
                                 self.B_pelv, 0.95 * self.B_pelv])
        fat = np.interp(t, knots, [0.6 * self.fat_chest, self.fat_chest, self.fat_chest,
                                   self.fat_chest, self.fat_abd, self.fat_abd, self.fat_pelv,
                                   self.fat_pelv, self.fat_pelv])
        Ba, Bp = float(B), float(B * self.post_ratio)
        fat_p = 0.55 * float(fat)
        m = self.muscle
        R = 11.5 + 9.0 * _ramp(t, 0.3, 0.75)
        v_tip = Bp - fat_p - 4.0
        v_canal = v_tip - (26.0 + 0.6 * R)
        v_body = v_canal - 9.0 - 0.95 * R
        return Level(
            t=float(t), A=float(A), Ba=Ba, Bp=Bp, fat=float(fat), fat_p=fat_p, muscle=m,
            Ac=float(A - fat - m), Bca=float(Ba - fat - m), Bcp=float(Bp - fat_p - m),
            R=R, v_body=v_body, v_canal=v_canal, v_tip=v_tip,
        )

    def cavity_label(self, t: float) -> int:
        """The fat label of the body cavity at level ``t``."""
        if t < 0.545 + self.dt:
            return MEDIASTINUM
        if t < 0.775 + self.dt:
            return ABDOMEN_FAT
        return PELVIS_FAT

    # painting ----------------------------------------------------------------------------
    def paint(
        self, cv: Canvas, t: float, e: float, *, table: bool = True, detail: bool = True
    ) -> Level:
        """Paint the body at level ``t`` with contrast enhancement ``e`` onto ``cv``.

        ``detail=False`` leaves out the small structures (lung and liver vessels, bowel loops):
        a quick tissue map for placing lesions. Returns the :class:`Level` geometry used.
        """
        L = self.level(t)
        z = self._z(t)
        s = t - self.dt  # organ levels are defined for dt = 0
        if table:
            self._table(cv, L)
        # outline: subcutaneous fat, muscle wall, cavity
        outline = cv.shape(0.0, 0.0, L.A, L.Ba, p=self.p, b_post=L.Bp,
                           harmonics=self.harmonics, harmonic_stride=4, keep_dist=True)
        cv.paint(outline, -100.0, SUBCUT_FAT)
        if outline is not None:
            fat = np.where(outline.y > 0, np.float32(L.fat_p), np.float32(L.fat))
            cv.paint(outline.inset(fat), 50.0, MUSCLE)
            cav = self.cavity_label(t)
            cav_hu = {MEDIASTINUM: -85.0, ABDOMEN_FAT: -95.0, PELVIS_FAT: -95.0}[cav]
            cv.paint(outline.inset(fat + np.float32(L.muscle)), cav_hu, cav)

        if s < 0.6:
            self._lungs(cv, L, s, z, e, detail)
        if 0.52 < s < 0.69:
            self._upper_abdomen(cv, L, s, z, e, detail)
        if s < 0.57:
            self._mediastinum(cv, L, s, e)
        if 0.6 < s < 0.95 and detail:
            self._bowel_loops(cv, L, z, e)
        if 0.6 < s < 0.73:
            self._kidneys(cv, L, s, e)
        if s > 0.53:
            self._great_vessels_abdomen(cv, L, s, e)
        if s > 0.76:
            self._pelvis(cv, L, s, e)
        self._spine(cv, L, s, z)
        if 0.33 < s < 0.63:
            self._ribs(cv, L, s, z)
        return L

    def _table(self, cv: Canvas, L: Level) -> None:
        top = L.Bp + 8.0
        for off, hu in ((0.0, 150.0), (14.0, 60.0)):
            # a shallow arc: v = top + off - k u^2, drawn as a thin wide ellipse segment
            k = 1.0 / 900.0
            a = 1.25 * L.A
            rows = cv._span(top + off - k * a * a - 3, top + off + 3, cv.y0, cv.height)
            if rows.start >= rows.stop:
                continue
            u = cv.u[None, :]
            v = cv.v[rows][:, None]
            d = np.abs(v - (top + off - k * u * u))
            alpha = np.clip(1.5 - d / cv.step, 0, 1) * (np.abs(u) < a)
            hu_b = cv.hu[rows]
            hu_b += alpha * (hu - hu_b)
            cv.lab[rows][alpha > 0.5] = TABLE

    def _lungs(self, cv: Canvas, L: Level, s: float, z: float, e: float, detail: bool) -> None:
        for side, tubes in ((-1, self.lung_vessels[0]), (1, self.lung_vessels[1])):
            top = 0.325 if side > 0 else 0.33
            g = _ramp(s, top, top + 0.06) ** 0.5
            if g <= 0:
                continue
            dia = 0.522 + (0.012 if side > 0 else 0.0)
            base = 0.59
            cu = side * 0.47 * L.Ac
            cvv = 0.08 * L.Bcp
            a = 0.5 * L.Ac * g
            b = 0.5 * (L.Bca + L.Bcp) * 0.95 * g
            # the mediastinum: a tall ellipse between the lungs, wider at the heart (left)
            med = 12.0 + 16.0 * _ramp(s, 0.38, 0.44)
            heart = _prof(s, 0.43, 0.57)
            m_off = 22.0 * heart * self.heart_s
            m_a = med + 34.0 * heart * self.heart_s
            m_v = -0.05 * L.Bca
            m_b = 0.75 * L.Bca + 0.25 * L.Bcp
            v_cut = -2.0 * L.Bca + (L.Bcp + 2.0 * L.Bca) * _ramp(s, dia, base)

            def lung_value(blk):
                return -860.0 + 60.0 * np.clip(blk.v / max(L.Bcp, 1.0), -1, 1)

            blk = cv.shape(cu, cvv, a, b, p=2.3)
            if blk is None:
                continue
            rm = np.sqrt(((blk.u - m_off) / m_a) ** 2 + ((blk.v - m_v) / m_b) ** 2)
            out_med = np.clip(0.5 + (rm - 1.0) * (m_a / cv.step), 0.0, 1.0)
            blk.alpha = blk.alpha * out_med * (blk.v > v_cut)
            cv.paint(blk, lung_value, LUNG, only=_CAVITY)
            if not detail:
                continue
            # vessels
            val = 30.0 + 80.0 * e
            for i in tubes.active(z):
                dzz = z - tubes.zc[i]
                xi = side * (tubes.xi[i] + tubes.dxi[i] * dzz)
                et = tubes.eta[i] + tubes.deta[i] * dzz
                if xi * xi + et * et > 1.0:
                    continue
                su, sv = side * tubes.dxi[i] * a, tubes.deta[i] * b
                elong = float(np.sqrt(1.0 + su * su + sv * sv))
                taper = (1.0 - (dzz / tubes.half[i]) ** 2) ** 0.25
                r = tubes.radius[i] * taper
                cv.ellipse(cu + xi * a, cvv + et * b, r * elong, r, val, None,
                           angle=float(np.arctan2(sv, su)), only=_ONLY_LUNG)

    def _upper_abdomen(
        self, cv: Canvas, L: Level, s: float, z: float, e: float, detail: bool
    ) -> None:
        # liver
        top, bot = 0.522, 0.665 + 0.03 * (self.liver_s - 1.0)
        mid = top + 0.35 * (bot - top)
        if s < mid:
            g = _prof(s, top, 2 * mid - top) ** 0.8
        else:
            g = _prof(s, 2 * mid - bot, bot) ** 0.7
        liver_val = 60.0 + 45.0 * e
        if g > 0.02:
            la, lb = 0.6 * L.Ac * g * self.liver_s, 0.78 * L.Bca * g
            lcu, lcv = -0.36 * L.Ac - 0.1 * L.Ac * (1 - g), -0.06 * L.Bca
            cv.ellipse(lcu, lcv, la, lb, liver_val, LIVER, p=2.2, angle=-0.15, only=_SOFT_CAVITY)
            gl = _prof(s, top + 0.004, mid + 0.035)
            if gl > 0.05:
                cv.ellipse(0.12 * L.Ac, -0.5 * L.Bca, 0.42 * L.Ac * gl, 0.33 * L.Bca * gl,
                           liver_val, LIVER, angle=0.25, only=_SOFT_CAVITY)
            # vessels
            tv = self.liver_vessels
            vval = liver_val - 18.0 if e < 0.3 else liver_val + 55.0 * e
            for i in tv.active(z) if detail else ():
                dzz = z - tv.zc[i]
                xi = tv.xi[i] + tv.dxi[i] * dzz
                et = tv.eta[i] + tv.deta[i] * dzz
                if xi * xi + et * et > 1.0:
                    continue
                su, sv = tv.dxi[i] * la, tv.deta[i] * lb
                elong = float(np.sqrt(1.0 + su * su + sv * sv))
                cv.ellipse(lcu + xi * la, lcv + et * lb, tv.radius[i] * elong, tv.radius[i],
                           vval, None, angle=float(np.arctan2(sv, su)), only=_ONLY_LIVER)
            gb = _prof(s, 0.6, 0.645)
            if gb > 0.1:
                cv.ellipse(lcu + 0.45 * la, lcv - 0.45 * lb, 17.0 * gb, 12.0 * gb, 8.0,
                           GALLBLADDER, only=label_lut([LIVER, ABDOMEN_FAT]))
        # spleen
        gs = _prof(s, 0.54, 0.64) * self.spleen_s
        if gs > 0.02:
            cv.ellipse(0.64 * L.Ac, 0.3 * L.Bcp, 0.28 * L.Ac * gs, 0.18 * L.Ac * gs,
                       48.0 + 60.0 * e, SPLEEN, angle=1.0, only=_SOFT_CAVITY)
        # stomach with an air-fluid level
        gst = _prof(s, 0.54, 0.635)
        if gst > 0.05:
            scu, scv = 0.33 * L.Ac, -0.38 * L.Bca
            sa, sb = 0.27 * L.Ac * gst, 0.3 * L.Bca * gst
            cv.ellipse(scu, scv, sa, sb, 50.0 + 30.0 * e, STOMACH, only=_SOFT_CAVITY)
            lvl = scv - 0.15 * sb

            def content(blk, lvl=lvl):
                return np.where(blk.v < lvl, -1000.0, 18.0).astype(np.float32)

            cv.ellipse(scu, scv, sa - 4.0, sb - 4.0, content, None, only=label_lut([STOMACH]))
        # pancreas
        gp = _prof(s, 0.6, 0.655)
        if gp > 0.05:
            cv.ellipse(0.12 * L.Ac, L.v_body - L.R - 30.0, 0.36 * L.Ac * gp, 11.0, 40.0 + 50.0 * e,
                       PANCREAS, angle=-0.3, only=_CAVITY_NO_LUNG)

    def _mediastinum(self, cv: Canvas, L: Level, s: float, e: float) -> None:
        blood = 45.0 + 140.0 * e
        vb, R = L.v_body, L.R
        # heart
        gh = _prof(s, 0.44, 0.565) * self.heart_s
        if gh > 0.02:
            hcu, hcv = 0.14 * L.Ac, -0.25 * L.Bca
            ha, hb = 0.42 * L.Ac * gh, 0.5 * L.Bca * gh
            cv.ellipse(hcu, hcv, ha, hb, 50.0 + 15.0 * e, HEART, angle=-0.5,
                       only=label_lut([MEDIASTINUM, LUNG, LIVER, ABDOMEN_FAT]))
            cv.ellipse(hcu + 0.05 * ha, hcv, 0.72 * ha, 0.7 * hb, 42.0 + 90.0 * e, HEART,
                       angle=-0.5, only=label_lut([HEART]))
        # ascending aorta, arch, pulmonary trunk, SVC
        if 0.39 < s < 0.455:
            cv.ellipse(-0.06 * L.Ac, -0.3 * L.Bca, 15.0, 15.0, blood, VESSEL, only=_CAVITY)
        if 0.375 < s < 0.392:
            c1, c2 = np.array([-0.06 * L.Ac, -0.3 * L.Bca]), np.array([R + 9.0, vb - 0.2 * R])
            mid, d = (c1 + c2) / 2, c2 - c1
            cv.ellipse(mid[0], mid[1], float(np.hypot(*d)) / 2 + 13.0, 13.0, blood, VESSEL,
                       angle=float(np.arctan2(d[1], d[0])), only=_CAVITY)
        if 0.415 < s < 0.45:
            cv.ellipse(0.1 * L.Ac, -0.28 * L.Bca, 14.0, 13.0, 45.0 + 110.0 * e, VESSEL,
                       only=_CAVITY)
        if 0.35 < s < 0.445:
            cv.ellipse(-0.2 * L.Ac, -0.2 * L.Bca, 10.0, 9.0, 45.0 + 120.0 * e, VESSEL,
                       only=_CAVITY)
        # trachea, bronchi, esophagus
        if 0.28 < s < 0.43:
            cv.ellipse(0.0, vb - R - 24.0, 10.0, 9.0, 40.0, AIRWAY, only=_CAVITY)
            cv.ellipse(0.0, vb - R - 24.0, 8.0, 7.0, -1000.0, AIRWAY)
        elif 0.43 <= s < 0.47:
            off = 12.0 + 900.0 * (s - 0.43)
            for sd in (-1, 1):
                cv.ellipse(sd * off, vb - R - 20.0, 6.0, 6.0, 40.0, AIRWAY, only=_CAVITY)
                cv.ellipse(sd * off, vb - R - 20.0, 4.3, 4.3, -1000.0, AIRWAY)
        if 0.33 < s < 0.56:
            cv.ellipse(0.06 * L.Ac, vb - R - 7.0, 7.0, 6.0, 40.0, ESOPHAGUS, only=_CAVITY)
        # sternum
        if 0.37 < s < 0.52:
            scv = -L.Bca - 0.5 * L.muscle
            cv.ellipse(0.0, scv, 15.0, 6.5, 850.0, STERNUM, only=_NOT_BONE)
            cv.ellipse(0.0, scv, 12.5, 4.5, 300.0, STERNUM)
        # descending aorta (chest part)
        if 0.385 < s < 0.6:
            cv.ellipse(R + 9.0, vb - 0.25 * R, 12.5, 12.5, blood, VESSEL, only=_CAVITY)

    def _great_vessels_abdomen(self, cv: Canvas, L: Level, s: float, e: float) -> None:
        vb, R = L.v_body, L.R
        blood = 45.0 + 140.0 * e
        if s < 0.6:
            return
        if s < 0.765:
            w = _ramp(s, 0.6, 0.66)
            cu = (1 - w) * (R + 9.0) + w * 8.0
            cvv = (1 - w) * (vb - 0.25 * R) + w * (vb - R - 13.0)
            cv.ellipse(cu, cvv, 11.0, 11.0, blood, VESSEL, only=_CAVITY_NO_LUNG)
            cv.ellipse(-R - 4.0, vb - R - 12.0, 13.0, 9.5, 40.0 + 100.0 * e, VESSEL,
                       only=label_lut([ABDOMEN_FAT, LIVER, PELVIS_FAT]))
        elif s < 0.92:
            d = 14.0 + 700.0 * (s - 0.765)
            d = min(d, 0.5 * L.Ac)
            cvv = vb - R - 12.0 - 300.0 * (s - 0.765)
            for sd in (-1, 1):
                cv.ellipse(sd * d, cvv, 6.5, 6.5, blood, VESSEL, only=_CAVITY_NO_LUNG)
                cv.ellipse(sd * (d - 3.0), cvv + 12.0, 8.0, 7.0, 40.0 + 100.0 * e, VESSEL,
                           only=_CAVITY_NO_LUNG)

    def _kidneys(self, cv: Canvas, L: Level, s: float, e: float) -> None:
        for sd, (t0, t1) in ((-1, (0.625, 0.708)), (1, (0.615, 0.698))):
            g = _prof(s, t0, t1) ** 0.8 * self.kidney_s
            if g < 0.05:
                continue
            cu, cvv = sd * (L.R + 44.0), L.v_body - 4.0
            a, b = 30.0 * g, 23.0 * g
            ang = sd * 1.05
            cv.ellipse(cu, cvv, a, b, 32.0 + 110.0 * e, KIDNEY, angle=ang, only=_CAVITY_NO_LUNG)
            cv.ellipse(cu, cvv, 0.7 * a, 0.62 * b, 28.0 + 45.0 * e, KIDNEY, angle=ang,
                       only=label_lut([KIDNEY]))
            hs = _prof(s, t0 + 0.02, t1 - 0.02)
            if hs > 0.1:
                hu_, hv_ = cu - sd * 0.55 * a * 0.6, cvv - 0.55 * b * 0.6
                cv.ellipse(hu_, hv_, 0.38 * a * hs, 0.3 * b * hs, -70.0, KIDNEY, angle=ang,
                           only=label_lut([KIDNEY]))
                cv.ellipse(hu_, hv_, 0.22 * a * hs, 0.15 * b * hs, 10.0, KIDNEY, angle=ang,
                           only=label_lut([KIDNEY]))

    def _bowel_loops(self, cv: Canvas, L: Level, z: float, e: float) -> None:
        tb = self.bowel
        wall = 42.0 + 30.0 * e
        for i in tb.active(z):
            dzz = z - tb.zc[i]
            xi = tb.xi[i] + tb.dxi[i] * dzz
            et = tb.eta[i] + tb.deta[i] * dzz
            if xi * xi + et * et > 0.9:
                continue
            cu, cvv = xi * L.Ac, et * (L.Bca if et < 0 else L.Bcp)
            su, sv = tb.dxi[i] * L.Ac, tb.deta[i] * L.Bca
            elong = float(np.sqrt(1.0 + su * su + sv * sv))
            r = float(tb.radius[i]) * (1.0 - (dzz / tb.half[i]) ** 2) ** 0.3
            ang = float(np.arctan2(sv, su))
            blk = cv.ellipse(cu, cvv, r * elong, r, wall, BOWEL, angle=ang, only=_FAT_CAVITY)
            if blk is None:
                continue
            k = int(tb.kind[i])
            if k == 0:
                val: object = 12.0
            elif k == 1:
                val = -1000.0
            elif k == 2:
                lvl = cvv - float(tb.level[i]) * r

                def val(blk, lvl=lvl):
                    return np.where(blk.v < lvl, -1000.0, 15.0).astype(np.float32)
            else:
                def val(blk):
                    return (-150.0 + 180.0 * np.cos(blk.u * 0.9) * np.sin(blk.v * 0.8)).astype(
                        np.float32
                    )
            cv.ellipse(cu, cvv, max(r * elong - 2.5, 0.5), max(r - 2.5, 0.5), val, None,
                       angle=ang, only=label_lut([BOWEL]))

    def _pelvis(self, cv: Canvas, L: Level, s: float, e: float) -> None:
        Ac, Bca, Bcp = L.Ac, L.Bca, L.Bcp
        # gluteal muscles
        gg = _prof(s, 0.79, 1.0)
        if gg > 0.05:
            for sd in (-1, 1):
                cv.ellipse(sd * 0.55 * Ac, 0.62 * Bcp, 0.38 * Ac * gg, 0.34 * Bcp * gg, 50.0,
                           MUSCLE, only=_CAVITY_NO_LUNG)
        # bladder
        gb = _prof(s, 0.84, 0.935) * self.bladder_s
        if gb > 0.05:
            cv.ellipse(0.0, -0.38 * Bca, 0.32 * Ac * gb, 0.36 * Bca * gb, 40.0, BLADDER,
                       only=_CAVITY_NO_LUNG)
            cv.ellipse(0.0, -0.38 * Bca, 0.32 * Ac * gb - 3.0, 0.36 * Bca * gb - 3.0, 8.0, BLADDER,
                       only=label_lut([BLADDER]))
        # uterus or prostate
        if self.sex == "F":
            gu = _prof(s, 0.82, 0.875)
            if gu > 0.05:
                cv.ellipse(0.0, -0.02 * Bca, 36.0 * gu, 26.0 * gu, 60.0 + 40.0 * e, PELVIC_ORGAN,
                           only=_CAVITY_NO_LUNG)
        else:
            gu = _prof(s, 0.91, 0.945)
            if gu > 0.05:
                cv.ellipse(0.0, -0.3 * Bca, 20.0 * gu, 17.0 * gu, 42.0 + 20.0 * e, PELVIC_ORGAN,
                           only=_CAVITY_NO_LUNG)
        # rectum
        gr = _prof(s, 0.81, 0.95)
        if gr > 0.1:
            rcv = L.v_body - 0.6 * L.R
            cv.ellipse(0.0, rcv, 15.0, 13.0, 45.0, BOWEL, only=_CAVITY_NO_LUNG)

            def stool(blk):
                return (-250.0 + 220.0 * np.cos(blk.u * 0.7) * np.cos(blk.v * 0.9)).astype(
                    np.float32
                )

            cv.ellipse(0.0, rcv, 11.0, 9.5, stool, None, only=label_lut([BOWEL]))
        # iliac wings
        gi = _prof(s, 0.755, 0.86)
        if gi > 0.05:
            for sd in (-1, 1):
                cu = sd * (0.62 * Ac - 260.0 * max(s - 0.8, 0.0))
                cvv = 0.18 * Bcp + 150.0 * max(s - 0.8, 0.0)
                a = 0.3 * Ac * gi + 8.0
                ang = sd * (1.1 - 2.0 * max(s - 0.8, 0.0))
                bw = 5.0 + 6.0 * gi * _ramp(s, 0.76, 0.84)
                cv.ellipse(cu, cvv, a, bw + 2.0, 950.0, CORTEX, angle=ang)
                cv.ellipse(cu, cvv, a - 2.5, bw, 300.0, PELVIC_BONE, angle=ang)
        # acetabulum and femoral heads
        gf = _prof(s, 0.86, 0.93)
        if gf > 0.1:
            for sd in (-1, 1):
                cu, cvv = sd * 0.6 * Ac, 0.02 * Bcp
                cv.ellipse(cu, cvv, 26.0 * gf + 4.0, 24.0 * gf + 4.0, 950.0, CORTEX)
                cv.ellipse(cu, cvv, 24.0 * gf + 2.0, 22.0 * gf + 2.0, 320.0, PELVIC_BONE)
                cv.ellipse(cu + sd * 4.0, cvv, 19.0 * gf, 19.0 * gf, 30.0, MUSCLE)
                cv.ellipse(cu + sd * 4.0, cvv, 17.5 * gf, 17.5 * gf, 950.0, CORTEX)
                cv.ellipse(cu + sd * 4.0, cvv, 15.5 * gf, 15.5 * gf, 330.0, PELVIC_BONE)
        gpb = _prof(s, 0.9, 0.95)
        if gpb > 0.1:
            for sd in (-1, 1):
                cv.ellipse(sd * 22.0, -0.78 * Bca, 16.0 * gpb, 9.0 * gpb, 950.0, CORTEX)
                cv.ellipse(sd * 22.0, -0.78 * Bca, 13.0 * gpb, 6.5 * gpb, 320.0, PELVIC_BONE)
                cv.ellipse(sd * 0.42 * Ac, 0.42 * Bcp, 17.0 * gpb, 13.0 * gpb, 950.0, CORTEX)
                cv.ellipse(sd * 0.42 * Ac, 0.42 * Bcp, 14.0 * gpb, 10.0 * gpb, 320.0, PELVIC_BONE)

    def _spine(self, cv: Canvas, L: Level, s: float, z: float) -> None:
        R, vb = L.R, L.v_body
        # paraspinal muscles (and psoas in the abdomen)
        for sd in (-1, 1):
            cv.ellipse(sd * (0.6 * R + 14.0), L.v_canal + 9.0, 0.6 * R + 13.0, 16.0, 52.0,
                       MUSCLE, only=_NOT_BONE)
        gp = _ramp(s, 0.655, 0.78)
        if gp > 0 and s < 0.9:
            for sd in (-1, 1):
                r = 6.0 + 17.0 * gp
                off = 250.0 * max(s - 0.8, 0.0)
                cv.ellipse(sd * (R + 10.0 + 0.5 * r + off), vb - 2.0 - off, r, 1.1 * r, 50.0,
                           MUSCLE, only=_CAVITY_NO_LUNG)
        sacral = 0.775 < s < 0.87
        if s < 0.775:
            H = (21.0 + 12.0 * _ramp(s, 0.3, 0.75)) * self.vert_height
            disc = ((z / H) % 1.0) < 0.17
            if disc:
                cv.ellipse(0.0, vb, 1.12 * R, 0.95 * R, 85.0, DISC)
            else:
                cv.ellipse(0.0, vb, 1.12 * R, 0.95 * R, 1000.0, CORTEX)
                cv.ellipse(0.0, vb, 1.12 * R - 2.2, 0.95 * R - 2.2, 360.0, VERTEBRA)
        elif sacral:
            g = _ramp(s, 0.775, 0.87)
            a = 1.5 * R * (1 - 0.45 * g) + 6.0
            cv.ellipse(0.0, vb + 8.0, a, 0.62 * R, 950.0, CORTEX, p=2.6)
            cv.ellipse(0.0, vb + 8.0, a - 2.5, 0.62 * R - 2.5, 330.0, VERTEBRA, p=2.6)
        if s < 0.87:
            # spinal canal with its posterior arch and processes
            cr = 8.0 if not sacral else 6.0
            cv.ellipse(0.0, L.v_canal, cr + 4.0, cr + 3.5, 900.0, CORTEX)
            cv.ellipse(0.0, L.v_canal, cr, cr - 0.5, 15.0, CANAL)
            cv.ellipse(0.0, 0.5 * (L.v_canal + L.v_tip) + 2.0, 3.5,
                       0.5 * (L.v_tip - L.v_canal) - 4.0, 700.0, CORTEX, only=_NOT_BONE)
            if s < 0.775:
                for sd in (-1, 1):
                    cv.ellipse(sd * (R + 3.0), L.v_canal - 2.0, 0.6 * R, 4.0, 700.0, CORTEX,
                               angle=sd * 0.35, only=_NOT_BONE)

    def _ribs(self, cv: Canvas, L: Level, s: float, z: float) -> None:
        lo, hi = 20.0, 165.0
        if s > 0.52:
            lo, hi = 45.0 + 200.0 * (s - 0.52), 125.0 - 150.0 * (s - 0.52)
        if s < 0.36:
            hi = 120.0
        if hi <= lo:
            return
        a_r = L.A - L.fat - 0.5 * L.muscle
        b_a = L.Ba - L.fat - 0.5 * L.muscle
        b_p = L.Bp - L.fat_p - 0.5 * L.muscle
        step = 19.0
        for sd in (-1, 1):
            shift = ((z / self.rib_pitch + self.rib_phase + (0.5 if sd > 0 else 0.0)) % 1.0) * step
            psi = 20.0 + shift
            while psi < 170.0:
                if lo <= psi <= hi:
                    ang = np.deg2rad(psi)
                    # psi from the posterior midline (0) to the anterior midline (180)
                    uu = sd * a_r * np.sin(ang)
                    vv = (b_p if psi < 90 else b_a) * np.cos(ang)
                    tang = float(np.arctan2(-(b_p if psi < 90 else b_a) * np.sin(ang) * 1.0,
                                            sd * a_r * np.cos(ang)))
                    cart = psi > 140.0  # costal cartilage: not bone
                    cv.ellipse(uu, vv, 9.0, 5.5, 130.0 if cart else 800.0, None if cart else RIB,
                               angle=tang, only=_NOT_BONE)
                    if not cart:
                        cv.ellipse(uu, vv, 7.0, 3.5, 280.0, RIB, angle=tang)
                psi += step
