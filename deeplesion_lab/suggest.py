"""Which lesions should an annotator look at next? A ranking of likely mislabeled lesions.

Three signals, each scaled to 0-1 (1 = more suspicious), are combined in a weighted mean:

- ``centre``: distance from the lesion's embedding to the centre of its mined cluster, divided
  by the cluster's median distance (so a loose cluster does not flag all its members), then
  turned into a percentile over all lesions;
- ``disagree``: the fraction of the lesion's ``n_neighbors`` nearest neighbours (embedding space)
  whose current label differs from its own;
- ``low_confidence``: ``1 - confidence`` of the pseudo-label (0.5 where unknown).

Neighbours and centre distances depend only on the embeddings and the clusters, so they are
learned once by :meth:`MislabelRanker.fit`; :meth:`MislabelRanker.rank` is cheap and is called
again after every correction, with the current labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .errors import LabError

__all__ = ["MislabelRanker", "SuggestError"]

_COMPONENTS = ("centre", "disagree", "low_confidence")


class SuggestError(LabError, ValueError):
    """Inputs to the mislabel ranking are inconsistent (lengths, NaN, too few lesions)."""


class MislabelRanker:
    """Rank lesions by how likely their current label is wrong.

    Parameters
    ----------
    n_neighbors : int, default 10
        Neighbours used for the disagreement signal (fewer when there are fewer lesions).
    weights : (float, float, float), default (1, 1, 1)
        Weights of ``centre``, ``disagree`` and ``low_confidence`` in the combined score.

    Attributes
    ----------
    lesion_ids_ : numpy.ndarray
        The lesion ids seen by :meth:`fit`, in input order.
    neighbors_ : numpy.ndarray
        ``(n, k)`` indices of each lesion's nearest neighbours (itself excluded).
    centre_score_ : numpy.ndarray
        ``(n,)`` percentile (0-1) of the normalized distance to the cluster centre.
    centre_ratio_ : numpy.ndarray
        ``(n,)`` distance to the cluster centre divided by the cluster's median distance.

    Examples
    --------
    >>> ranker = MislabelRanker(n_neighbors=10).fit(ids, vectors, clusters)  # doctest: +SKIP
    >>> ranker.rank(current_labels, confidence).head()  # doctest: +SKIP
    """

    def __init__(self, n_neighbors: int = 10, weights: Sequence[float] = (1.0, 1.0, 1.0)):
        self.n_neighbors = n_neighbors
        self.weights = weights

    def fit(self, lesion_ids: Sequence[str], X: np.ndarray, clusters: Sequence[int]) -> MislabelRanker:
        """Learn neighbours and centre distances from the embeddings and the mined clusters.

        Parameters
        ----------
        lesion_ids : sequence of str
            One id per row of ``X``.
        X : numpy.ndarray
            ``(n, d)`` embeddings.
        clusters : sequence of int
            The mined cluster of each lesion.

        Returns
        -------
        MislabelRanker
            ``self``.
        """
        from sklearn.neighbors import NearestNeighbors

        X = np.asarray(X, dtype=np.float32)
        ids = np.asarray(list(lesion_ids), dtype=object)
        clusters = np.asarray(clusters)
        if X.ndim != 2 or len(X) != len(ids) or len(ids) != len(clusters):
            raise SuggestError(
                f"embeddings {X.shape}, {len(ids)} lesion ids and {len(clusters)} clusters "
                "must have one row per lesion"
            )
        if len(ids) < 2:
            raise SuggestError(f"ranking needs at least 2 lesions, got {len(ids)}")
        bad = ~np.isfinite(X).all(axis=1)
        if bad.any():
            raise SuggestError(
                f"embedding of lesion {ids[np.flatnonzero(bad)[0]]} has NaN or infinite values "
                f"({int(bad.sum())} lesions affected)"
            )
        w = np.asarray(self.weights, dtype=float)
        if w.shape != (3,) or (w < 0).any() or w.sum() <= 0:
            raise SuggestError(f"weights must be 3 non-negative numbers, got {self.weights!r}")

        ratio = np.zeros(len(X), dtype=np.float64)
        for c in np.unique(clusters):
            m = clusters == c
            d = np.linalg.norm(X[m] - X[m].mean(axis=0), axis=1)
            med = float(np.median(d))
            ratio[m] = d / med if med > 0 else 0.0
        order = ratio.argsort(kind="stable")
        pct = np.empty(len(X), dtype=np.float64)
        pct[order] = np.arange(len(X)) / max(len(X) - 1, 1)

        k = int(min(self.n_neighbors, len(X) - 1))
        nn = NearestNeighbors(n_neighbors=k + 1).fit(X)
        _, idx = nn.kneighbors(X)
        # drop self (usually column 0, but duplicates can come first): keep k others per row
        is_self = idx == np.arange(len(X))[:, None]
        keep = ~is_self
        keep[~is_self.any(axis=1), -1] = False
        neigh = idx[keep].reshape(len(X), k)
        self.lesion_ids_ = ids
        self.neighbors_ = neigh.astype(np.int64)
        self.centre_ratio_ = ratio
        self.centre_score_ = pct
        self.clusters_ = clusters
        return self

    def components(
        self, labels: Sequence[str], confidence: Sequence[float] | None = None
    ) -> pd.DataFrame:
        """The three signals (0-1) for every lesion, in :meth:`fit` order."""
        self._check_fitted()
        labels = np.asarray(pd.Series(list(labels), dtype="object").fillna("").to_numpy())
        if len(labels) != len(self.lesion_ids_):
            raise SuggestError(
                f"{len(labels)} labels given for {len(self.lesion_ids_)} fitted lesions"
            )
        codes, _ = pd.factorize(labels)
        disagree = (codes[self.neighbors_] != codes[:, None]).mean(axis=1)
        if confidence is None:
            low = np.full(len(labels), 0.5)
        else:
            conf = np.asarray(pd.to_numeric(pd.Series(list(confidence)), errors="coerce"), float)
            if len(conf) != len(labels):
                raise SuggestError(f"{len(conf)} confidences given for {len(labels)} lesions")
            low = np.where(np.isfinite(conf), 1.0 - np.clip(conf, 0.0, 1.0), 0.5)
        return pd.DataFrame(
            {
                "lesion_id": pd.array(self.lesion_ids_, dtype="string"),
                "centre": self.centre_score_,
                "disagree": disagree,
                "low_confidence": low,
            }
        )

    def rank(
        self,
        labels: Sequence[str],
        confidence: Sequence[float] | None = None,
        *,
        exclude: Sequence[str] = (),
        top: int | None = None,
    ) -> pd.DataFrame:
        """Lesions ordered from most to least likely mislabeled.

        Parameters
        ----------
        labels : sequence of str
            The current label of each fitted lesion (pseudo-labels with corrections applied).
        confidence : sequence of float, optional
            Pseudo-label confidence (0-1) per lesion; NaN where unknown.
        exclude : sequence of str
            Lesion ids to leave out (e.g. those a person has already reviewed).
        top : int, optional
            Keep only the first ``top`` rows.

        Returns
        -------
        pandas.DataFrame
            ``lesion_id, score, centre, disagree, low_confidence, reason, position`` where
            ``position`` is the row in the fitted order; sorted by ``score`` descending.
        """
        df = self.components(labels, confidence)
        w = np.asarray(self.weights, dtype=float)
        comp = df[list(_COMPONENTS)].to_numpy()
        df["score"] = comp @ w / w.sum()
        df["position"] = np.arange(len(df))
        if len(exclude):
            df = df[~df["lesion_id"].isin(list(exclude))]
        df = df.sort_values(["score", "lesion_id"], ascending=[False, True], kind="stable")
        if top is not None:
            df = df.head(int(top))
        # the reason shown is the signal that weighs most in the lesion's score
        pos = df["position"].to_numpy()
        strongest = np.argmax(comp[pos] * w, axis=1)
        k = self.neighbors_.shape[1]
        ratio = self.centre_ratio_[pos]
        dis = np.rint(df["disagree"].to_numpy() * k).astype(int)
        conf = 1.0 - df["low_confidence"].to_numpy()
        df["reason"] = [
            f"far from cluster centre ({ratio[i]:.1f}x median)" if j == 0
            else f"{dis[i]}/{k} neighbours disagree" if j == 1
            else f"low confidence ({conf[i]:.2f})"
            for i, j in enumerate(strongest)
        ]  # fmt: skip
        cols = ["lesion_id", "score", *_COMPONENTS, "reason", "position"]
        return df[cols].reset_index(drop=True)

    def _check_fitted(self) -> None:
        if not hasattr(self, "neighbors_"):
            raise SuggestError("MislabelRanker is not fitted; call fit(lesion_ids, X, clusters)")
