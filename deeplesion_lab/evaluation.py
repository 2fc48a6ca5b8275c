"""Evaluation as the papers measure it: clustering (NMI, purity), retrieval (type precision@k,
location and size differences of retrieved lesions) and 8-class classification with the CVPR 2018
protocol, with baselines (location only, raw intensity, untrained network).

Classification protocol
-----------------------
Every lesion of the manifest gets a role by patient: patients are ordered by a seeded hash and
take roles until 25% of the lesions are ``seed``, the next 25% ``val``, the rest ``test`` (no
patient in two roles). Only labelled lesions count: in DeepLesion the val/test lesions, or every
lesion when a truth file gives the types of train lesions too. A classifier (standardised
features, multinomial logistic regression, ``C`` chosen on ``val``) is fitted on the seeds and its
accuracy measured on ``test``. Roles depend only on the manifest's patients, so ``embed``,
whose sampler may use the types of seed and val lesions, never sees a test lesion's type.

On the real DeepLesion test split (``DL_info_test.csv``, metadata only) the location-only
baseline with this protocol gives about 0.61 (mean over split seeds), against 0.597 in the paper.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import LabError
from .lesion_types import COARSE_TYPES

__all__ = [
    "PAPER_LOCATION_ONLY_ACCURACY",
    "EvaluationResult",
    "ProtocolError",
    "protocol_split",
    "purity",
    "nmi",
    "classification_accuracy",
    "retrieval_scores",
    "mining_scores",
    "location_features",
    "raw_intensity_features",
    "true_types",
    "aligned_embeddings",
    "suggest_scores",
    "evaluate_run",
    "format_table",
]

#: 8-class accuracy of location-only features on DeepLesion in Yan et al., CVPR 2018.
PAPER_LOCATION_ONLY_ACCURACY = 0.597

ROLES = ("seed", "val", "test")


class ProtocolError(LabError, ValueError):
    """Too few labelled lesions (or roles) for an evaluation; the evaluation is skipped."""


def protocol_split(
    patients: np.ndarray, seed: int = 0, fractions: tuple[float, float, float] = (0.25, 0.25, 0.5)
) -> np.ndarray:
    """Role (``"seed"``, ``"val"`` or ``"test"``) of each lesion, assigned by patient.

    Patients are ordered by a hash of ``(seed, patient)``; whole patients fill ``seed`` until
    ``fractions[0]`` of the lesions are in it, then ``val`` until ``fractions[0] + fractions[1]``.
    """
    p = np.asarray(patients, dtype=np.int64)
    if len(p) == 0:
        return np.array([], dtype=object)
    uniq, counts = np.unique(p, return_counts=True)
    keys = [hashlib.sha1(f"{seed}:{int(u)}".encode()).hexdigest() for u in uniq]
    order = np.argsort(keys, kind="stable")
    before = np.concatenate([[0], np.cumsum(counts[order])[:-1]]) / len(p)
    f0, f1 = fractions[0], fractions[0] + fractions[1]
    role_sorted = np.where(before < f0, "seed", np.where(before < f1, "val", "test"))
    role_of = dict(zip(uniq[order].tolist(), role_sorted.tolist(), strict=True))
    return np.array([role_of[int(x)] for x in p], dtype=object)


def purity(true: np.ndarray, pred: np.ndarray) -> float:
    """Share of lesions whose cluster's majority true type is their own type."""
    t, c = np.asarray(true), np.asarray(pred)
    if len(t) == 0:
        raise LabError("purity of 0 lesions is undefined")
    tab = pd.crosstab(c, t)
    return float(tab.max(axis=1).sum() / len(t))


def nmi(true: np.ndarray, pred: np.ndarray) -> float:
    """Normalised mutual information (arithmetic normalisation)."""
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(np.asarray(true), np.asarray(pred)))


def _check_finite(X: np.ndarray, what: str, ids=None) -> np.ndarray:
    from .mining import check_features

    return check_features(X, what, ids)


def classification_accuracy(
    features: np.ndarray,
    types: np.ndarray,
    roles: np.ndarray,
    Cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0),
    what: str = "features",
) -> dict:
    """The protocol's 8-class accuracy of ``features``.

    Parameters
    ----------
    features : (N, D) array
    types : (N,) int array
        Type codes; lesions with codes outside 1-8 are ignored.
    roles : (N,) array of "seed" / "val" / "test"
    Cs : tuple of float
        Inverse regularisation strengths tried; the best on ``val`` is kept.

    Returns
    -------
    dict
        ``accuracy`` (test), ``val_accuracy``, ``C``, ``n_seed``, ``n_val``, ``n_test``.

    Raises
    ------
    LabError
        NaN features, or too few labelled lesions in a role (fewer than 2 types among the seeds,
        or no val/test lesion).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = _check_finite(features, what)
    t = np.asarray(types, dtype=np.int64)
    r = np.asarray(roles, dtype=object)
    lab = np.isin(t, list(COARSE_TYPES))
    tr, va, te = (lab & (r == k) for k in ROLES)
    if len(np.unique(t[tr])) < 2 or va.sum() == 0 or te.sum() == 0:
        raise ProtocolError(
            f"classification needs labelled lesions of at least 2 types among the seeds and some "
            f"in val and test; got {int(tr.sum())} seed ({len(np.unique(t[tr]))} types), "
            f"{int(va.sum())} val, {int(te.sum())} test"
        )
    best = None
    for C in Cs:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000))
        model.fit(X[tr], t[tr])
        acc = float(model.score(X[va], t[va]))
        if best is None or acc > best[0]:
            best = (acc, C, model)
    val_acc, C, model = best
    return {
        "accuracy": float(model.score(X[te], t[te])),
        "val_accuracy": val_acc,
        "C": C,
        "n_seed": int(tr.sum()),
        "n_val": int(va.sum()),
        "n_test": int(te.sum()),
    }


def location_features(manifest: pd.DataFrame) -> np.ndarray:
    """Normalised lesion location ``(N, 3)``: the paper's location-only baseline."""
    return manifest[["location_x", "location_y", "location_z"]].to_numpy(dtype=np.float64)


def raw_intensity_features(patches: np.ndarray, grid: int = 8) -> np.ndarray:
    """Raw-intensity baseline: each patch channel averaged down to ``grid`` x ``grid``."""
    p = np.asarray(patches, dtype=np.float32)
    n, c, h, w = p.shape
    if h % grid or w % grid:
        raise LabError(f"patch size {h}x{w} is not a multiple of the grid {grid}")
    return p.reshape(n, c, grid, h // grid, grid, w // grid).mean((3, 5)).reshape(n, -1) / 255.0


def retrieval_scores(
    X: np.ndarray,
    types: np.ndarray,
    patients: np.ndarray,
    locations: np.ndarray,
    sizes_mm: np.ndarray,
    queries: np.ndarray | None = None,
    ks: tuple[int, ...] = (5, 10),
) -> dict:
    """Retrieval of labelled lesions among labelled lesions.

    Parameters
    ----------
    X : (N, D) embeddings
    types : (N,) int, codes outside 1-8 are unlabelled (neither queried nor retrieved)
    patients, locations, sizes_mm : per lesion
    queries : (N,) bool, optional
        Which labelled lesions query (default all labelled).
    ks : tuple of int

    Returns
    -------
    dict
        ``type_precision_at_{k}`` (any patient but the query itself),
        ``type_precision_at_{k}_other_patients``, ``location_difference_at_{k0}`` (mean distance
        in normalised coordinates to the retrieved lesions), ``size_difference_at_{k0}`` (mean
        relative difference of long diameters, ``|a-b| / max(a, b)``), chance levels from
        random retrieval, ``n_queries``.
    """
    from .retrieval import LesionIndex

    t = np.asarray(types, dtype=np.int64)
    lab = np.isin(t, list(COARSE_TYPES))
    q = lab if queries is None else (lab & np.asarray(queries, dtype=bool))
    if q.sum() == 0 or lab.sum() < 2:
        raise ProtocolError("retrieval needs at least 2 labelled lesions and 1 query")
    index = LesionIndex().fit(X, np.arange(len(X)).astype(str), patients)
    qpos = np.flatnonzero(q)
    kmax = max(ks)
    out: dict = {"n_queries": int(len(qpos))}
    for restrict, suffix in ((None, ""), ("other_patients", "_other_patients")):
        d, nb = index.kneighbors(qpos, kmax, restrict=restrict, candidates=lab)
        valid = nb >= 0
        same = (t[np.where(valid, nb, 0)] == t[qpos][:, None]) & valid
        for k in ks:
            denom = valid[:, :k].sum(1)
            ok = denom > 0
            out[f"type_precision_at_{k}{suffix}"] = (
                float((same[:, :k].sum(1)[ok] / denom[ok]).mean()) if ok.any() else float("nan")
            )
        if restrict is None:
            k0 = min(ks)
            nbk = np.where(valid[:, :k0], nb[:, :k0], 0)
            loc = np.linalg.norm(locations[nbk] - locations[qpos][:, None], axis=2)
            s_q, s_n = sizes_mm[qpos][:, None], sizes_mm[nbk]
            rel = np.abs(s_q - s_n) / np.maximum(np.maximum(s_q, s_n), 1e-9)
            out[f"location_difference_at_{k0}"] = float(loc[valid[:, :k0]].mean())
            out[f"size_difference_at_{k0}"] = float(rel[valid[:, :k0]].mean())
    # chance: a random labelled lesion
    codes, counts = np.unique(t[lab], return_counts=True)
    frac = dict(zip(codes.tolist(), (counts / counts.sum()).tolist(), strict=True))
    out["chance_type_precision"] = float(np.mean([frac[int(x)] for x in t[qpos]]))
    rng = np.random.default_rng(0)
    lab_pos = np.flatnonzero(lab)
    rand = lab_pos[rng.integers(0, len(lab_pos), (len(qpos), min(ks)))]
    out["chance_location_difference"] = float(
        np.linalg.norm(locations[rand] - locations[qpos][:, None], axis=2).mean()
    )
    s_q, s_r = sizes_mm[qpos][:, None], sizes_mm[rand]
    out["chance_size_difference"] = float(
        (np.abs(s_q - s_r) / np.maximum(np.maximum(s_q, s_r), 1e-9)).mean()
    )
    return out


def mining_scores(
    clusters: np.ndarray, labels: np.ndarray, true: np.ndarray, unseen: np.ndarray | None = None
) -> dict:
    """NMI and purity of clusters, and agreement of pseudo-label names, against true types.

    Parameters
    ----------
    clusters : (N,) int
    labels : (N,) str, pseudo-label type names
    true : (N,) int, true type codes (outside 1-8: not evaluated)
    unseen : (N,) bool, optional
        Lesions whose type the mining never saw (train lesions typed only by a truth file);
        their label agreement is reported separately.
    """
    t = np.asarray(true, dtype=np.int64)
    lab = np.isin(t, list(COARSE_TYPES))
    if lab.sum() == 0:
        raise ProtocolError("no lesion of known type to evaluate the clusters against")
    c = np.asarray(clusters)[lab]
    names = np.array([COARSE_TYPES[int(x)] for x in t[lab]], dtype=object)
    lbl = np.asarray(labels, dtype=object)[lab]
    counts = pd.Series(names).value_counts()
    out = {
        "nmi": nmi(t[lab], c),
        "purity": purity(t[lab], c),
        "label_accuracy": float((lbl == names).mean()),
        "chance_label_accuracy": float(counts.iloc[0] / counts.sum()),
        "n_evaluated": int(lab.sum()),
        "n_clusters": int(len(np.unique(np.asarray(clusters)))),
    }
    if unseen is not None:
        u = np.asarray(unseen, dtype=bool)[lab]
        if u.any():
            out["label_accuracy_unseen"] = float((lbl[u] == names[u]).mean())
            out["nmi_unseen"] = nmi(t[lab][u], c[u])
            out["n_unseen"] = int(u.sum())
    return out


def suggest_scores(
    lesion_ids: np.ndarray,
    X: np.ndarray,
    clusters: np.ndarray,
    labels: np.ndarray,
    confidence: np.ndarray,
    true: np.ndarray,
    ks: tuple[int, ...] = (20, 50, 100),
) -> dict:
    """How well "suggest next" (:class:`~deeplesion_lab.suggest.MislabelRanker`) puts the wrong
    pseudo-labels first, against a random order and confident learning
    (:func:`~deeplesion_lab.suggest.confident_learning_scores`).

    A label is wrong when it is not the lesion's true coarse type; only lesions of known true
    type are scored (the rankings are computed on all lesions, as the lab shows them).

    Returns
    -------
    dict
        ``auroc``, ``precision_at_{k}``, ``reviews_to_half`` of the ranker; the same with a
        ``confident_learning_`` prefix; ``random_auroc`` (0.5), ``random_precision`` (the share
        of wrong labels) and ``random_reviews_to_half``; ``n``, ``n_wrong``.

    Raises
    ------
    ProtocolError
        No lesion of known true type, or every label (or none) is wrong.
    """
    from .suggest import MislabelRanker, confident_learning_scores, ranking_scores

    t = np.asarray(true, dtype=np.int64)
    lab = np.isin(t, list(COARSE_TYPES))
    if lab.sum() < 2:
        raise ProtocolError("suggest evaluation needs at least 2 lesions of known true type")
    names = np.array([COARSE_TYPES.get(int(x), "") for x in t], dtype=object)
    wrong = np.asarray(labels, dtype=object) != names
    if wrong[lab].all() or not wrong[lab].any():
        raise ProtocolError(
            f"suggest evaluation needs right and wrong labels; {int(wrong[lab].sum())} of "
            f"{int(lab.sum())} are wrong"
        )
    ranked = MislabelRanker().fit(lesion_ids, X, clusters).rank(labels, confidence)
    score = np.empty(len(t))
    score[ranked["position"].to_numpy()] = ranked["score"].to_numpy()
    ours = ranking_scores(score[lab], wrong[lab], ks)
    cl = ranking_scores(confident_learning_scores(X, labels)["score"].to_numpy()[lab],
                        wrong[lab], ks)
    out = {"n": ours["n"], "n_wrong": ours["n_wrong"], "auroc": ours["auroc"]}
    for k in ks:
        out[f"precision_at_{k}"] = ours[f"precision_at_{k}"]
    out["reviews_to_half"] = ours["reviews_to_half"]
    out["confident_learning_auroc"] = cl["auroc"]
    for k in ks:
        out[f"confident_learning_precision_at_{k}"] = cl[f"precision_at_{k}"]
    out["confident_learning_reviews_to_half"] = cl["reviews_to_half"]
    out["random_auroc"] = 0.5
    out["random_precision"] = ours["wrong_rate"]
    out["random_reviews_to_half"] = ours["random_reviews_to_half"]
    return out


def true_types(manifest: pd.DataFrame, truth: str | Path | None = None) -> tuple[np.ndarray, str]:
    """Type codes per manifest lesion: the truth file's where it has the lesion (joined on
    ``lesion_id``), else the manifest's. Returns ``(codes, source description)``."""
    codes = manifest["coarse_type"].to_numpy(dtype=np.int64).copy()
    if truth is None:
        return codes, "manifest (val/test types; train lesions unlabelled)"
    path = Path(truth)
    if not path.is_file():
        raise LabError(f"{path}: truth file not found")
    try:
        t = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as exc:  # pyarrow/pandas raise many kinds
        raise LabError(f"{path}: not a readable truth table ({exc})") from exc
    missing = [c for c in ("lesion_id", "coarse_type") if c not in t.columns]
    if missing:
        raise LabError(f"{path}: truth file lacks column(s) {', '.join(missing)}")
    t = t[t["lesion_id"].notna()].drop_duplicates("lesion_id")
    m = dict(zip(t["lesion_id"].astype(str), t["coarse_type"].astype(int), strict=True))
    ids = manifest["lesion_id"].astype(str).to_numpy()
    found = np.array([i in m for i in ids])
    if not found.any():
        raise LabError(f"{path}: no lesion_id of the truth file is in the manifest")
    codes[found] = [m[i] for i in ids[found]]
    return codes, f"truth file {path} ({int(found.sum())} of {len(ids)} lesions)"


@dataclass
class EvaluationResult:
    """What :func:`evaluate_run` computed, what it skipped and why."""

    metrics: dict
    skipped: list[str] = field(default_factory=list)

    @property
    def table(self) -> str:
        return format_table(self.metrics, self.skipped)


def aligned_embeddings(run, ids: np.ndarray) -> np.ndarray | None:
    """The run's embeddings in the order of ``ids`` (None when the run has none yet).

    Raises
    ------
    LabError
        A lesion of ``ids`` has no embedding, or an embedding is not finite (file and lesion
        named).
    """
    if not run.embeddings.is_file():
        return None
    eids, vecs = run.load_embeddings()
    pos = {str(i): k for k, i in enumerate(eids)}
    missing = [i for i in ids if i not in pos]
    if missing:
        raise LabError(
            f"{run.embeddings}: {len(missing)} manifest lesion(s) have no embedding "
            f"(e.g. {missing[0]}); re-run `deeplesion-lab embed`"
        )
    return _check_finite(vecs[[pos[i] for i in ids]], f"{run.embeddings}", ids)


def evaluate_run(
    run_dir: str | Path,
    truth: str | Path | None = None,
    manifest: str | Path | None = None,
    *,
    progress: bool = False,
    seed: int = 0,
) -> EvaluationResult:
    """Evaluate whatever the run has: embeddings, pseudo-labels, images (for baselines).

    Parameters
    ----------
    run_dir : path
        The run directory; created (``run.json``) from ``manifest`` if it does not exist.
    truth : path, optional
        Truth file (``lesion_id``, ``coarse_type``); default the run's recorded truth.
    manifest : path, optional
        Manifest; default the run's. Needed to start a metadata-only evaluation.
    seed : int, default 0
        Seed of the protocol's patient split.

    Returns
    -------
    EvaluationResult
        ``metrics`` (nested; the caller writes them with :meth:`RunDir.update_metrics`) and the
        list of skipped evaluations with reasons.
    """
    from .run import RunDir

    run = RunDir(run_dir)
    if manifest is not None:
        run.init(manifest, truth)
    info = run.info()
    truth = truth if truth is not None else info.get("truth")
    df = run.load_manifest()  # a partial download's run: the lesions with a key slice
    if len(df) < 2:
        raise LabError(f"{run.manifest_path()}: {len(df)} lesion(s); evaluation needs at least 2")
    ids = df["lesion_id"].astype(str).to_numpy()
    types, source = true_types(df, truth)
    roles = protocol_split(df["patient_index"].to_numpy(), seed)
    labelled = np.isin(types, list(COARSE_TYPES))
    manifest_known = np.isin(df["coarse_type"].to_numpy(dtype=np.int64), list(COARSE_TYPES))
    skipped: list[str] = []
    metrics: dict = {
        "evaluation": {
            "type_source": source,
            "n_lesions": int(len(df)),
            "n_labelled": int(labelled.sum()),
            "protocol": "seed/val/test 25/25/50% of lesions by patient; logistic regression, "
                        "C chosen on val; accuracy on test",
            "protocol_seed": seed,
        },
        "classification": {},
    }
    cls = metrics["classification"]

    def classify(name: str, feats: np.ndarray) -> None:
        try:
            res = classification_accuracy(feats, types, roles, what=name)
        except ProtocolError as exc:
            skipped.append(f"classification.{name}_accuracy: {exc}")
            return
        cls[f"{name}_accuracy"] = res["accuracy"]
        cls[f"{name}_C"] = res["C"]
        for k in ("n_seed", "n_val", "n_test"):
            cls[k] = res[k]

    loc = location_features(df)
    classify("location_only", loc)
    cls["paper_location_only_accuracy"] = PAPER_LOCATION_ONLY_ACCURACY

    # embeddings (no images needed)
    vecs = aligned_embeddings(run, ids)
    if vecs is None:
        skipped.append("classification.embedding_accuracy, retrieval.*: no embeddings.parquet "
                       "(run `deeplesion-lab embed`)")
    else:
        classify("embedding", vecs)
        sizes = (df["long_diameter_px"] * df["spacing_x"]).to_numpy(dtype=np.float64)
        try:
            metrics["retrieval"] = retrieval_scores(
                vecs, types, df["patient_index"].to_numpy(), loc, sizes,
                queries=roles != "seed",
            )
        except ProtocolError as exc:
            skipped.append(f"retrieval.*: {exc}")

    # pseudo-labels
    if run.pseudo_labels.is_file():
        pl = run.load_pseudo_labels()
        pl = pl.set_index(pl["lesion_id"].astype(str))
        have = np.array([i in pl.index for i in ids])
        if not have.any():
            skipped.append(f"mining.*: {run.pseudo_labels} has none of the manifest's lesions")
        else:
            sub = pl.loc[ids[have]]
            try:
                metrics["mining"] = mining_scores(
                    sub["cluster"].to_numpy(), sub["label"].astype(str).to_numpy(), types[have],
                    unseen=~manifest_known[have],
                )
            except ProtocolError as exc:
                skipped.append(f"mining.*: {exc}")
            if vecs is None:
                skipped.append("suggest.*: no embeddings.parquet")
            elif not have.all():
                skipped.append(f"suggest.*: {int((~have).sum())} lesion(s) have no pseudo-label")
            else:
                try:
                    metrics["suggest"] = suggest_scores(
                        ids, vecs, sub["cluster"].to_numpy(), sub["label"].astype(str).to_numpy(),
                        sub["confidence"].to_numpy(dtype=np.float64), types,
                    )
                except ProtocolError as exc:
                    skipped.append(f"suggest.*: {exc}")
    else:
        skipped.append("mining.nmi, mining.purity: no pseudo_labels.parquet "
                       "(run `deeplesion-lab mine`)")

    # baselines from images
    n_img = int(df["has_image"].sum()) if df.attrs.get("images_root") else 0
    has_images = n_img == len(df)
    if not has_images:
        skipped.append(
            "classification.raw_intensity_accuracy, classification.untrained_accuracy: "
            f"{n_img} of {len(df)} key slices on disk (metadata only)"
        )
    else:
        from .embedding import LesionEmbedder, PatchConfig, build_patches

        ckpt = run.embedder
        if ckpt.is_file():
            emb = LesionEmbedder.load(ckpt)
            config = emb.patch_config_
        else:
            emb, config = None, PatchConfig()
        patches = build_patches(df, config, cache_dir=run.patch_cache,
                                progress=progress)
        classify("raw_intensity", raw_intensity_features(patches.patches))
        if emb is None:
            skipped.append("classification.untrained_accuracy: no embedder.pt (run `embed`)")
        else:
            params = emb.get_params()
            params.update(pretrained=None, progress=progress)
            untrained = LesionEmbedder(**params).initialize(config)
            classify("untrained", untrained.transform(patches))
    return EvaluationResult(metrics=metrics, skipped=skipped)


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def format_table(metrics: dict, skipped: list[str] | None = None) -> str:
    """A plain-text table of the main figures."""
    rows: list[tuple[str, str]] = []
    c = metrics.get("classification", {})
    if c:
        rows.append((f"classification, 8-class accuracy (test n={c.get('n_test', '?')})", ""))
        for key, label in [
            ("embedding_accuracy", "trained embedding"),
            ("untrained_accuracy", "untrained network"),
            ("raw_intensity_accuracy", "raw intensity"),
            ("location_only_accuracy", "location only"),
        ]:
            if key in c:
                extra = (
                    f"   (paper, real DeepLesion: {PAPER_LOCATION_ONLY_ACCURACY:.3f})"
                    if key == "location_only_accuracy" else ""
                )
                rows.append((f"  {label}", _fmt(c[key]) + extra))
    r = metrics.get("retrieval", {})
    if r:
        rows.append((f"retrieval (queries n={r.get('n_queries')})", ""))
        for key in ("type_precision_at_5", "type_precision_at_10",
                    "type_precision_at_5_other_patients", "chance_type_precision",
                    "location_difference_at_5", "chance_location_difference",
                    "size_difference_at_5", "chance_size_difference"):
            if key in r:
                rows.append((f"  {key}", _fmt(r[key])))
    m = metrics.get("mining", {})
    if m:
        rows.append((f"mining (K={m.get('n_clusters')}, lesions n={m.get('n_evaluated')})", ""))
        for key in ("nmi", "purity", "label_accuracy", "label_accuracy_unseen", "nmi_unseen",
                    "chance_label_accuracy"):
            if key in m:
                rows.append((f"  {key}", _fmt(m[key])))
    sg = metrics.get("suggest", {})
    if sg:
        rows.append((f"suggest next (wrong labels {sg.get('n_wrong')} of {sg.get('n')})", ""))
        for key in ("auroc", "precision_at_50", "reviews_to_half", "confident_learning_auroc",
                    "confident_learning_precision_at_50", "confident_learning_reviews_to_half",
                    "random_precision", "random_reviews_to_half"):
            if key in sg:
                rows.append((f"  {key}", _fmt(sg[key])))
    width = max((len(a) for a, _ in rows), default=10) + 2
    lines = [f"{a:<{width}}{b}" for a, b in rows]
    for s in skipped or []:
        lines.append(f"skipped: {s}")
    return "\n".join(lines)
