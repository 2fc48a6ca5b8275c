"""Box geometry: one module for the detection evaluation, the lesion graph and the report."""

from __future__ import annotations

import numpy as np
import pytest

from deeplesion_lab.boxes import area, box_iou, nms, pairwise_cover, pairwise_iou


def test_inclusive_and_plain_conventions():
    a = [[0, 0, 9, 9]]
    assert area(a).tolist() == [100.0] and area(a, inclusive=False).tolist() == [81.0]
    # two 10x10-pixel boxes sharing one column: 10 of 190 pixels
    assert pairwise_iou(a, [[9, 0, 18, 9]])[0, 0] == pytest.approx(10 / 190)
    # as plain coordinates they only touch
    assert pairwise_iou(a, [[9, 0, 18, 9]], inclusive=False)[0, 0] == 0.0
    assert pairwise_iou(a, [[0, 0, 9, 19]])[0, 0] == pytest.approx(0.5)
    assert pairwise_iou(a, [[50, 50, 60, 60]])[0, 0] == 0.0


def test_pairwise_agrees_with_one_against_many():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (12, 2))
    wh = rng.uniform(1, 40, (12, 2))
    boxes = np.hstack([xy, xy + wh])
    full = pairwise_iou(boxes[:5], boxes)
    assert full.shape == (5, 12)
    for i in range(5):
        np.testing.assert_allclose(full[i], box_iou(boxes[i], boxes), rtol=1e-12)
    np.testing.assert_allclose(np.diag(pairwise_iou(boxes, boxes)), 1.0)
    assert (full >= 0).all() and (full <= 1 + 1e-12).all()


def test_cover_is_over_the_smaller_box():
    big, small = [[0, 0, 19, 19]], [[5, 5, 9, 9]]
    assert pairwise_cover(big, small)[0, 0] == 1.0
    assert pairwise_iou(big, small)[0, 0] == pytest.approx(25 / 400)


def test_nms_keeps_the_best_of_each_overlapping_group():
    boxes = np.array([[0, 0, 9, 9], [1, 0, 10, 9], [50, 50, 59, 59], [0, 1, 9, 10]], float)
    scores = np.array([0.5, 0.9, 0.1, 0.3])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]  # 0 and 3 overlap the best one
    assert nms(boxes, scores, 0.99).tolist() == [0, 1, 2, 3]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
