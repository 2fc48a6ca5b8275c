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

__all__ = [
    "MislabelRanker",
    "SuggestError",
    "confident_learning_scores",
    "ranking_scores",
]

_COMPONENTS = ("centre", "disagree", "low_confidence")


class SuggestError(LabError, ValueError):
    """Inputs to the mislabel ranking are inconsistent (lengths, NaN, too few lesions)."""


class MislabelRanker:
    """Rank lesions by how likely their current label is wrong.

    Parameters
    ----------
    n_neighbors : int, default 10
        Neighbours used for the disagreement signal (fewer when there are fewer lesions).
    weights : (float, float, float), default (0, 2, 1)
        Weights of ``centre``, ``disagree`` and ``low_confidence`` in the combined score. The
        default leaves ``centre`` out: on the demo's mined pseudo-labels it was the weakest
        signal (AUROC of "the label is wrong" 0.57-0.59), and (0, 2, 1) ranked wrong labels
        better than (1, 1, 1) (AUROC 0.78-0.83 against 0.71-0.79; ``bench/results/embedding.md``).

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

    def __init__(self, n_neighbors: int = 10, weights: Sequence[float] = (0.0, 2.0, 1.0)):
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
        ]
        cols = ["lesion_id", "score", *_COMPONENTS, "reason", "position"]
        return df[cols].reset_index(drop=True)

    def _check_fitted(self) -> None:
        if not hasattr(self, "neighbors_"):
            raise SuggestError("MislabelRanker is not fitted; call fit(lesion_ids, X, clusters)")


def confident_learning_scores(
    X: np.ndarray, labels: Sequence[str], *, n_folds: int = 5, seed: int = 0
) -> pd.DataFrame:
    """Confident learning (Northcutt, Jiang and Chuang, JAIR 2021) on the embeddings: a
    baseline for "suggest next", written from the paper (no cleanlab dependency).

    Out-of-sample class probabilities come from ``n_folds``-fold cross-validated logistic
    regression of the current labels on the embeddings. The per-class threshold ``t_j`` is the
    mean predicted probability of class ``j`` over the lesions labelled ``j``; a lesion is in the
    confident joint's off-diagonal (``issue``) when some other class ``j`` reaches ``t_j`` and
    has the highest probability among the classes that do. Lesions are ranked issues first,
    then by self-confidence (the probability of their own label), lowest first.

    Parameters
    ----------
    X : (n, d) array
        Embeddings.
    labels : sequence of str
        Current label of each lesion.
    n_folds : int, default 5
        Cross-validation folds (fewer when a label has fewer lesions).
    seed : int, default 0

    Returns
    -------
    pandas.DataFrame
        ``self_confidence``, ``issue`` (bool) and ``score`` (higher = more suspicious, 0-2), one
        row per lesion in input order.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(X, dtype=np.float64)
    lab = np.asarray(pd.Series(list(labels), dtype="object").fillna("").to_numpy())
    if X.ndim != 2 or len(X) != len(lab):
        raise SuggestError(f"embeddings {X.shape} and {len(lab)} labels: one row per lesion")
    if not np.isfinite(X).all():
        raise SuggestError("embeddings have NaN or infinite values")
    codes, names = pd.factorize(lab)
    n_cls = len(names)
    probs = np.zeros((len(X), max(n_cls, 1)))
    if n_cls < 2:
        probs[:, 0] = 1.0
    else:
        counts = np.bincount(codes, minlength=n_cls)
        folds = int(min(n_folds, max(2, counts.max())))
        # classes too small for stratification still go into some fold
        skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "least populated class has only n members"
            splits = list(skf.split(X, codes))
        for tr, te in splits:
            present = np.unique(codes[tr])
            if len(present) < 2:
                probs[te, present] = 1.0
                continue
            model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
            model.fit(X[tr], codes[tr])
            probs[np.ix_(te, present)] = model.predict_proba(X[te])
    own = probs[np.arange(len(X)), codes]
    thresh = np.array([
        probs[codes == j, j].mean() if (codes == j).any() else 1.0 for j in range(n_cls)
    ])
    above = probs >= thresh[None, :]
    masked = np.where(above, probs, -1.0)
    best = masked.argmax(1)
    issue = above.any(1) & (best != codes)
    score = issue.astype(float) + (1.0 - own)
    return pd.DataFrame({"self_confidence": own, "issue": issue, "score": score})


def ranking_scores(
    score: np.ndarray, wrong: np.ndarray, ks: Sequence[int] = (20, 50, 100)
) -> dict:
    """How well a suspicion ``score`` puts wrong labels first.

    Parameters
    ----------
    score : (n,) array
        Higher = reviewed earlier.
    wrong : (n,) bool array
        Whether each label is wrong (from a truth file).
    ks : sequence of int
        Cut-offs for precision.

    Returns
    -------
    dict
        ``auroc`` (NaN when all or none are wrong), ``precision_at_{k}`` (over the first
        ``min(k, n)``), ``reviews_to_half`` (lesions reviewed in this order until half of the wrong
        labels have been seen), ``random_reviews_to_half`` (the expected figure for a random
        order), ``n``, ``n_wrong``, ``wrong_rate``.
    """
    from sklearn.metrics import roc_auc_score

    s = np.asarray(score, dtype=np.float64)
    w = np.asarray(wrong, dtype=bool)
    if s.shape != w.shape or s.ndim != 1:
        raise SuggestError(f"score {s.shape} and wrong {w.shape} must be the same 1-D shape")
    if len(s) == 0 or not np.isfinite(s).all():
        raise SuggestError("ranking needs at least one lesion and finite scores")
    n, nw = len(s), int(w.sum())
    order = np.argsort(-s, kind="stable")
    out: dict = {"n": n, "n_wrong": nw, "wrong_rate": nw / n}
    out["auroc"] = float(roc_auc_score(w, s)) if 0 < nw < n else float("nan")
    for k in ks:
        kk = min(int(k), n)
        out[f"precision_at_{k}"] = float(w[order[:kk]].mean())
    half = int(np.ceil(nw / 2))
    if nw:
        out["reviews_to_half"] = int(np.flatnonzero(np.cumsum(w[order]) >= half)[0] + 1)
        # expected position of the half-th wrong one among n in random order
        out["random_reviews_to_half"] = float(half * (n + 1) / (nw + 1))
    return out
