"""Intra-patient lesion matching: is lesion *a* of study *s* the same lesion as *b* of study *t*?

For every pair of lesions of one patient in two different studies, three consistency features
are computed (all 0 for identical lesions, growing with disagreement):

- ``embedding_distance``: cosine distance of the two embeddings (0-2);
- ``location_distance``: Euclidean distance of the normalized body locations
  (``location_x/y/z``, DeepLesion's 0-1 body-relative coordinates);
- ``size_log_ratio``: ``|log(long_a / long_b)|`` of the long diameters in mm (lesions grow and
  shrink, so this is a soft cue).

:class:`LesionMatcher` turns them into a match score: a logistic model, learned from pairs
whose identity is known, on the standardized logarithms ``log(feature + eps)`` (same-lesion
distances are orders of magnitude smaller than the others, which a linear model on raw
distances separates poorly). It then decides per study pair: the Hungarian algorithm
(:func:`scipy.optimize.linear_sum_assignment`) pairs each lesion of study *s* with at most one
lesion of study *t* (maximum total score), and an assigned pair is a match when its score
reaches the threshold. Lesions that appear or disappear between studies simply stay unassigned
or fall below the threshold. The threshold is the one that maximizes F1 of these decisions on
the data given to :meth:`LesionMatcher.fit` (validation patients).

Pairs in which a lesion has no embedding are listed with a ``NaN`` embedding distance and
score and are never matched (they still count as misses in the evaluation when their identity
is known).
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from ..params import Interval, StrOptions, validate_params
from .lesion_table import GraphError, embedding_columns, normalize_rows

__all__ = [
    "PAIR_FEATURES",
    "PRIOR_COEF",
    "FEATURE_EPS",
    "LesionMatcher",
    "candidate_pairs",
    "assign_pairs",
    "pair_labels",
    "matching_metrics",
    "split_patients",
]

#: The pair features, in model order.
PAIR_FEATURES: tuple[str, ...] = ("embedding_distance", "location_distance", "size_log_ratio")

#: Added to each feature before its logarithm is taken (the model's input).
FEATURE_EPS: dict[str, float] = {
    "embedding_distance": 1e-4,
    "location_distance": 1e-3,
    "size_log_ratio": 1e-2,
}

#: Logistic coefficients on ``log(feature + eps)`` used when no identities are known
#: (``fit(X, y=None)``): intercept, then one per feature. A hand-set prior, not learned: the
#: score is 0.5 at a cosine distance of 0.03, a location distance of 0.05 and a size log-ratio
#: of 0.7 together (``logit = -log(d_emb / 0.03) - 2 log(d_loc / 0.05) - 0.5 log(d_size / 0.7)``).
PRIOR_COEF: tuple[float, ...] = (
    float(np.log(0.03) + 2 * np.log(0.05) + 0.5 * np.log(0.7)),
    -1.0,
    -2.0,
    -0.5,
)

_META = ("lesion_id", "patient_index", "study_index", "location_x", "location_y", "location_z",
         "long_diameter_px")


def _size_mm(X: pd.DataFrame) -> np.ndarray:
    if "long_diameter_mm" in X.columns:
        return X["long_diameter_mm"].to_numpy(dtype=float)
    mm = X["long_diameter_px"].to_numpy(dtype=float)
    if "spacing_x" in X.columns:
        sp = X["spacing_x"].to_numpy(dtype=float)
        mm = mm * np.where(np.isfinite(sp) & (sp > 0), sp, 1.0)
    return mm


def _pair_index(patient: np.ndarray, study: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (a, b) of all same-patient pairs with ``study[a] < study[b]``, vectorised."""
    n = len(patient)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.lexsort((np.arange(n), study, patient))
    p = patient[order]
    new = np.r_[True, p[1:] != p[:-1]]
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], n]
    end_of = ends[np.cumsum(new) - 1]
    pos = np.arange(n)
    count = end_of - pos - 1
    total = int(count.sum())
    a = np.repeat(pos, count)
    b = a + 1 + (np.arange(total) - np.repeat(np.cumsum(count) - count, count))
    ia, ib = order[a], order[b]
    keep = study[ia] != study[ib]
    return ia[keep], ib[keep]


def candidate_pairs(X: pd.DataFrame, *, chunk: int = 200_000) -> pd.DataFrame:
    """All within-patient cross-study lesion pairs of ``X``, with their features.

    Parameters
    ----------
    X : pandas.DataFrame
        One row per lesion: ``lesion_id``, ``patient_index``, ``study_index``,
        ``location_x/y/z``, ``long_diameter_px`` (or ``long_diameter_mm``; ``spacing_x`` used
        when present) and embedding columns ``e0..e{d-1}`` (NaN rows: no embedding).
    chunk : int
        Pairs per block when computing embedding distances (bounds memory).

    Returns
    -------
    pandas.DataFrame
        ``a``, ``b`` (row positions in ``X``), ``lesion_a``, ``lesion_b``, ``patient_index``,
        ``study_a`` < ``study_b``, then :data:`PAIR_FEATURES` (NaN where an embedding is missing).
    """
    missing = [c for c in _META if c not in X.columns and not (
        c == "long_diameter_px" and "long_diameter_mm" in X.columns)]
    if missing:
        raise GraphError(f"lesion table: missing column(s) {', '.join(missing)}")
    ecols = embedding_columns(X)
    if not ecols:
        raise GraphError("lesion table: no embedding columns e0..e{d-1}")
    patient = X["patient_index"].to_numpy(dtype=np.int64)
    study = X["study_index"].to_numpy(dtype=np.int64)
    ia, ib = _pair_index(patient, study)
    vec = normalize_rows(X[ecols].to_numpy(dtype=np.float32))
    emb = np.empty(len(ia), dtype=np.float32)
    for s in range(0, len(ia), chunk):
        va, vb = vec[ia[s : s + chunk]], vec[ib[s : s + chunk]]
        emb[s : s + chunk] = 1.0 - np.einsum("ij,ij->i", va, vb)
    emb = np.clip(emb, 0.0, 2.0)  # NaN stays NaN
    loc = X[["location_x", "location_y", "location_z"]].to_numpy(dtype=float)
    locd = np.linalg.norm(loc[ia] - loc[ib], axis=1)
    size = np.maximum(_size_mm(X), 1e-3)
    sizer = np.abs(np.log(size[ia] / size[ib]))
    ids = X["lesion_id"].astype(object).to_numpy()
    return pd.DataFrame(
        {
            "a": ia,
            "b": ib,
            "lesion_a": pd.array(ids[ia], dtype="string"),
            "lesion_b": pd.array(ids[ib], dtype="string"),
            "patient_index": patient[ia],
            "study_a": study[ia],
            "study_b": study[ib],
            "embedding_distance": emb.astype(np.float64),
            "location_distance": locd,
            "size_log_ratio": sizer,
        }
    )


def assign_pairs(pairs: pd.DataFrame, score: str = "score") -> np.ndarray:
    """One-to-one assignment per (patient, study pair) maximizing the total score (Hungarian).

    Returns a boolean array over ``pairs``: True for the pairs the assignment keeps. Pairs with
    a NaN score are never assigned.
    """
    from scipy.optimize import linear_sum_assignment

    s = pairs[score].to_numpy(dtype=float)
    out = np.zeros(len(pairs), dtype=bool)
    ok = np.flatnonzero(np.isfinite(s))
    if len(ok) == 0:
        return out
    sub = pairs.iloc[ok]
    key = pd.MultiIndex.from_arrays(
        [sub["patient_index"].to_numpy(), sub["study_a"].to_numpy(), sub["study_b"].to_numpy()]
    )
    gid, _ = pd.factorize(key)
    order = np.argsort(gid, kind="stable")
    g_sorted = gid[order]
    bounds = np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1], True])
    a_all, b_all, s_ok = sub["a"].to_numpy(), sub["b"].to_numpy(), s[ok]
    sizes = np.diff(bounds)
    singles = order[bounds[:-1][sizes == 1]]
    out[ok[singles]] = True
    for lo, hi in zip(bounds[:-1][sizes > 1], bounds[1:][sizes > 1], strict=True):
        rows = order[lo:hi]
        la, ua = pd.factorize(a_all[rows])
        lb, ub = pd.factorize(b_all[rows])
        m = np.full((len(ua), len(ub)), -1.0)
        m[la, lb] = s_ok[rows]
        r, c = linear_sum_assignment(m, maximize=True)
        cell = np.full((len(ua), len(ub)), -1, dtype=np.int64)
        cell[la, lb] = rows
        chosen = cell[r, c]
        out[ok[chosen[chosen >= 0]]] = True
    return out


def pair_labels(pairs: pd.DataFrame, y: Sequence | np.ndarray) -> np.ndarray:
    """Truth of each pair from per-lesion identities ``y`` (aligned with ``X``'s rows).

    Returns float: 1.0 same identity, 0.0 different, NaN where either identity is unknown
    (None/NaN/empty).
    """
    ys = pd.Series(np.asarray(y, dtype=object))
    known = ys.notna() & (ys.astype(str) != "")
    codes, _ = pd.factorize(ys.where(known, None), use_na_sentinel=True)
    a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    out = (codes[a] == codes[b]).astype(float)
    out[(codes[a] < 0) | (codes[b] < 0)] = np.nan
    return out


def _f1_curve(scores: np.ndarray, labels: np.ndarray, n_pos: int) -> tuple[np.ndarray, ...]:
    """Precision, recall, F1 when keeping the top-k scored pairs, for every k."""
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(labels[order] == 1)
    k = np.arange(1, len(order) + 1)
    prec = tp / k
    rec = tp / max(n_pos, 1)
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)
    return order, prec, rec, f1


def matching_metrics(pairs: pd.DataFrame, labels: np.ndarray) -> dict[str, float | int]:
    """Precision, recall, F1 of ``pairs['match']`` and ROC AUC of ``pairs['score']``.

    Pairs with an unknown label (NaN) are left out. Positive pairs that could not be scored
    (a lesion without embedding) count as misses. ``auc`` is over the scored pairs and is NaN
    when they hold only one class.
    """
    from sklearn.metrics import roc_auc_score

    lab = np.asarray(labels, dtype=float)
    known = np.isfinite(lab)
    y = lab[known] == 1
    pred = pairs["match"].to_numpy(dtype=bool)[known]
    score = pairs["score"].to_numpy(dtype=float)[known]
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    scored = np.isfinite(score)
    ys = y[scored]
    auc = float(roc_auc_score(ys, score[scored])) if 0 < ys.sum() < len(ys) else float("nan")
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "auc": auc,
        "n_pairs": int(known.sum()),
        "n_positive_pairs": int(y.sum()),
        "n_predicted_matches": int(pred.sum()),
        "n_unscored_pairs": int((~scored).sum()),
        "n_unscored_positive_pairs": int((~scored & y).sum()),
    }


def _design(pairs: pd.DataFrame, feats: Sequence[str]) -> np.ndarray:
    """The model's input: ``log(feature + eps)`` per feature (NaN stays NaN)."""
    F = pairs[list(feats)].to_numpy(dtype=float)
    eps = np.array([FEATURE_EPS[f] for f in feats])
    return np.log(np.maximum(F, 0.0) + eps)


class LesionMatcher(BaseEstimator):
    """Match a patient's lesions across studies (follow-up): the same lesion at another time.

    Parameters
    ----------
    threshold : float or "auto", default "auto"
        Match-score threshold. ``"auto"``: the one maximizing F1 of the assigned pairs on the
        data given to :meth:`fit` (use validation patients); 0.5 when fitted without labels.
    assignment : bool, default True
        One-to-one Hungarian assignment per study pair before thresholding. ``False``
        thresholds every pair independently (one lesion may then match several).
    C : float, default 1.0
        Inverse regularization strength of the logistic model.
    features : sequence of str, default :data:`PAIR_FEATURES`
        Which pair features the model uses (a subset of :data:`PAIR_FEATURES`).

    Attributes
    ----------
    coef_ : numpy.ndarray
        Logistic weights of the standardized ``log(feature + eps)`` (:data:`FEATURE_EPS`).
    intercept_ : float
    mean_, scale_ : numpy.ndarray
        Feature standardization learned by :meth:`fit`.
    threshold_ : float
        The threshold used by :meth:`predict`.
    fitted_on_ : str
        ``"labels"`` (learned from identities) or ``"prior"`` (``y=None``: :data:`PRIOR_COEF`).
    fit_report_ : dict
        Pairs, positives and F1 on the fit data.

    Examples
    --------
    >>> m = LesionMatcher().fit(X_val, track_ids_val)          # doctest: +SKIP
    >>> pairs = m.predict(X_test)                               # doctest: +SKIP
    >>> pairs.loc[pairs["match"], ["lesion_a", "lesion_b", "score"]]  # doctest: +SKIP
    """

    _parameter_constraints: dict = {
        "threshold": [StrOptions({"auto"}), Interval(Real, 0, 1, closed="both")],
        "assignment": ["boolean"],
        "C": [Interval(Real, 0, None, closed="neither")],
        "features": [list, tuple],
    }

    def __init__(
        self,
        threshold: float | str = "auto",
        assignment: bool = True,
        C: float = 1.0,
        features: Sequence[str] = PAIR_FEATURES,
    ):
        self.threshold = threshold
        self.assignment = assignment
        self.C = C
        self.features = features

    # ---------------------------------------------------------------------------------------
    def _feature_list(self) -> list[str]:
        feats = list(self.features)
        bad = [f for f in feats if f not in PAIR_FEATURES]
        if bad or not feats:
            raise GraphError(
                f"LesionMatcher: features must be a non-empty subset of {PAIR_FEATURES}, got {feats}"
            )
        return feats

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise GraphError("LesionMatcher: call fit before scoring pairs")

    def fit(self, X: pd.DataFrame, y: Sequence | np.ndarray | None = None) -> LesionMatcher:
        """Learn the score and the threshold from lesions with known identities.

        Parameters
        ----------
        X : pandas.DataFrame
            Lesions (see :func:`candidate_pairs`), typically the validation patients.
        y : array-like, optional
            Identity of each lesion (the truth's ``track_id``); None/NaN where unknown. Without
            ``y`` the matcher uses the hand-set :data:`PRIOR_COEF` and threshold 0.5.

        Raises
        ------
        GraphError
            When the labelled pairs hold no positive or no negative pair.
        """
        validate_params(self, GraphError)
        feats = self._feature_list()
        if y is None:
            idx = [PAIR_FEATURES.index(f) for f in feats]
            self.mean_ = np.zeros(len(feats))
            self.scale_ = np.ones(len(feats))
            self.coef_ = np.asarray(PRIOR_COEF[1:], dtype=float)[idx]
            self.intercept_ = float(PRIOR_COEF[0])
            self.threshold_ = 0.5 if self.threshold == "auto" else float(self.threshold)
            self.fitted_on_ = "prior"
            self.fit_report_ = {"fitted_on": "prior"}
            return self
        if len(y) != len(X):
            raise GraphError(f"LesionMatcher.fit: {len(X)} lesions but {len(y)} identities")
        from sklearn.linear_model import LogisticRegression

        pairs = candidate_pairs(X)
        labels = pair_labels(pairs, y)
        feat = _design(pairs, feats)
        use = np.isfinite(labels) & np.isfinite(feat).all(axis=1)
        n_pos = int((labels[use] == 1).sum())
        n_neg = int((labels[use] == 0).sum())
        if n_pos == 0 or n_neg == 0:
            raise GraphError(
                f"LesionMatcher.fit: the {len(X)} lesions give {n_pos} same-lesion and {n_neg} "
                "different-lesion cross-study pairs with embeddings; both are needed (are there "
                "patients with several studies and known track ids?)"
            )
        F = feat[use]
        self.mean_ = F.mean(axis=0)
        self.scale_ = np.where(F.std(axis=0) > 1e-9, F.std(axis=0), 1.0)
        clf = LogisticRegression(C=self.C, max_iter=1000)
        clf.fit((F - self.mean_) / self.scale_, labels[use].astype(int))
        self.coef_ = clf.coef_[0].astype(float)
        self.intercept_ = float(clf.intercept_[0])
        self.fitted_on_ = "labels"
        pairs["score"] = self._score_features(pairs)
        assigned = assign_pairs(pairs) if self.assignment else np.isfinite(pairs["score"])
        if self.threshold == "auto":
            self.threshold_ = self._best_threshold(pairs["score"].to_numpy(), assigned, labels)
        else:
            self.threshold_ = float(self.threshold)
        pairs["match"] = assigned & (pairs["score"].to_numpy() >= self.threshold_)
        report = matching_metrics(pairs, labels)
        self.fit_report_ = {"fitted_on": "labels", "n_lesions": len(X), **report}
        return self

    @staticmethod
    def _best_threshold(scores: np.ndarray, assigned: np.ndarray, labels: np.ndarray) -> float:
        known = np.isfinite(labels)
        n_pos = int((labels[known] == 1).sum())
        cand = assigned & known & np.isfinite(scores)
        s, lab = scores[cand], labels[cand]
        if len(s) == 0:
            return 0.5
        order, _, _, f1 = _f1_curve(s, lab, n_pos)
        k = int(np.argmax(f1))
        ss = s[order]
        # halfway to the next lower score, so that near-ties on new data fall the same way
        return float(ss[k] if k + 1 >= len(ss) else (ss[k] + ss[k + 1]) / 2.0)

    def _score_features(self, pairs: pd.DataFrame) -> np.ndarray:
        F = _design(pairs, self._feature_list())
        z = ((F - self.mean_) / self.scale_) @ self.coef_ + self.intercept_
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-z))

    def score_pairs(self, X: pd.DataFrame) -> pd.DataFrame:
        """:func:`candidate_pairs` of ``X`` plus ``score`` (0-1; NaN without embeddings)."""
        self._check_fitted()
        pairs = candidate_pairs(X)
        pairs["score"] = self._score_features(pairs)
        return pairs

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        """Scored pairs plus ``assigned`` (kept by the assignment) and ``match`` (the decision)."""
        pairs = self.score_pairs(X)
        s = pairs["score"].to_numpy()
        assigned = assign_pairs(pairs) if self.assignment else np.isfinite(s)
        pairs["assigned"] = assigned
        pairs["match"] = assigned & (s >= self.threshold_)
        return pairs

    def score(self, X: pd.DataFrame, y: Sequence | np.ndarray) -> float:
        """F1 of the pair decisions on ``X`` against identities ``y``."""
        pairs = self.predict(X)
        return float(matching_metrics(pairs, pair_labels(pairs, y))["f1"])


def _has_both_classes(X: pd.DataFrame, y: np.ndarray) -> bool:
    if len(X) < 2:
        return False
    pairs = candidate_pairs(X)
    lab = pair_labels(pairs, y)
    ok = np.isfinite(lab) & np.isfinite(pairs["embedding_distance"].to_numpy())
    return bool((lab[ok] == 1).any() and (lab[ok] == 0).any())


def split_patients(
    X: pd.DataFrame,
    y: Sequence | np.ndarray,
    *,
    fit_split: int = 2,
    eval_split: int = 3,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Which lesions fit the matcher and which evaluate it, by patient.

    The rule: the patients of the ``fit_split`` (DeepLesion's validation split, 2) fit and
    those of ``eval_split`` (test, 3) evaluate, each patient in the split most of its lesions
    are in. When either side holds no same-lesion or no different-lesion pair with known
    identities, the patients with known identities are instead split in two halves at random
    (``seed``), and the rule says so.

    Returns
    -------
    (fit_mask, eval_mask, rule)
        Boolean masks over the rows of ``X`` and the rule used, in words.

    Raises
    ------
    GraphError
        When even the fallback has no usable pair on both sides.
    """
    y = np.asarray(y, dtype=object)
    patient = X["patient_index"].to_numpy(dtype=np.int64)
    if "split" in X.columns:
        sp = pd.Series(pd.to_numeric(X["split"], errors="coerce").to_numpy(), index=patient)
        major = sp.groupby(level=0).agg(lambda s: s.mode().iloc[0] if s.notna().any() else -1)
        psplit = major.reindex(patient).to_numpy()
        fit_m, eval_m = psplit == fit_split, psplit == eval_split
        if _has_both_classes(X.loc[fit_m], y[fit_m]) and _has_both_classes(
            X.loc[eval_m], y[eval_m]
        ):
            return fit_m, eval_m, (
                f"fit on split {fit_split} patients, evaluated on split {eval_split} patients"
            )
    known = pd.Series(y).notna().to_numpy() & (pd.Series(y).astype(str) != "").to_numpy()
    pats = np.unique(patient[known])
    rng = np.random.default_rng(seed)
    rng.shuffle(pats)
    half = set(pats[: len(pats) // 2].tolist())
    fit_m = np.isin(patient, list(half)) & known
    eval_m = ~np.isin(patient, list(half)) & np.isin(patient, pats)
    if not (_has_both_classes(X.loc[fit_m], y[fit_m]) and _has_both_classes(
        X.loc[eval_m], y[eval_m]
    )):
        raise GraphError(
            f"cannot fit and evaluate the matcher: neither the split {fit_split}/{eval_split} "
            f"patients nor a random half of the {len(pats)} patients with known identities "
            "give same-lesion and different-lesion cross-study pairs on both sides"
        )
    return fit_m, eval_m, (
        f"split {fit_split} or {eval_split} lacked usable pairs: random patient-level halves "
        f"(seed {seed}) of the {len(pats)} patients with known identities"
    )
