"""Build everything of the lesion graph for a run directory (what ``deeplesion-lab graph`` does).

Writes into ``RUN_DIR/graph/`` (each file atomically):

- ``nodes.parquet``, ``edges.parquet``: the :class:`~deeplesion_lab.graph.LesionGraph`;
- ``pairs.parquet``: every within-patient cross-study pair (``lesion_a``, ``lesion_b``; ``a``
  and ``b`` are their row positions in the manifest) with its features, score, ``assigned``
  and ``match``;
- ``tracks.parquet``: :func:`~deeplesion_lab.graph.build_tracks` (the timeline table);
- ``proposals.parquet``: ranked unannotated-lesion proposals (when detections were given);
- ``detections.csv``: what the run's detector found when ``graph`` ran it (key slices when no
  detections were given, and the neighbouring slices);
- ``graph.json``: settings, the matcher's coefficients and threshold, counts and messages;

and merges ``matching`` and ``missing_annotations`` into ``RUN_DIR/metrics.json``
(``matching.f1`` of the matcher with all cues, and ``matching.location_only_f1`` /
``matching.appearance_only_f1`` of the single-cue baselines on the same patients, all three
by patient-level cross-fitting, :func:`crossfit_matching`; ``matching.split_*`` the same on the
official validation/test split, which the tracks' matcher is fitted on).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import write_csv, write_json, write_parquet
from ..run import LEGACY_PREDICTIONS_ALL, RunDir
from .lesion_graph import LesionGraph, build_lesion_graph
from .lesion_table import GraphError, LesionTable, lesion_table
from .matching import LesionMatcher, matching_metrics, pair_labels, split_patients
from .missing import (
    evaluate_proposals,
    proposal_manifest,
    proposal_similarity,
    propose_missing,
    rank_proposals,
)
from .tracks import build_tracks
from .truth import read_truth, track_ids_for

__all__ = ["GraphResult", "build_run_graph", "embed_proposals", "run_detector"]


@dataclass
class GraphResult:
    """What :func:`build_run_graph` made."""

    graph: LesionGraph
    pairs: pd.DataFrame
    tracks: pd.DataFrame
    proposals: pd.DataFrame | None
    metrics: dict
    messages: list[str] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)


def embed_proposals(
    run: RunDir, proposals: pd.DataFrame, manifest: pd.DataFrame, *, progress: bool = False
) -> tuple[np.ndarray | None, str]:
    """Embed the proposals with the run's embedder (``RUN_DIR/embedder.pt``).

    Returns ``(vectors or None, message)``; ``None`` with the reason when it cannot be done
    (no embedder, no images), never an exception for those.
    """
    ckpt = run.embedder
    if not len(proposals):
        return np.zeros((0, 1), np.float32), "no proposals to embed"
    if not ckpt.is_file():
        return None, f"{ckpt} not found: proposals ranked without embedding similarity"
    from ..embedding import LesionEmbedder, build_patches
    from ..errors import LabError

    try:
        emb = LesionEmbedder.load(ckpt)
        rows = proposal_manifest(proposals, manifest)
        rows.attrs = dict(manifest.attrs)
        patches = build_patches(rows, emb.patch_config_, progress=progress)
        vec = emb.transform(patches)
    except LabError as exc:
        return None, f"proposals not embedded ({exc}): ranked without embedding similarity"
    return vec, f"embedded {len(vec)} proposals with {ckpt.name}"


def _has_detector(run: RunDir) -> bool:
    return run.detector_dir.is_dir() and any(run.detector_dir.glob("*/model.pt"))


def _resolve_predictions(run: RunDir, predictions: str | Path | None) -> tuple[Path | None, str]:
    if predictions is not None:
        return Path(predictions), f"detections: {predictions}"
    from ..detection.workflow import ENSEMBLE_MODEL

    for default in (run.predictions_file(ENSEMBLE_MODEL, "all"),
                    run.predictions_file("pseudo", "all"), run.predictions_file("single", "all"),
                    run.detector_dir / LEGACY_PREDICTIONS_ALL):
        if default.is_file():
            return default, f"detections: {default} (found in the run; --predictions overrides)"
    if _has_detector(run):
        return None, "detections: none given; running the run's detector on the key slices"
    return None, (
        "missing-annotation mining skipped: no --predictions given and no detector in "
        f"{run.detector_dir}; train one (`deeplesion-lab train-detector --run {run.path}`), run "
        "`deeplesion-lab detect ... --split all`, then pass --predictions PRED.csv"
    )


def run_detector(
    run: RunDir,
    manifest: pd.DataFrame,
    *,
    key_slices: bool,
    neighbour_slices: int,
    model: str | None = None,
    progress: bool = False,
) -> tuple[pd.DataFrame, str]:
    """Detections of the run's detector (``RUN_DIR/detector``, the latest model unless
    ``model``) on the annotated key slices (``key_slices``) and on the ``neighbour_slices``
    slices on each side of them that exist on disk."""
    from ..detection.predict import empty_predictions
    from ..detection.workflow import load_detector
    from ..manifest import manifest_images_root
    from .missing import neighbour_rows

    name, det = load_detector(run, model, progress=progress)
    root = manifest_images_root(manifest)
    parts, said = [], []
    if key_slices:
        parts.append(det.predict(manifest, "all"))
        said.append(f"{manifest['file_name'].nunique()} key slices")
    nb = neighbour_rows(manifest, neighbour_slices, root)
    if len(nb):
        parts.append(det.predict(nb, "all"))
        said.append(f"{len(nb)} neighbouring slices")
    pred = pd.concat(parts, ignore_index=True) if parts else empty_predictions()
    msg = (f"detector {name}: {len(pred)} detections on " + " and ".join(said)
           if said else f"detector {name}: no slice to run on")
    return pred, msg


#: Single-cue baselines evaluated beside the matcher (``matching.<name>_f1`` in metrics.json):
#: normalized location alone, and embedding (appearance) distance alone.
BASELINES: dict[str, list[str]] = {
    "location_only": ["location_distance"],
    "appearance_only": ["embedding_distance"],
}


def _evaluate(matcher: LesionMatcher, X: pd.DataFrame, y: np.ndarray) -> dict:
    pairs = matcher.predict(X)
    return matching_metrics(pairs, pair_labels(pairs, y))


def crossfit_matching(
    X: pd.DataFrame, y: np.ndarray, *, seed: int = 0, folds: int = 2
) -> dict | None:
    """Patient-level cross-fitting of the matcher and of the :data:`BASELINES`.

    The patients with known identities are split at random (``seed``) into ``folds`` groups;
    each group is evaluated by a matcher fitted on the others, and the metrics are over all
    evaluated pairs pooled. Every patient with identities is evaluated once, by a matcher that
    never saw it, which on a few dozen patients gives several times the pairs of the test split
    alone. ``None`` when some group lacks same-lesion or different-lesion pairs.

    Returns
    -------
    dict or None
        ``f1`` (the matcher's :func:`matching_metrics`), ``<baseline>_f1`` likewise, ``rule``
        (in words) and ``patients``.
    """
    from .matching import _has_both_classes

    y = np.asarray(y, dtype=object)
    known = pd.Series(y).notna().to_numpy() & (pd.Series(y).astype(str) != "").to_numpy()
    patient = X["patient_index"].to_numpy()
    pats = np.unique(patient[known])
    if len(pats) < 2 * folds:
        return None
    rng = np.random.default_rng(seed)
    rng.shuffle(pats)
    groups = [set(pats[i::folds].tolist()) for i in range(folds)]
    masks = [np.isin(patient, list(g)) & known for g in groups]
    if not all(_has_both_classes(X.loc[m], y[m]) for m in masks):
        return None
    out: dict = {}
    for name, feats in {"f1": None, **{f"{k}_f1": v for k, v in BASELINES.items()}}.items():
        parts = []
        for em in masks:
            fm = known & ~em
            kw = {"features": feats} if feats else {}
            m = LesionMatcher(**kw).fit(X.loc[fm].reset_index(drop=True), y[fm])
            pe = m.predict(X.loc[em].reset_index(drop=True))
            pe["label"] = pair_labels(pe, y[em])
            parts.append(pe)
        pooled = pd.concat(parts, ignore_index=True)
        out[name] = matching_metrics(pooled, pooled["label"].to_numpy())
    out["rule"] = (f"patient-level {folds}-fold cross-fitting over the {len(pats)} patients "
                   f"with known identities (seed {seed}): each evaluated by a matcher fitted "
                   "on the others")
    out["patients"] = int(len(pats))
    return out


def _fit_matcher(
    table: LesionTable, y: np.ndarray | None, msgs: list[str], seed: int
) -> tuple[LesionMatcher, dict]:
    X = table.frame()
    if y is None:
        msgs.append(
            "matching: no truth file, so the matcher uses its hand-set prior score and threshold "
            "0.5 (not learned) and is not evaluated; pass --truth to learn and evaluate it"
        )
        return LesionMatcher().fit(X), {"fitted_on": "prior", "threshold": 0.5,
                                        "evaluated": False}
    n_known = int(pd.Series(y).notna().sum())
    try:
        fit_m, eval_m, rule = split_patients(X, y, seed=seed)
    except GraphError as exc:
        msgs.append(f"matching: {exc}; using the prior score (not evaluated)")
        return LesionMatcher().fit(X), {"fitted_on": "prior", "threshold": 0.5,
                                        "evaluated": False, "note": str(exc)}
    Xf, Xe = X.loc[fit_m].reset_index(drop=True), X.loc[eval_m].reset_index(drop=True)
    matcher = LesionMatcher().fit(Xf, y[fit_m])
    msgs.append(f"matching: {rule}")
    # the official split: the matcher and the single-cue baselines, same patients
    split = {"f1": _evaluate(matcher, Xe, y[eval_m])}
    for name, feats in BASELINES.items():
        split[f"{name}_f1"] = _evaluate(LesionMatcher(features=feats).fit(Xf, y[fit_m]), Xe,
                                        y[eval_m])
    cross = crossfit_matching(X, y, seed=seed)
    if cross is not None:
        ev, how = cross["f1"], cross["rule"]
        msgs.append(f"matching evaluated by {how}")
    else:
        ev, how = split["f1"], rule
    pat = X["patient_index"].to_numpy()
    metrics = {
        **{k: ev[k] for k in ("precision", "recall", "f1", "auc")},
        **{f"{name}_{k}": (cross or split)[f"{name}_f1"][k] for name in BASELINES
           for k in ("f1", "auc")},
        "evaluation": how,
        **{f"split_{k}": v["f1"] for k, v in split.items()},
        "split_eval_pairs": split["f1"]["n_pairs"],
        "split_eval_positive_pairs": split["f1"]["n_positive_pairs"],
        "threshold": matcher.threshold_,
        "fitted_on": "labels",
        "evaluated": True,
        "split_rule": rule,
        "fit_patients": int(len(np.unique(pat[fit_m]))),
        "eval_patients": int(len(np.unique(pat[eval_m]))) if cross is None else cross["patients"],
        "fit_f1": matcher.fit_report_["f1"],
        "eval_pairs": ev["n_pairs"],
        "eval_positive_pairs": ev["n_positive_pairs"],
        "eval_unscored_positive_pairs": ev["n_unscored_positive_pairs"],
        "lesions_with_identity": n_known,
    }
    return matcher, metrics


def _clear_stale(run: RunDir, updates: dict) -> dict:
    """``updates`` plus ``None`` for keys of the same sections left by an earlier run, so that
    the deep merge of :meth:`RunDir.update_metrics` leaves no stale numbers behind."""
    old = run.load_metrics()
    if not old:
        return updates

    def fill(new: dict, prev: dict) -> dict:
        out = dict(new)
        for k, v in prev.items():
            if k not in out:
                out[k] = None
            elif isinstance(v, dict) and isinstance(out[k], dict):
                out[k] = fill(out[k], v)
        return out

    return {k: fill(v, old[k]) if isinstance(old.get(k), dict) else v for k, v in updates.items()}


def build_run_graph(
    run_dir: str | Path,
    *,
    truth: str | Path | None = None,
    predictions: str | Path | None = None,
    n_neighbors: int = 10,
    eval_split: int | None = 3,
    neighbour_slices: int = 1,
    detector_model: str | None = None,
    seed: int = 0,
    progress: bool = False,
) -> GraphResult:
    """Build the graph, tracks and proposals of a run and record their metrics.

    Parameters
    ----------
    run_dir : path
        A run directory with ``embeddings.parquet`` (``deeplesion-lab embed``).
    truth : path, optional
        Truth file; defaults to the run's (``run.json``). Needed for any evaluation.
    predictions : path, optional
        Detections (``file_name, x1, y1, x2, y2, score, label``) on the annotated key slices
        and their neighbours; defaults to the run's detections on every key slice if present
        (``RUN_DIR/detector/predictions_pseudo_all.csv``, then ``_single_all``).
        When none is given or found but the run has a detector, it is run on the key slices.
        Without detections or detector the missing-annotation step is skipped, with the reason.
    n_neighbors : int, default 10
        ``similar`` edges per node.
    eval_split : int or None, default 3
        Key images of this split evaluate the proposals (the detector trained on split 1, whose
        unannotated lesions it learned as background); ``None`` or a split without
        unannotated truth lesions: all annotated key images.
    neighbour_slices : int, default 1
        When the run has a detector, it is also run on this many slices on each side of every
        annotated key slice; its detections there support the proposals (3-D consistency).
        0: not run.
    detector_model : str, optional
        Model under ``RUN_DIR/detector`` (default: the latest trained).
    seed : int
        For the fallback patient split of the matching.
    progress : bool
        Progress bars (embedding the proposals).
    """
    t0 = time.perf_counter()
    run = RunDir(run_dir)
    run.info()
    manifest = run.load_manifest()
    ids, vecs = run.load_embeddings()
    table = lesion_table(manifest, ids, vecs, source=str(run.embeddings))
    msgs = list(table.messages)
    if table.n_without_embedding == len(table.lesions):
        raise GraphError(
            f"{run.embeddings}: none of the {len(table.lesions)} manifest lesions has an "
            "embedding (was it made from another manifest?)"
        )
    truth_path = Path(truth) if truth is not None else run.truth_path()
    truth_df = read_truth(truth_path) if truth_path is not None else None
    y = track_ids_for(table.lesions["lesion_id"], truth_df) if truth_df is not None else None

    # matching + tracks --------------------------------------------------------------------------
    matcher, mmetrics = _fit_matcher(table, y, msgs, seed)
    pairs = matcher.predict(table.frame())
    tracks = build_tracks(table.lesions, pairs)
    n_st = table.lesions.groupby("patient_index")["study_index"].nunique()
    mmetrics.update({
        "patients": int(len(n_st)),
        "single_study_patients": int((n_st < 2).sum()),
        "lesions_without_embedding": table.n_without_embedding,
        "pairs": int(len(pairs)),
        "unscored_pairs": int(pairs["score"].isna().sum()),
        "matches": int(pairs["match"].sum()),
        "tracks": int(tracks["track_id"].nunique()),
        "tracks_multi_study": int(
            (tracks.groupby("track_id")["n_time_points"].first() > 1).sum()
        ),
    })
    if mmetrics["single_study_patients"]:
        msgs.append(
            f"matching: {mmetrics['single_study_patients']} of {mmetrics['patients']} patients "
            "have one study only; their lesions have nothing to match (tracks of length 1)"
        )

    # missing annotations ------------------------------------------------------------------------
    proposals = None
    pvec = None
    pred_path, pmsg = _resolve_predictions(run, predictions)
    msgs.append(pmsg)
    preds = None
    if pred_path is not None:
        from ..detection.froc import read_predictions

        preds = read_predictions(pred_path)
    if _has_detector(run) and (preds is None or neighbour_slices > 0):
        from ..errors import LabError

        try:
            det_pred, dmsg = run_detector(
                run, manifest, key_slices=preds is None, neighbour_slices=neighbour_slices,
                model=detector_model, progress=progress,
            )
        except (LabError, RuntimeError, OSError) as exc:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
            pmsg = f"the run's detector could not be run ({first})"
            if preds is None:
                pmsg = f"missing-annotation mining skipped: {pmsg}"
            msgs.append(pmsg)
        else:
            msgs.append(dmsg)
            write_csv(det_pred, run.graph_detections)
            preds = det_pred if preds is None else pd.concat([preds, det_pred],
                                                              ignore_index=True)
    if preds is not None:
        proposals = propose_missing(manifest, preds, neighbour_slices=max(neighbour_slices, 1))
        pvec, emsg = embed_proposals(run, proposals, manifest, progress=progress)
        msgs.append(emsg)
        proposals = proposal_similarity(proposals, pvec, table)
        proposals = rank_proposals(proposals)
        msgs.append(
            f"missing annotations: {len(proposals)} proposals on "
            f"{proposals['file_name'].nunique()} of {proposals.attrs.get('n_key_images', 0)} "
            "annotated key images"
        )
        mm = {"proposals": len(proposals), "embedding_similarity": pvec is not None}
        if truth_df is not None:
            keys = manifest.drop_duplicates("file_name")
            images = keys["file_name"].astype(str)
            scope = "all annotated key images"
            if eval_split is not None and "split" in keys.columns:
                sub = keys.loc[keys["split"].to_numpy() == eval_split, "file_name"].astype(str)
                unann = truth_df.loc[~truth_df["annotated"], "file_name"].astype(str)
                if unann.isin(set(sub)).any():
                    images, scope = sub, f"annotated key images of split {eval_split}"
            ev = evaluate_proposals(proposals, truth_df, images.tolist())
            ev_score = evaluate_proposals(proposals, truth_df, images.tolist(), score="score")
            mm.update(ev)
            mm["evaluated_on"] = scope
            mm["by_detector_score"] = {
                k: v for k, v in ev_score.items() if k.startswith(("recall", "precision"))
            }
        else:
            mm["evaluated"] = False
            msgs.append("missing annotations: no truth file, proposals not evaluated")
    else:
        mm = {"skipped": pmsg}

    # graph + files --------------------------------------------------------------------------------
    graph = build_lesion_graph(
        table, n_neighbors=n_neighbors, pairs=pairs, tracks=tracks,
        candidates=proposals, candidate_vectors=pvec,
    )
    gdir = run.graph_dir
    paths = graph.save(gdir)
    paths["pairs"] = write_parquet(pairs, run.graph_pairs)
    paths["tracks"] = write_parquet(tracks, run.graph_tracks)
    if proposals is not None:
        paths["proposals"] = write_parquet(proposals, run.graph_proposals)
    elif run.graph_proposals.is_file():
        msgs.append(f"{run.graph_proposals} is from an earlier run (kept, not updated)")
    record = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "n_neighbors": n_neighbors,
        "truth": str(truth_path) if truth_path else None,
        "predictions": str(pred_path) if pred_path else None,
        "matcher": {
            "params": matcher.get_params(),
            "features": list(matcher.features),
            "coef": matcher.coef_.tolist(),
            "intercept": matcher.intercept_,
            "mean": matcher.mean_.tolist(),
            "scale": matcher.scale_.tolist(),
            "threshold": matcher.threshold_,
            "fitted_on": matcher.fitted_on_,
        },
        "nodes": len(graph.nodes),
        "edges": len(graph.edges),
        "seconds": round(time.perf_counter() - t0, 2),
        "messages": msgs,
    }
    paths["record"] = write_json(record, run.graph_record)
    metrics = {"matching": mmetrics, "missing_annotations": mm}
    run.update_metrics(_clear_stale(run, metrics))
    return GraphResult(graph, pairs, tracks, proposals, metrics, msgs, paths)
