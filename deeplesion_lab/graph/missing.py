"""Missing-annotation mining: propose lesions that are visible but were never annotated.

DeepLesion's radiologists measured one or a few lesions per key slice even where more are
visible. Running the detector on the annotated key slices (and their neighbours) finds them:

1. :func:`propose_missing` keeps the detections on annotated key images that do **not** overlap
   an annotated box there (IoU >= ``overlap_iou``, or one box covering ``overlap_cover`` of the
   smaller one), removes duplicates (NMS), and measures, for each, its support on the
   ``neighbour_slices`` slices on each side: the mean over those slices of the best score of an
   overlapping detection there (0 where none; 3-D consistency: a real lesion spans several
   slices, a detection on noise rarely does).
2. :func:`rank_proposals` orders them by a weighted mean of the detector score, the support and
   the similarity of their embedding to the patient's annotated lesions (cosine similarity
   mapped to 0-1; :func:`proposal_similarity`). Without embeddings the similarity weight is
   dropped and the other weights renormalized.
3. :func:`evaluate_proposals` scores the ranking against the truth file's unannotated lesions
   on the evaluated key images: recall at 0.5, 1 and 2 proposals per image (the top
   ``round(r x images)`` proposals over all images, FROC-style) and precision of the top
   proposals. A proposal hits an unannotated lesion of its image at IoU >= 0.5 (the DeepLesion
   inclusive-pixel IoU, as in the detection evaluation), or, with ``hit="centre"``, when its
   centre lies inside the lesion's box; each lesion is hit once (later hits on it are
   false positives).
4. :func:`accept_proposals` turns chosen proposals into new annotated lesions through the
   run's label store (one event: who, when), so they reach the history, exports and
   fine-tuning.

Proposal ids are the lesion ids the proposals get when accepted
(:func:`deeplesion_lab.dl_info.make_lesion_id` of the key image and the RECIST points of the
box), so an accepted lesion keeps its id when written back into a DL_info.csv.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..boxes import nms, pairwise_cover, pairwise_iou
from ..dl_info import BOX_COLUMNS, FILE_NAME_RE, RECIST_COLUMNS, make_lesion_id
from ..images import box_to_recist
from ..run import RunDir
from .lesion_table import GraphError, LesionTable, normalize_rows

__all__ = [
    "PROPOSAL_COLUMNS",
    "pairwise_iou",
    "propose_missing",
    "proposal_similarity",
    "rank_proposals",
    "evaluate_proposals",
    "accept_proposals",
    "proposal_lesions",
    "read_accepted",
    "proposal_manifest",
    "neighbour_rows",
]

PROPOSAL_COLUMNS: tuple[str, ...] = (
    "proposal_id",
    "file_name",
    "patient_index",
    "study_index",
    "series_id",
    "slice_index",
    "x1",
    "y1",
    "x2",
    "y2",
    "score",
    "label",
    "overlap_annotated",
    "neighbour_support",
    "similarity",
    "nearest_lesion_id",
    "rank_score",
    "rank_in_image",
)

def _parse_files(names: Sequence[str], what: str) -> pd.DataFrame:
    parts = pd.Series(list(names), dtype=object).astype(str).str.extract(FILE_NAME_RE.pattern)
    bad = parts[0].isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise GraphError(
            f"{what}: row {i}, field file_name: {names[i]!r} is not a DeepLesion slice name "
            "(PATIENT_STUDY_SERIES_SLICE.png)"
        )
    out = parts.astype(np.int64)
    out.columns = ["patient_index", "study_index", "series_id", "slice_index"]
    out["series"] = [n.rsplit("_", 1)[0] for n in names]
    return out


def _proposal_id(file_name: str, box: np.ndarray) -> str:
    w, h = box[2] - box[0], box[3] - box[1]
    pad = 5.0 if min(w, h) > 10.0 else 0.0
    return make_lesion_id(file_name, box_to_recist(box, pad=pad))


# proposals ----------------------------------------------------------------------------------
def propose_missing(
    manifest: pd.DataFrame,
    predictions: pd.DataFrame,
    *,
    overlap_iou: float = 0.3,
    overlap_cover: float = 0.7,
    nms_iou: float = 0.5,
    neighbour_slices: int = 2,
    support_iou: float = 0.3,
    min_score: float = 0.0,
    max_per_image: int | None = 10,
) -> pd.DataFrame:
    """Detections on annotated key images that are not the annotated lesions.

    Parameters
    ----------
    manifest : pandas.DataFrame
        Annotated lesions: ``file_name`` (key image), ``bbox_x1..bbox_y2``.
    predictions : pandas.DataFrame
        Detector output ``file_name, x1, y1, x2, y2, score[, label]`` (see
        :func:`deeplesion_lab.detection.froc.read_predictions`), on key images and, optionally,
        their neighbouring slices.
    overlap_iou, overlap_cover : float
        A detection is the annotated lesion (dropped) when its IoU with an annotated box of the
        image reaches ``overlap_iou`` or one of the two boxes covers ``overlap_cover`` of the
        smaller one.
    nms_iou : float
        Duplicate detections above this IoU keep only the best-scored one.
    neighbour_slices : int
        Slices on each side looked at for support.
    support_iou : float
        IoU with the proposal's box that makes a neighbour-slice detection support it (with its
        score; ``neighbour_support`` is the mean over the ``2 x neighbour_slices`` slices).
    min_score : float
        Detections scored below are ignored.
    max_per_image : int or None, default 10
        Keep at most this many proposals per image (the best-scored; the evaluation reads at
        most 2 per image on average). ``None``: all.

    Returns
    -------
    pandas.DataFrame
        :data:`PROPOSAL_COLUMNS` with ``similarity``/``nearest_lesion_id`` empty and
        ``rank_score`` = detector score (see :func:`rank_proposals`).
    """
    for c in ("file_name", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"):
        if c not in manifest.columns:
            raise GraphError(f"manifest: missing column {c}")
    for c in ("file_name", "x1", "y1", "x2", "y2", "score"):
        if c not in predictions.columns:
            raise GraphError(f"predictions: missing column {c}")
    pred = predictions.reset_index(drop=True)
    pred = pred.loc[pred["score"].to_numpy(dtype=float) >= min_score].reset_index(drop=True)
    if "label" not in pred.columns:
        pred["label"] = ""
    keys = manifest[["file_name"]].drop_duplicates().reset_index(drop=True)
    kinfo = _parse_files(keys["file_name"].astype(str).tolist(), "manifest")
    key_set = set(keys["file_name"].astype(str))
    if len(pred):
        pinfo = _parse_files(pred["file_name"].astype(str).tolist(), "predictions")
    else:
        pinfo = pd.DataFrame(columns=["patient_index", "study_index", "series_id",
                                      "slice_index", "series"])
    on_key = pred["file_name"].astype(str).isin(key_set).to_numpy()
    ann_boxes = {
        f: g[["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]].to_numpy(dtype=float)
        for f, g in manifest.groupby(manifest["file_name"].astype(str), sort=False)
    }
    # neighbour detections by (series, slice)
    neigh = pd.DataFrame({
        "series": pinfo["series"].to_numpy() if len(pred) else np.zeros(0, object),
        "slice": pinfo["slice_index"].to_numpy() if len(pred) else np.zeros(0, np.int64),
    })
    nb_groups = {k: g.index.to_numpy() for k, g in neigh.groupby(["series", "slice"], sort=False)}
    boxes_all = pred[["x1", "y1", "x2", "y2"]].to_numpy(dtype=float)
    scores_all = pred["score"].to_numpy(dtype=float)

    rows = []
    key_rows = np.flatnonzero(on_key)
    by_file = pd.Series(key_rows).groupby(pred["file_name"].astype(str).to_numpy()[key_rows])
    for f, idx_s in by_file:
        idx = idx_s.to_numpy()
        b = boxes_all[idx]
        ann = ann_boxes[f]
        iou = pairwise_iou(b, ann).max(axis=1)
        cover = pairwise_cover(b, ann).max(axis=1)
        free = (iou < overlap_iou) & (cover < overlap_cover)
        idx, b, iou = idx[free], b[free], iou[free]
        if len(idx) == 0:
            continue
        k = nms(b, scores_all[idx], nms_iou)
        if max_per_image is not None and len(k) > max_per_image:
            k = np.sort(k[np.argsort(-scores_all[idx[k]], kind="stable")[:max_per_image]])
        idx, b, iou = idx[k], b[k], iou[k]
        info = pinfo.iloc[idx[0]]
        support = np.zeros(len(idx))
        for off in range(1, neighbour_slices + 1):
            for s in (info["slice_index"] - off, info["slice_index"] + off):
                nb = nb_groups.get((info["series"], int(s)))
                if nb is None:
                    continue
                ov = pairwise_iou(b, boxes_all[nb]) >= support_iou
                support += np.where(ov, scores_all[nb][None, :], 0.0).max(axis=1)
        for j, i in enumerate(idx):
            rows.append((
                _proposal_id(f, b[j]), f, int(info["patient_index"]), int(info["study_index"]),
                int(info["series_id"]), int(info["slice_index"]), *b[j].tolist(),
                float(scores_all[i]), str(pred["label"].iloc[i]), float(iou[j]),
                support[j] / (2 * neighbour_slices) if neighbour_slices else 0.0,
            ))
    cols = list(PROPOSAL_COLUMNS[:13]) + ["neighbour_support"]
    out = pd.DataFrame(rows, columns=cols)
    out = out.astype({"patient_index": np.int64, "study_index": np.int64, "series_id": np.int64,
                      "slice_index": np.int64, "x1": float, "y1": float, "x2": float,
                      "y2": float, "score": float, "overlap_annotated": float,
                      "neighbour_support": float})
    out["proposal_id"] = out["proposal_id"].astype("string")
    out["file_name"] = out["file_name"].astype("string")
    out["label"] = out["label"].astype("string")
    out = out.drop_duplicates("proposal_id").reset_index(drop=True)
    out["similarity"] = np.nan
    out["nearest_lesion_id"] = pd.array([None] * len(out), dtype="string")
    out["rank_score"] = out["score"].to_numpy(dtype=float)
    out["rank_in_image"] = _rank_in_image(out)
    out.attrs["n_key_images"] = len(kinfo)
    out.attrs["n_predictions_on_key_images"] = int(on_key.sum())
    return out[list(PROPOSAL_COLUMNS)]


def _rank_in_image(p: pd.DataFrame) -> np.ndarray:
    if not len(p):
        return np.zeros(0, np.int64)
    return (
        p.groupby("file_name")["rank_score"].rank(method="first", ascending=False)
        .to_numpy(dtype=np.int64)
    )


def neighbour_rows(
    manifest: pd.DataFrame, neighbour_slices: int = 1, images_root: str | Path | None = None
) -> pd.DataFrame:
    """Manifest-like rows for the slices next to each annotated key slice (to run a detector).

    For each key image and each offset ``1..neighbour_slices`` on both sides, a copy of one of
    its rows with ``file_name`` and ``key_slice_index`` of the neighbour (inside the series'
    ``slice_start..slice_end``); with ``images_root``, only slices present on disk. Boxes are
    the key slice's (the detector ignores them when predicting).
    """
    from ..images import slice_path

    if neighbour_slices < 1 or not len(manifest):
        return manifest.iloc[0:0].copy()
    keys = manifest.drop_duplicates("file_name").reset_index(drop=True)
    parts = []
    key_set = set(keys["file_name"].astype(str))
    for off in [o for k in range(1, neighbour_slices + 1) for o in (-k, k)]:
        r = keys.copy()
        sl = r["key_slice_index"].to_numpy(dtype=np.int64) + off
        ok = np.ones(len(r), bool)
        if "slice_start" in r.columns and "slice_end" in r.columns:
            ok = (sl >= r["slice_start"].to_numpy()) & (sl <= r["slice_end"].to_numpy())
        stems = r["file_name"].astype(str).str[:-4].str.rsplit("_", n=1).str[0]
        names = [f"{s}_{int(i):03d}.png" for s, i in zip(stems, sl, strict=True)]
        r["file_name"] = names
        r["key_slice_index"] = sl
        r["lesion_id"] = [f"{lid}-n{off:+d}" for lid in keys["lesion_id"].astype(str)]
        ok &= ~pd.Series(names).isin(key_set).to_numpy()
        if images_root is not None:
            ok &= np.array([slice_path(images_root, f, i).is_file()
                            for f, i in zip(keys["file_name"], sl, strict=True)])
        parts.append(r.loc[ok])
    out = pd.concat(parts, ignore_index=True).drop_duplicates("file_name")
    out.attrs = dict(manifest.attrs)
    return out.reset_index(drop=True)


#: Where a proposal's location input comes from (:func:`proposal_manifest`): ``"annotated"``
#: (the location of an annotated lesion on the same key image) or ``"body"`` (its own box
#: relative to the body in the image, as :func:`deeplesion_lab.detection.typer.detection_rows`
#: locates a detection).
PROPOSAL_LOCATION = "annotated"


def proposal_manifest(proposals: pd.DataFrame, manifest: pd.DataFrame, *,
                      location: str | None = None) -> pd.DataFrame:
    """Manifest-like rows for the proposals (to cut patches and embed them).

    Each proposal copies the row of an annotated lesion on the same key image (spacing, slice
    range, window, ...) and takes its own id and box; the long diameter is the box's longer
    side minus the release's 5-px padding. ``location`` (default :data:`PROPOSAL_LOCATION`):
    ``"annotated"`` keeps that lesion's normalised location, ``"body"`` locates the proposal's
    own box relative to the body in the key image (reads the key slices).
    """
    location = location or PROPOSAL_LOCATION
    if location not in ("annotated", "body"):
        raise GraphError(f"proposal location must be 'annotated' or 'body', got {location!r}")
    first = manifest.drop_duplicates("file_name").set_index(
        manifest.drop_duplicates("file_name")["file_name"].astype(str)
    )
    base = first.loc[proposals["file_name"].astype(str).to_numpy()].reset_index(drop=True)
    out = base.copy()
    out["lesion_id"] = proposals["proposal_id"].astype("string").to_numpy()
    for a, b in (("bbox_x1", "x1"), ("bbox_y1", "y1"), ("bbox_x2", "x2"), ("bbox_y2", "y2")):
        out[a] = proposals[b].to_numpy(dtype=float)
    side = np.maximum(proposals["x2"].to_numpy() - proposals["x1"].to_numpy(),
                      proposals["y2"].to_numpy() - proposals["y1"].to_numpy())
    out["long_diameter_px"] = np.maximum(side - 10.0, 1.0)
    if "coarse_type" in out.columns:
        out["coarse_type"] = np.full(len(out), -1, dtype=out["coarse_type"].dtype)
    if location == "body" and len(out):
        from ..detection.typer import detection_rows
        from ..manifest import manifest_images_root

        rows = detection_rows(proposals.reset_index(drop=True), manifest,
                              manifest_images_root(manifest), source="proposals")
        for c in ("location_x", "location_y", "location_z"):
            out[c] = rows[c].to_numpy()
    return out


def proposal_similarity(
    proposals: pd.DataFrame, vectors: np.ndarray | None, table: LesionTable
) -> pd.DataFrame:
    """Fill ``similarity`` (max cosine similarity, -1..1) and ``nearest_lesion_id``: the most
    similar annotated lesion of the same patient, by embedding.

    ``vectors`` are the proposals' embeddings (rows aligned, NaN where none). Proposals whose
    patient has no annotated lesion with an embedding keep NaN.
    """
    out = proposals.copy()
    if vectors is None or not len(out):
        return out
    v = normalize_rows(vectors)
    if v.shape != (len(out), table.vectors.shape[1]):
        raise GraphError(
            f"proposal embeddings: shape {v.shape}, expected ({len(out)}, {table.vectors.shape[1]})"
        )
    les = table.lesions
    has = table.has_embedding
    groups = {
        p: g.to_numpy()
        for p, g in pd.Series(np.flatnonzero(has)).groupby(
            les["patient_index"].to_numpy()[has]
        )
    }
    ids = les["lesion_id"].astype(object).to_numpy()
    sim = np.full(len(out), np.nan)
    near = np.full(len(out), None, dtype=object)
    for i, p in enumerate(out["patient_index"].to_numpy()):
        cand = groups.get(p)
        if cand is None or not np.isfinite(v[i]).all():
            continue
        s = table.vectors[cand] @ v[i]
        j = int(np.argmax(s))
        sim[i], near[i] = float(s[j]), ids[cand[j]]
    out["similarity"] = sim
    out["nearest_lesion_id"] = pd.array(near, dtype="string")
    return out


def rank_proposals(
    proposals: pd.DataFrame,
    *,
    weight_similarity: float = 0.3,
    weight_support: float = 0.2,
) -> pd.DataFrame:
    """Combine detector score, neighbour support and similarity into ``rank_score``.

    ``rank_score = w_s * score + w_sup * neighbour_support + w_sim * (1 + similarity) / 2``,
    with ``w_s = 1 - w_sup - w_sim``. Where the similarity is unknown its weight goes to the
    detector score. Also sets ``rank_in_image`` (1 = best on its image).
    """
    if weight_similarity < 0 or weight_support < 0 or weight_similarity + weight_support > 1:
        raise GraphError(
            "rank weights must be >= 0 and sum to at most 1 "
            f"(similarity {weight_similarity}, support {weight_support})"
        )
    out = proposals.copy()
    sim = out["similarity"].to_numpy(dtype=float)
    known = np.isfinite(sim)
    w_sim = np.where(known, weight_similarity, 0.0)
    w_score = 1.0 - weight_support - w_sim
    out["rank_score"] = (
        w_score * out["score"].to_numpy(dtype=float)
        + weight_support * out["neighbour_support"].to_numpy(dtype=float)
        + w_sim * np.where(known, (1.0 + sim) / 2.0, 0.0)
    )
    out["rank_in_image"] = _rank_in_image(out)
    return out


# evaluation ---------------------------------------------------------------------------------
def _rate_key(r: float) -> str:
    return f"{r:g}".replace(".", "_")


def evaluate_proposals(
    proposals: pd.DataFrame,
    truth: pd.DataFrame,
    images: Iterable[str],
    *,
    rates: Sequence[float] = (0.5, 1.0, 2.0),
    iou: float = 0.5,
    hit: str = "iou",
    score: str = "rank_score",
) -> dict[str, float | int | str]:
    """Recall and precision of the ranked proposals against the unannotated truth lesions.

    Parameters
    ----------
    proposals : pandas.DataFrame
        :func:`rank_proposals` output.
    truth : pandas.DataFrame
        :func:`~deeplesion_lab.graph.truth.read_truth` output.
    images : iterable of str
        The evaluated key images (annotated key slices the detector was run on).
    rates : sequence of float
        Proposals per image at which recall and precision are read.
    iou : float
        IoU making a hit (``hit="iou"``).
    hit : {"iou", "centre"}
        ``"centre"``: the proposal's centre inside the truth box is a hit.
    score : str
        Column ranking the proposals.

    Returns
    -------
    dict
        ``recall_at_{r}``, ``precision_at_{r}`` (``r`` as ``0_5``, ``1``, ``2``),
        ``precision_at_top`` (precision of the top ``n_missing`` proposals: R-precision),
        ``recall_all`` (every proposal), ``n_images``, ``n_missing``, ``n_proposals``.
    """
    if hit not in ("iou", "centre"):
        raise GraphError(f"hit must be 'iou' or 'centre', got {hit!r}")
    imgs = {str(f) for f in images}
    n_images = len(imgs)
    t = truth.loc[~truth["annotated"].astype(bool)]
    t = t.loc[t["file_name"].astype(str).isin(imgs)]
    tb = {
        f: g[["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]].to_numpy(dtype=float)
        for f, g in t.groupby(t["file_name"].astype(str), sort=False)
    }
    n_missing = len(t)
    p = proposals.loc[proposals["file_name"].astype(str).isin(imgs)]
    order = np.argsort(-p[score].to_numpy(dtype=float), kind="stable")
    p = p.iloc[order]
    used = {f: np.zeros(len(b), bool) for f, b in tb.items()}
    hits = np.zeros(len(p), bool)
    boxes = p[["x1", "y1", "x2", "y2"]].to_numpy(dtype=float)
    for i, f in enumerate(p["file_name"].astype(str).to_numpy()):
        gt = tb.get(f)
        if gt is None:
            continue
        if hit == "iou":
            ov = pairwise_iou(boxes[i : i + 1], gt)[0]
            cand = (ov >= iou) & ~used[f]
        else:
            cx, cy = (boxes[i, 0] + boxes[i, 2]) / 2, (boxes[i, 1] + boxes[i, 3]) / 2
            ov = -np.hypot((gt[:, 0] + gt[:, 2]) / 2 - cx, (gt[:, 1] + gt[:, 3]) / 2 - cy)
            inside = (gt[:, 0] <= cx) & (cx <= gt[:, 2]) & (gt[:, 1] <= cy) & (cy <= gt[:, 3])
            cand = inside & ~used[f]
        if cand.any():
            j = int(np.flatnonzero(cand)[np.argmax(ov[cand])])
            used[f][j] = True
            hits[i] = True
    cum = np.cumsum(hits)
    out: dict[str, float | int | str] = {
        "n_images": n_images,
        "n_missing": n_missing,
        "n_proposals": len(p),
        "hit_rule": f"IoU >= {iou:g}" if hit == "iou" else "centre inside the box",
        "ranked_by": score,
    }

    def at(n: int) -> tuple[float, float]:
        n = min(n, len(p))
        h = int(cum[n - 1]) if n > 0 else 0
        return (h / n_missing if n_missing else float("nan"), h / n if n else float("nan"))

    for r in rates:
        rec, prec = at(int(np.floor(r * n_images + 0.5)))
        out[f"recall_at_{_rate_key(r)}"] = rec
        out[f"precision_at_{_rate_key(r)}"] = prec
    out["precision_at_top"] = at(n_missing)[1]
    out["recall_all"] = at(len(p))[0]
    return out


# accepting ----------------------------------------------------------------------------------
def read_accepted(run: str | Path | RunDir) -> pd.DataFrame:
    """The accepted proposals of a run: the lesions people added, from its label store
    (:meth:`~deeplesion_lab.labels.LabelStore.added_lesions`; empty when there are none)."""
    from ..labels import LabelStore

    with LabelStore.for_run(run) as store:
        return store.added_lesions()


def accept_proposals(
    run: str | Path | RunDir,
    proposal_ids: Sequence[str],
    user: str | None = None,
    *,
    label: str | None = None,
    comment: str | None = None,
    store=None,
    tool: str = "api",
) -> pd.DataFrame:
    """Accept proposals as new annotated lesions, through the label store.

    The lesions are added to the run's label store as one ``add_lesions`` event (who, when,
    tool, comment) with their key slice, box and RECIST points (a cross inside the box), so
    that they are in the history, in the exports and in fine-tuning's training rows
    (:func:`~deeplesion_lab.labels.manifest_with_added`). Accepting a proposal twice is a no-op
    for it; retract one by marking it "not a lesion".

    Parameters
    ----------
    run : path or RunDir
        The run directory (``RUN_DIR/graph/proposals.parquet`` holds the proposals).
    proposal_ids : sequence of str
        Proposal ids; an accepted lesion keeps its proposal's id, which is the lesion id it
        gets when written back into a DL_info.csv with its RECIST points.
    user : str, optional
        Who accepts (default: the login name).
    label : str, optional
        Class given to the new lesions (a class of the store's taxonomy).
    comment : str, optional
    store : LabelStore, optional
        An open store (default: the run's, opened and closed here).
    tool : str, default "api"

    Returns
    -------
    pandas.DataFrame
        The lesions added (:data:`~deeplesion_lab.labels.ADDED_COLUMNS`; empty when all were
        already accepted).

    Raises
    ------
    GraphError
        No proposals file, or an id that is not a proposal; nothing is written then.
    LabelStoreError
        An unknown class, or a store that cannot take them; nothing is written then.
    """
    from ..labels import LabelStore
    from .review import decide_proposals  # the one path from a proposal to the store

    own = store is None
    if own:
        store = LabelStore.for_run(run)
    try:
        eid = decide_proposals(run, proposal_ids, "accept", user, label=label, comment=comment,
                               store=store, tool=tool)
        added = store.added_lesions()
    finally:
        if own:
            store.close()
    if eid is None:
        return added.iloc[0:0]
    return added[added["event_id"] == eid].reset_index(drop=True)


def proposal_lesions(proposals: pd.DataFrame) -> pd.DataFrame:
    """Proposals as the lesions they become when accepted (the rows of
    :meth:`~deeplesion_lab.labels.LabelStore.add_lesions`): the proposal's id, key slice and box,
    RECIST points as a cross inside the box, the detector score."""
    rows = []
    for r in proposals.itertuples(index=False):
        box = np.array([r.x1, r.y1, r.x2, r.y2], dtype=float)
        pad = 5.0 if min(box[2] - box[0], box[3] - box[1]) > 10.0 else 0.0
        rec = box_to_recist(box, pad=pad)
        rows.append({
            "lesion_id": r.proposal_id,
            "file_name": r.file_name,
            "patient_index": int(r.patient_index),
            "study_index": int(r.study_index),
            "series_id": int(r.series_id),
            "key_slice_index": int(r.slice_index),
            **dict(zip(BOX_COLUMNS, box.tolist(), strict=True)),
            **dict(zip(RECIST_COLUMNS, np.asarray(rec, dtype=float).tolist(), strict=True)),
            "score": float(r.score),
        })
    return pd.DataFrame(rows)
