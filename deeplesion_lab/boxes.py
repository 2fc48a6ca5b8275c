"""Box geometry shared by the detection evaluation, the lesion graph and the report.

Boxes are ``(x1, y1, x2, y2)`` in pixels. By default the DeepLesion code's inclusive-pixel
convention holds (a box from x1 to x2 is ``x2 - x1 + 1`` pixels wide), as in its detection
evaluation; ``inclusive=False`` measures plain coordinates (``x2 - x1``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["area", "box_iou", "intersection", "nms", "pairwise_cover", "pairwise_iou"]


def _as_boxes(b) -> np.ndarray:
    return np.asarray(b, dtype=float).reshape(-1, 4)


def area(b: np.ndarray, *, inclusive: bool = True) -> np.ndarray:
    """``(n,)`` areas of boxes ``b`` (n, 4)."""
    px = 1.0 if inclusive else 0.0
    b = _as_boxes(b)
    return (b[:, 2] - b[:, 0] + px) * (b[:, 3] - b[:, 1] + px)


def intersection(a: np.ndarray, b: np.ndarray, *, inclusive: bool = True) -> np.ndarray:
    """``(n, m)`` intersection areas of boxes ``a`` (n, 4) and ``b`` (m, 4)."""
    px = 1.0 if inclusive else 0.0
    a, b = _as_boxes(a), _as_boxes(b)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + px
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + px
    return np.maximum(iw, 0.0) * np.maximum(ih, 0.0)


def pairwise_iou(a: np.ndarray, b: np.ndarray, *, inclusive: bool = True) -> np.ndarray:
    """``(n, m)`` IoU of boxes ``a`` (n, 4) and ``b`` (m, 4)."""
    a, b = _as_boxes(a), _as_boxes(b)
    inter = intersection(a, b, inclusive=inclusive)
    return inter / (area(a, inclusive=inclusive)[:, None]
                    + area(b, inclusive=inclusive)[None, :] - inter)


def pairwise_cover(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(n, m)`` intersection over the smaller box's area (inclusive pixels)."""
    a, b = _as_boxes(a), _as_boxes(b)
    return intersection(a, b) / np.minimum(area(a)[:, None], area(b)[None, :])


def box_iou(box: Sequence[float], boxes: np.ndarray) -> np.ndarray:
    """IoU of one box with each of ``boxes``, in the DeepLesion code's inclusive-pixel convention.

    Parameters
    ----------
    box : (x1, y1, x2, y2)
    boxes : numpy.ndarray
        ``(N, 4)``.

    Returns
    -------
    numpy.ndarray
        ``(N,)`` overlaps in [0, 1].
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(box, dtype=np.float64)
    iw = np.maximum(np.minimum(boxes[:, 2], b[2]) - np.maximum(boxes[:, 0], b[0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(boxes[:, 3], b[3]) - np.maximum(boxes[:, 1], b[1]) + 1.0, 0.0)
    inter = iw * ih
    union = (
        (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0)
        + (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0)
        - inter
    )
    return inter / union


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression: the indices kept (ascending), best score first wins;
    a box is dropped when it overlaps a kept one by IoU >= ``iou``."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    ious = pairwise_iou(boxes, boxes)
    suppressed = np.zeros(len(ious), bool)
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        suppressed |= ious[i] >= iou
    return np.array(sorted(keep), dtype=np.int64)
