"""Bootstrap intervals of FROC sensitivities and the paired comparison of two detectors."""

from __future__ import annotations

import numpy as np
import pytest

from deeplesion_lab.detection.bootstrap import (
    _resampled_sensitivity,
    bootstrap_sensitivity,
    paired_difference,
    pooled_difference,
)
from deeplesion_lab.detection.froc import FP_RATES, FROCError, froc


def _case(n_images: int, p_found: float, seed: int):
    """One lesion per image; a detector finds it with probability ``p_found`` (score 0.9)
    and puts two false positives on every image (scores 0.5 and 0.1)."""
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for _ in range(n_images):
        g = np.array([[100.0, 100.0, 130.0, 130.0]])
        d = [[300.0, 300.0, 320.0, 320.0, 0.5], [10.0, 10.0, 30.0, 30.0, 0.1]]
        if rng.random() < p_found:
            d.append([101.0, 101.0, 131.0, 131.0, 0.9])
        gts.append(g)
        dets.append(np.array(d))
    return dets, gts


def test_drawing_every_image_once_gives_the_curve_itself() -> None:
    dets, gts = _case(30, 0.6, seed=1)
    c = froc(dets, gts)
    ones = np.ones((1, c.n_images), dtype=np.int64)
    got = _resampled_sensitivity(c, ones, FP_RATES)[0]
    assert np.allclose(got, c.sensitivity_at(FP_RATES))
    twice = _resampled_sensitivity(c, ones * 2, FP_RATES)[0]  # every image twice: same rates
    assert np.allclose(twice, got)


def test_intervals_cover_the_estimate_and_shrink_with_more_images() -> None:
    dets, gts = _case(40, 0.5, seed=2)
    small = bootstrap_sensitivity(froc(dets, gts), n_boot=800, seed=0)
    assert small.estimate["0.5"] == pytest.approx(np.mean([len(d) == 3 for d in dets]))
    for k in small.estimate:
        assert small.low[k] <= small.estimate[k] <= small.high[k]
    dets, gts = _case(640, 0.5, seed=2)
    big = bootstrap_sensitivity(froc(dets, gts), n_boot=800, seed=0)
    w_small = small.high["0.5"] - small.low["0.5"]
    w_big = big.high["0.5"] - big.low["0.5"]
    # the binomial standard error falls with sqrt(n): 16x the images, about 1/4 the width
    assert 0.15 < w_big / w_small < 0.4
    # a 95 % interval of a proportion p over n: about +-1.96 sqrt(p(1-p)/n)
    assert w_big == pytest.approx(2 * 1.96 * np.sqrt(0.25 / 640), rel=0.25)
    m = small.to_metrics()
    assert m["interval"]["mean_0.5-4"] == [small.low["mean_0.5-4"], small.high["mean_0.5-4"]]
    assert "p_le_zero" not in m


def test_paired_difference() -> None:
    dets, gts = _case(60, 0.4, seed=3)
    weak = froc(dets, gts)
    same = paired_difference(weak, weak, n_boot=300)
    assert all(v == 0 for v in same.low.values()) and all(v == 0 for v in same.high.values())
    assert same.p_le_zero["mean_0.5-4"] == 1.0
    # a better detector on the same images: it also finds every lesion the weak one missed
    better = [np.vstack([d, [[100.0, 100.0, 130.0, 130.0, 0.8]]]) for d in dets]
    diff = paired_difference(froc(better, gts), weak, n_boot=1000, seed=1)
    assert diff.estimate["0.5"] == pytest.approx(1 - np.mean([len(d) == 3 for d in dets]))
    assert diff.low["0.5"] > 0.3 and diff.p_le_zero["0.5"] == 0.0
    assert diff.format("0.5").startswith(f"{diff.estimate['0.5']:.3f} [")


def test_pooled_difference_is_the_mean_of_the_per_set_differences() -> None:
    sets = []
    for seed, n in ((5, 40), (6, 55)):
        dets, gts = _case(n, 0.4, seed=seed)
        better = [np.vstack([d, [[100.0, 100.0, 130.0, 130.0, 0.8]]]) for d in dets]
        sets.append((froc(better, gts), froc(dets, gts)))
    one = pooled_difference(sets[:1], n_boot=400, seed=7)
    alone = paired_difference(*sets[0], n_boot=400, seed=7)  # one set: the paired difference
    assert one.estimate == alone.estimate and one.low == alone.low and one.high == alone.high
    both = pooled_difference(sets, n_boot=400, seed=7)
    parts = [paired_difference(a, b, n_boot=400, seed=7 + i) for i, (a, b) in enumerate(sets)]
    for k in both.estimate:
        assert both.estimate[k] == pytest.approx(np.mean([d.estimate[k] for d in parts]))
    assert both.low["0.5"] > 0 and both.p_le_zero["0.5"] == 0.0
    with pytest.raises(FROCError, match="at least one pair"):
        pooled_difference([])


def test_errors() -> None:
    dets, gts = _case(10, 0.5, seed=4)
    other_d, other_g = _case(12, 0.5, seed=4)
    with pytest.raises(FROCError, match="same images"):
        paired_difference(froc(dets, gts), froc(other_d, other_g))
    with pytest.raises(FROCError, match="same images"):
        pooled_difference([(froc(dets, gts), froc(other_d, other_g))])
    with pytest.raises(FROCError, match="no ground-truth"):
        bootstrap_sensitivity(froc([np.zeros((0, 5))], [np.zeros((0, 4))]))
