"""How sure is a sensitivity? Bootstrap intervals over images, and paired model comparisons.

A FROC sensitivity measured on a few dozen lesions moves by ``1 / lesions`` with every lesion
found or missed, so two detectors can differ by chance alone. Resampling the evaluated images
with replacement (the unit the protocol counts false positives over) gives a percentile
interval for each sensitivity and for the 0.5-4 FP mean; resampling the *same* images for two
detectors gives an interval for their difference (a paired bootstrap), which is what a
"multi-class beats single-class" or a "fine-tuning helped" claim needs.

Whether a detection is a hit, a duplicate, an ignored or a false positive depends only on the
detections of its own image ranked above it, so it does not change when images are resampled:
a resample just weights each detection by how often its image was drawn. Every resample is
then a weighted cumulative sum over the detections in score order, computed for many resamples
at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .froc import FP_RATES, FROCCurve, FROCError, fp_key

#: Key of the mean sensitivity over 0.5-4 FPs per image in a :class:`SensitivityInterval`.
MEAN_KEY = "mean_0.5-4"

__all__ = ["MEAN_KEY", "SensitivityInterval", "bootstrap_sensitivity", "paired_difference",
           "pooled_difference"]


@dataclass
class SensitivityInterval:
    """Bootstrap percentile intervals of the sensitivities of one curve (or of a difference).

    Attributes
    ----------
    estimate : dict
        ``fp_key -> value`` on the evaluated images, plus ``"mean_0.5-4"``.
    low, high : dict
        The interval's bounds, same keys.
    level : float
        Coverage (0.95 by default).
    n_boot : int
        Resamples drawn.
    p_le_zero : dict
        For a difference: share of resamples where it is at most 0 (one-sided), same keys.
    """

    estimate: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]
    level: float
    n_boot: int
    p_le_zero: dict[str, float] | None = None

    def to_metrics(self) -> dict:
        """JSON-able: ``{key: [low, high]}`` with the level and the number of resamples."""
        out = {
            "level": self.level,
            "n_boot": self.n_boot,
            "interval": {k: [self.low[k], self.high[k]] for k in self.estimate},
        }
        if self.p_le_zero is not None:
            out["difference"] = dict(self.estimate)
            out["p_le_zero"] = dict(self.p_le_zero)
        return out

    def format(self, key: str = MEAN_KEY, digits: int = 3) -> str:
        """``"0.412 [0.301, 0.520]"`` for one key."""
        return (f"{self.estimate[key]:.{digits}f} "
                f"[{self.low[key]:.{digits}f}, {self.high[key]:.{digits}f}]")


def _check(curve: FROCCurve) -> None:
    if len(curve.gt_per_image) != curve.n_images or len(curve.image_index) != len(curve.scores):
        raise FROCError("this FROC curve has no per-image record; build it with froc()")
    if curve.n_gt == 0:
        raise FROCError("no ground-truth lesion: a sensitivity has no interval")


def _resampled_sensitivity(curve: FROCCurve, counts: np.ndarray,
                           fp_rates: Sequence[float]) -> np.ndarray:
    """``(B, len(fp_rates))`` sensitivities of ``curve`` for ``B`` rows of image counts."""
    hits = np.diff(curve.tps).astype(np.float64)
    fps = np.diff(curve.fps).astype(np.float64)
    w = counts[:, curve.image_index].astype(np.float64)  # (B, detections)
    tp = np.concatenate([np.zeros((len(counts), 1)), np.cumsum(w * hits, axis=1)], axis=1)
    fp = np.concatenate([np.zeros((len(counts), 1)), np.cumsum(w * fps, axis=1)], axis=1)
    n_gt = counts @ curve.gt_per_image.astype(np.float64)
    out = np.empty((len(counts), len(fp_rates)))
    rows = np.arange(len(counts))
    for j, f in enumerate(fp_rates):
        # the last operating point whose false positives stay within f x images (see froc)
        k = (fp <= float(f) * curve.n_images + 1e-9).sum(axis=1) - 1
        out[:, j] = tp[rows, k] / np.maximum(n_gt, 1.0)
    return out


def _draws(curves: Sequence[FROCCurve], fp_rates: Sequence[float], n_boot: int,
           seed: int) -> list[np.ndarray]:
    n = curves[0].n_images
    rng = np.random.default_rng(seed)
    # bound the (resamples x detections) work arrays to about 64 MB each
    size = max(1, int(8e6 // max(1, max(len(c.scores) for c in curves) + 1)))
    parts: list[list[np.ndarray]] = [[] for _ in curves]
    done = 0
    while done < n_boot:
        b = min(size, n_boot - done)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=b)
        for part, c in zip(parts, curves, strict=True):
            part.append(_resampled_sensitivity(c, counts, fp_rates))
        done += b
    return [np.concatenate(p) for p in parts]


def _with_mean(values: np.ndarray, fp_rates: Sequence[float]) -> np.ndarray:
    cols = [j for j, f in enumerate(fp_rates) if f <= 4.0]
    mean = values[..., cols].mean(axis=-1, keepdims=True) if cols else values[..., :1] * np.nan
    return np.concatenate([values, mean], axis=-1)


def _interval(point: np.ndarray, draws: np.ndarray, fp_rates: Sequence[float], level: float,
              n_boot: int, paired: bool) -> SensitivityInterval:
    keys = [fp_key(f) for f in fp_rates] + [MEAN_KEY]
    alpha = (1.0 - level) / 2.0
    lo = np.quantile(draws, alpha, axis=0)
    hi = np.quantile(draws, 1.0 - alpha, axis=0)
    return SensitivityInterval(
        estimate={k: float(v) for k, v in zip(keys, point, strict=True)},
        low={k: float(v) for k, v in zip(keys, lo, strict=True)},
        high={k: float(v) for k, v in zip(keys, hi, strict=True)},
        level=float(level),
        n_boot=int(n_boot),
        p_le_zero=(
            {k: float(v) for k, v in zip(keys, (draws <= 0).mean(axis=0), strict=True)}
            if paired else None
        ),
    )


def bootstrap_sensitivity(
    curve: FROCCurve,
    fp_rates: Sequence[float] = FP_RATES,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> SensitivityInterval:
    """Percentile bootstrap intervals of a curve's sensitivities, resampling images.

    Parameters
    ----------
    curve : FROCCurve
        From :func:`~deeplesion_lab.detection.froc.froc` (or ``FROCResult.curve``).
    fp_rates : sequence of float
        FP-per-image rates; the mean over those up to 4 is added as ``"mean_0.5-4"``.
    n_boot : int, default 2000
    level : float, default 0.95
    seed : int, default 0

    Returns
    -------
    SensitivityInterval
    """
    _check(curve)
    point = _with_mean(curve.sensitivity_at(fp_rates), fp_rates)
    (draws,) = _draws([curve], fp_rates, n_boot, seed)
    return _interval(point, _with_mean(draws, fp_rates), fp_rates, level, n_boot, paired=False)


def paired_difference(
    curve_a: FROCCurve,
    curve_b: FROCCurve,
    fp_rates: Sequence[float] = FP_RATES,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> SensitivityInterval:
    """Sensitivity of ``curve_a`` minus ``curve_b`` on the same images, with a paired interval.

    Both curves must come from the same evaluated images in the same order (two detectors
    scored on one split). ``p_le_zero`` is the share of resamples in which ``a`` is not
    better than ``b``: a one-sided bootstrap p-value for "a beats b".

    Raises
    ------
    FROCError
        The curves were not evaluated on the same images.
    """
    point, diff = _paired_draws(curve_a, curve_b, fp_rates, n_boot, seed)
    return _interval(point, diff, fp_rates, level, n_boot, paired=True)


def pooled_difference(
    pairs: Sequence[tuple[FROCCurve, FROCCurve]],
    fp_rates: Sequence[float] = FP_RATES,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 1000,
) -> SensitivityInterval:
    """The mean over several data sets (e.g. demo seeds) of the paired differences ``a - b``.

    Each pair ``(curve_a, curve_b)`` is two detectors on one data set's images, as for
    :func:`paired_difference`; pair ``i`` is resampled on its own images with seed ``seed + i``
    (a stratified bootstrap), and the interval and ``p_le_zero`` are those of the mean of the
    per-pair resampled differences.

    Raises
    ------
    FROCError
        No pair, or a pair not evaluated on the same images.
    """
    if not pairs:
        raise FROCError("a pooled difference needs at least one pair of curves")
    drawn = [_paired_draws(a, b, fp_rates, n_boot, seed + i) for i, (a, b) in enumerate(pairs)]
    point = np.mean([p for p, _ in drawn], axis=0)
    diff = np.mean([d for _, d in drawn], axis=0)
    return _interval(point, diff, fp_rates, level, n_boot, paired=True)


def _paired_draws(curve_a: FROCCurve, curve_b: FROCCurve, fp_rates: Sequence[float],
                  n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The difference ``a - b`` on the evaluated images and on ``n_boot`` shared resamples."""
    _check(curve_a)
    _check(curve_b)
    if curve_a.n_images != curve_b.n_images or not np.array_equal(curve_a.gt_per_image,
                                                                    curve_b.gt_per_image):
        raise FROCError("paired comparison needs two curves over the same images and lesions "
                        f"({curve_a.n_images} vs {curve_b.n_images} images)")
    point = (_with_mean(curve_a.sensitivity_at(fp_rates), fp_rates)
             - _with_mean(curve_b.sensitivity_at(fp_rates), fp_rates))
    da, db = _draws([curve_a, curve_b], fp_rates, n_boot, seed)
    return point, _with_mean(da, fp_rates) - _with_mean(db, fp_rates)
