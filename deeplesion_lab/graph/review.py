"""Reviewing the lesion graph's proposals: accept, accept as a type, or reject, one by one.

A proposal (:func:`~deeplesion_lab.graph.missing.propose_missing`) is a detection on an
annotated key slice that is none of its annotated lesions: maybe a lesion nobody marked. A
reviewer decides, best proposal first:

- **accept** it: it becomes a lesion of the dataset (an ``add_lesions`` event of the label
  store, without a type, or **as a type** of the taxonomy);
- **reject** it: it is added the same way but labelled "not a lesion", so the decision is in
  the log with who and when, the proposal is not offered again, exports and fine-tuning leave
  it out (:func:`~deeplesion_lab.labels.manifest_with_added`), and it can be changed later
  (relabel) like any label;
- every decision is one event and **undoable** (the store's ``undo``/``redo``).

:func:`proposal_status` reads the decisions back from the store; :func:`review_queue` orders
the proposals for review.
"""

from __future__ import annotations

import getpass
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..run import RunDir
from .lesion_table import GraphError
from .missing import proposal_lesions

__all__ = [
    "DECISIONS",
    "STATUS_COLUMNS",
    "decide_proposals",
    "proposal_status",
    "read_proposals",
    "review_queue",
]

#: What a reviewer can decide.
DECISIONS = ("accept", "reject")

#: Columns :func:`proposal_status` adds to the proposals.
STATUS_COLUMNS = ("status", "decided_label", "decided_by", "decided_at", "event_id")

_NEEDED = ("proposal_id", "file_name", "patient_index", "study_index", "series_id",
           "slice_index", "x1", "y1", "x2", "y2", "score")


def read_proposals(run: str | Path | RunDir) -> pd.DataFrame:
    """The proposals of a run (``RUN_DIR/graph/proposals.parquet``).

    Raises
    ------
    GraphError
        No proposals file (with the command that writes it), or one that lacks a column.
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    path = run.graph_proposals
    if not path.is_file():
        raise GraphError(
            f"{path} not found; run `deeplesion-lab graph --run {run.path}` after the detector "
            "(the pipeline does) to propose unannotated lesions"
        )
    props = pd.read_parquet(path)
    missing = [c for c in _NEEDED if c not in props.columns]
    if missing:
        raise GraphError(f"{path}: missing column(s) {', '.join(missing)}")
    if not props["proposal_id"].is_unique:
        dup = props.loc[props["proposal_id"].duplicated(), "proposal_id"].iloc[0]
        raise GraphError(f"{path}: proposal_id {dup!r} appears twice")
    return props.reset_index(drop=True)


def review_queue(proposals: pd.DataFrame) -> pd.DataFrame:
    """Proposals in review order: best first (``rank_score``, else the detector score), then
    by image, so that equally ranked proposals of one slice come together."""
    key = "rank_score" if "rank_score" in proposals.columns else "score"
    order = np.lexsort((
        proposals["proposal_id"].astype(str).to_numpy(),
        proposals["file_name"].astype(str).to_numpy(),
        -proposals[key].to_numpy(dtype=float),
    ))
    return proposals.iloc[order].reset_index(drop=True)


def proposal_status(proposals: pd.DataFrame, added: pd.DataFrame) -> pd.DataFrame:
    """The proposals with the reviewers' decisions, from the store's added lesions.

    Parameters
    ----------
    proposals : pandas.DataFrame
        With ``proposal_id``.
    added : pandas.DataFrame
        :meth:`~deeplesion_lab.labels.LabelStore.added_lesions` (an accepted proposal keeps
        its id as the lesion id).

    Returns
    -------
    pandas.DataFrame
        The proposals (same order) plus :data:`STATUS_COLUMNS`: ``status`` is ``"pending"``,
        ``"accepted"`` or ``"rejected"`` (accepted, then or later labelled "not a lesion");
        ``decided_label`` the lesion's current label (None: accepted without a type).
    """
    from ..labels.taxonomy import NOT_A_LESION

    out = proposals.copy()
    by_id = added.set_index("lesion_id") if len(added) else None
    status, label, who, when, event = [], [], [], [], []
    for pid in out["proposal_id"].astype(str):
        if by_id is None or pid not in by_id.index:
            status.append("pending")
            label.append(None)
            who.append(None)
            when.append(pd.NaT)
            event.append(pd.NA)
            continue
        r = by_id.loc[pid]
        lab = r["label"] if isinstance(r["label"], str) else None
        status.append("rejected" if lab == NOT_A_LESION else "accepted")
        label.append(lab)
        who.append(r["added_by"])
        when.append(r["added_at"])
        event.append(int(r["event_id"]))
    out["status"] = status
    out["decided_label"] = pd.Series(label, index=out.index, dtype=object)
    out["decided_by"] = pd.Series(who, index=out.index, dtype=object)
    out["decided_at"] = pd.to_datetime(pd.Series(when, dtype=object), utc=True).to_numpy()
    out["event_id"] = pd.array(event, dtype="Int64")
    return out


def decide_proposals(
    run: str | Path | RunDir,
    proposal_ids: Sequence[str],
    decision: str,
    user: str | None = None,
    *,
    label: str | None = None,
    comment: str | None = None,
    store=None,
    tool: str = "api",
) -> int | None:
    """Accept (optionally as a type) or reject proposals, as one event of the label store.

    Parameters
    ----------
    run : path or RunDir
    proposal_ids : sequence of str
    decision : {"accept", "reject"}
    user : str, optional
        Who decides (default: the login name).
    label : str, optional
        With ``"accept"``: the class the new lesions get (a class of the store's taxonomy).
    comment : str, optional
    store : LabelStore, optional
        An open store (default: the run's, opened and closed here).
    tool : str, default "api"

    Returns
    -------
    int or None
        The event id; None when every proposal had been decided already (decide again by
        relabelling the lesion, or undo the decision first).

    Raises
    ------
    GraphError
        An unknown decision, no proposals file, an id that is not a proposal, or a type given
        with "reject"; nothing is written then.
    LabelStoreError
        An unknown class; nothing is written then.
    """
    from ..labels import LabelStore
    from ..labels.taxonomy import NOT_A_LESION

    if decision not in DECISIONS:
        raise GraphError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
    if decision == "reject":
        if label is not None:
            raise GraphError("a rejected proposal has no type (reject, or accept as a type)")
        label = NOT_A_LESION
    run = run if isinstance(run, RunDir) else RunDir(run)
    props = read_proposals(run).set_index("proposal_id", drop=False)
    ids = list(dict.fromkeys(str(i) for i in proposal_ids))
    if not ids:
        raise GraphError("no proposal ids given")
    unknown = [i for i in ids if i not in props.index]
    if unknown:
        raise GraphError(
            f"{run.graph_proposals}: proposal_id {unknown[0]!r} is not a "
            f"proposal ({len(unknown)} unknown ids)"
        )
    rows = proposal_lesions(props.loc[ids])
    own = store is None
    if own:
        store = LabelStore.for_run(run)
    try:
        return store.add_lesions(rows, user or getpass.getuser(), label=label, tool=tool,
                                 comment=comment, origin="proposal")
    finally:
        if own:
            store.close()
