"""Painting primitives for synthetic CT slices: a HU canvas in millimetre coordinates.

Every structure of the synthetic body (body outline, organs, vessels, bones, lesions) is a
rotated superellipse painted with a soft edge about one pixel wide, which imitates the partial
volume effect at CT boundaries. Painting blends HU values by that edge's opacity and writes a
tissue label wherever the opacity passes one half, so that the same call gives the image and an
anatomical label map (used to place lesions in the right organ).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["Canvas", "Block", "NoiseBank", "label_lut"]

ValueLike = float | np.ndarray | Callable[["Block"], np.ndarray]


def label_lut(labels: Iterable[int]) -> np.ndarray:
    """A 256-entry boolean look-up table that is true for ``labels`` (fast ``isin``)."""
    lut = np.zeros(256, dtype=bool)
    lut[list(labels)] = True
    return lut


@dataclass
class Block:
    """The part of a canvas that one shape covers, with the shape's local coordinates.

    Attributes
    ----------
    rows, cols : slice
        Where the block lies in the canvas.
    u, v : numpy.ndarray
        Canvas millimetre coordinates of the block's columns ``(1, w)`` and rows ``(h, 1)``.
    x, y : numpy.ndarray
        Coordinates in the shape's frame (rotated, centred), millimetres: ``(h, w)``, or
        ``(1, w)`` and ``(h, 1)`` for an unrotated shape.
    r : numpy.ndarray
        Normalised radius (1 on the boundary), ``(h, w)``.
    alpha : numpy.ndarray
        Opacity 0-1 of the shape (soft edge), ``(h, w)``.
    """

    rows: slice
    cols: slice
    u: np.ndarray
    v: np.ndarray
    x: np.ndarray
    y: np.ndarray
    r: np.ndarray
    alpha: np.ndarray
    dist: np.ndarray | None = None
    edge: float = 1.0

    def inset(self, depth: float | np.ndarray) -> Block:
        """The same block for the boundary moved ``depth`` millimetres inwards.

        Uses the distance to the boundary, so a fat layer of constant thickness inside a body
        outline costs a few array operations instead of a second shape.
        """
        alpha = np.clip(0.5 + (self.dist - depth) / np.float32(self.edge), 0.0, 1.0)
        return Block(self.rows, self.cols, self.u, self.v, self.x, self.y, self.r, alpha,
                     self.dist, self.edge)


class Canvas:
    """A slice being painted: HU values and tissue labels on a regular millimetre grid.

    Parameters
    ----------
    height, width : int
        Size in pixels.
    step : float
        Pixel size in millimetres.
    x0, y0 : float
        Pixel coordinates (column, row) of the millimetre origin (the body centre).
    fill : float, default -1000
        Initial HU (air).
    """

    def __init__(
        self, height: int, width: int, step: float, x0: float, y0: float, fill: float = -1000.0
    ):
        self.height, self.width, self.step = int(height), int(width), float(step)
        self.x0, self.y0 = float(x0), float(y0)
        self.u = ((np.arange(self.width, dtype=np.float32) - np.float32(x0)) * np.float32(step))
        self.v = ((np.arange(self.height, dtype=np.float32) - np.float32(y0)) * np.float32(step))
        self.hu = np.full((self.height, self.width), fill, dtype=np.float32)
        self.lab = np.zeros((self.height, self.width), dtype=np.uint8)

    # coordinates ----------------------------------------------------------------------------
    def to_px(self, u: float, v: float) -> tuple[float, float]:
        """Millimetres (u, v) to pixel coordinates (x, y)."""
        return self.x0 + u / self.step, self.y0 + v / self.step

    def _span(self, lo: float, hi: float, origin: float, n: int) -> slice:
        a = int(np.floor(origin + lo / self.step)) - 1
        b = int(np.ceil(origin + hi / self.step)) + 2
        return slice(max(a, 0), min(b, n))

    # shapes -------------------------------------------------------------------------------
    def shape(
        self,
        cu: float,
        cv: float,
        a: float,
        b: float,
        *,
        angle: float = 0.0,
        p: float = 2.0,
        b_post: float | None = None,
        harmonics: np.ndarray | None = None,
        edge: float | None = None,
        harmonic_stride: int = 1,
        keep_dist: bool = False,
    ) -> Block | None:
        """Geometry of a rotated superellipse on the canvas, or ``None`` if it misses it.

        Parameters
        ----------
        cu, cv : float
            Centre in millimetres.
        a, b : float
            Semi-axes in millimetres (``a`` along ``angle``).
        angle : float
            Rotation in radians (image axes: x right, y down).
        p : float
            Superellipse exponent (2 is an ellipse; larger is boxier).
        b_post : float, optional
            A different semi-axis ``b`` for the posterior half (``y > 0``, unrotated shapes).
        harmonics : array (k, 3), optional
            Rows of (order, amplitude, phase): the boundary radius is multiplied by
            ``1 + sum(amp * cos(order * phi + phase))`` (lobulation, spiculation).
        edge : float, optional
            Edge width in millimetres (default one pixel); wider edges look ill-defined.
        harmonic_stride : int, default 1
            Evaluate the harmonics on every n-th pixel only (they vary slowly with the angle;
            large shapes such as the body outline use 4).
        keep_dist : bool, default False
            Keep the distance to the boundary (for :meth:`Block.inset`).
        """
        if a <= 0 or b <= 0:
            return None
        bp = b if b_post is None else b_post
        grow = 1.0 + (float(np.abs(harmonics[:, 1]).sum()) if harmonics is not None else 0.0)
        edge = self.step if edge is None else max(float(edge), 0.3 * self.step)
        reach = max(a, b, bp) * grow + 2 * edge
        rows = self._span(cv - reach, cv + reach, self.y0, self.height)
        cols = self._span(cu - reach, cu + reach, self.x0, self.width)
        if rows.start >= rows.stop or cols.start >= cols.stop:
            return None
        u = self.u[cols][None, :]
        v = self.v[rows][:, None]
        du, dv = u - np.float32(cu), v - np.float32(cv)
        if angle:
            c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
            x = du * c + dv * s
            y = dv * c - du * s
        else:
            # axis-aligned: keep x (1, w) and y (h, 1) separable, which is much cheaper
            x, y = du, dv
        if b_post is not None and bp != b:
            bb = np.where(y > 0, np.float32(bp), np.float32(b))
        else:
            bb = np.float32(b)
        ia = np.float32(1.0 / a)
        xa = x * ia
        yb = y / bb
        if p == 2.0:
            r = np.sqrt(xa * xa + yb * yb)
        else:
            r = (np.abs(xa) ** p + np.abs(yb) ** p) ** (1.0 / p)
        if harmonics is None and not keep_dist and reach < 8.0 * self.step:
            # a few pixels across (vessels, ribs): the minor semi-axis sets the edge width
            alpha = (1.0 - r) * np.float32(min(a, b, bp) / edge)
            alpha += np.float32(0.5)
            np.clip(alpha, 0.0, 1.0, out=alpha)
            return Block(rows, cols, u, v, x, y, r, alpha)
        # distance to the boundary ~ (1 - r) / |grad r|
        g = np.sqrt((xa * ia) ** 2 + (yb / bb) ** 2)
        g /= np.maximum(r, 1e-6)
        if harmonics is not None and len(harmonics):
            k = max(int(harmonic_stride), 1)
            ys = np.broadcast_to(yb, r.shape)[::k, ::k]
            xs = np.broadcast_to(xa, r.shape)[::k, ::k]
            phi = np.arctan2(ys, xs)
            mod = np.ones_like(phi)
            for order, amp, phase in harmonics:
                mod += np.float32(amp) * np.cos(np.float32(order) * phi + np.float32(phase))
            np.maximum(mod, 0.2, out=mod)
            if k > 1:
                mod = np.repeat(np.repeat(mod, k, axis=0), k, axis=1)[: r.shape[0], : r.shape[1]]
            r = r / mod
            g = g / mod
        np.maximum(g, 1e-6, out=g)
        dist = 1.0 - r
        dist /= g
        alpha = dist * np.float32(1.0 / edge) if keep_dist else dist
        if not keep_dist:
            alpha *= np.float32(1.0 / edge)
        alpha += np.float32(0.5)
        np.clip(alpha, 0.0, 1.0, out=alpha)
        if keep_dist:
            return Block(rows, cols, u, v, x, y, r, alpha, dist, edge)
        return Block(rows, cols, u, v, x, y, r, alpha)

    def paint(
        self,
        block: Block | None,
        value: ValueLike,
        label: int | None,
        *,
        only: np.ndarray | None = None,
        opacity: float = 1.0,
    ) -> Block | None:
        """Blend ``value`` into the canvas with the block's opacity; label the inside.

        Parameters
        ----------
        block : Block or None
            From :meth:`shape` (``None`` does nothing).
        value : float, array or callable
            HU to paint: a number, an array of the block's shape, or ``f(block) -> array``.
        label : int or None
            Tissue label written where the opacity exceeds one half (``None`` keeps labels).
        only : look-up table, optional
            From :func:`label_lut`: paint only over these labels.
        opacity : float
            Extra opacity factor (0-1).
        """
        if block is None:
            return None
        alpha = block.alpha
        lab = self.lab[block.rows, block.cols]
        if only is not None:
            alpha = alpha * only[lab]
        if opacity != 1.0:
            alpha = alpha * np.float32(opacity)
        val = value(block) if callable(value) else value
        hu = self.hu[block.rows, block.cols]
        hu += alpha * (np.asarray(val, dtype=np.float32) - hu)
        if label is not None:
            lab[alpha > 0.5] = label
        return block

    def ellipse(
        self,
        cu: float,
        cv: float,
        a: float,
        b: float,
        value: ValueLike,
        label: int | None,
        *,
        only: np.ndarray | None = None,
        **shape_kw,
    ) -> Block | None:
        """:meth:`shape` then :meth:`paint` in one call."""
        return self.paint(self.shape(cu, cv, a, b, **shape_kw), value, label, only=only)


class NoiseBank:
    """Spatially correlated unit-variance noise, cropped at random places for each slice.

    A single field twice the image size is filtered once (Gaussian, ``sigma_px``); each slice
    takes a randomly offset, randomly flipped crop. That costs a slice almost nothing and gives
    CT-like grain.

    Parameters
    ----------
    size : int
        Side of the crops (the image size).
    rng : numpy.random.Generator
        Source of randomness (the bank is deterministic for a seeded generator).
    sigma_px : float
        Correlation length of the grain in pixels.
    """

    def __init__(self, size: int, rng: np.random.Generator, sigma_px: float = 1.1):
        from scipy import ndimage

        n = 2 * int(size)
        white = rng.standard_normal((n, n), dtype=np.float32)
        field = ndimage.gaussian_filter(white, sigma=sigma_px, mode="wrap")
        field /= field.std()
        # a little white noise on top keeps the finest grain
        field = 0.95 * field + 0.3 * rng.standard_normal((n, n), dtype=np.float32)
        field /= field.std()
        self.field = field
        self.size = int(size)

    def crop(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """A ``(height, width)`` crop of the field (a view; flipped at random)."""
        n = self.field.shape[0]
        if height > n or width > n:
            reps = (int(np.ceil(height / n)), int(np.ceil(width / n)))
            return np.tile(self.field, reps)[:height, :width]
        i = int(rng.integers(0, n - height + 1))
        j = int(rng.integers(0, n - width + 1))
        out = self.field[i : i + height, j : j + width]
        if rng.random() < 0.5:
            out = out[::-1]
        if rng.random() < 0.5:
            out = out[:, ::-1]
        return out
