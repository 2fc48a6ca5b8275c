"""Reviewing mined lesions (the lesion graph's proposals) in the slice viewer
(:class:`ReviewModel`)."""

from __future__ import annotations

import math

import pandas as pd

from deeplesion_lab.graph.lesion_table import GraphError
from deeplesion_lab.graph.review import (
    decide_proposals,
    proposal_status,
    read_proposals,
    review_queue,
)
from deeplesion_lab.labels.taxonomy import NOT_A_LESION, UNSURE
from deeplesion_lab.run import RunDir

from .labels import LabelState
from .signal import CorrectionError, Signal
from .viewer import ViewerModel

__all__ = ["ReviewModel"]


class ReviewModel:
    """Walk a run's proposals best first, in the viewer, and decide each.

    Every decision (accept, accept as a type, reject) is one event of the label store with the
    user (:func:`deeplesion_lab.graph.review.decide_proposals`), undoable with :meth:`undo`; after a
    decision the review moves on to the next pending proposal. Decisions made elsewhere (another
    annotator, the dashboard, the API) show up on :meth:`refresh`, which runs whenever the
    labels change.

    Parameters
    ----------
    run : RunDir
        The run (``graph/proposals.parquet``).
    labels : LabelState
        The run's labels (its store records the decisions).
    viewer : ViewerModel
        The viewer that shows the proposal under review (its key slice, the proposal's box
        highlighted among the mined candidates).
    tool : str, default "review"
        Recorded with every decision.
    show_lesion : callable, optional
        Shows a lesion (the lab's: viewer, map ring and gallery); default the viewer's.

    Attributes
    ----------
    queue : pandas.DataFrame
        The proposals in review order with their status (:func:`proposal_status`).
    index : int
        Position of the proposal under review in :attr:`queue` (-1: none).
    pending_only : bool
        Whether :meth:`next` / :meth:`prev` skip decided proposals.
    active : bool
        Whether a review is under way: set by the first move; until then a refresh (e.g. after
        a correction elsewhere in the lab) colours the candidates but does not move the viewer.
    changed : Signal
        Emitted after every move, decision or refresh.
    """

    def __init__(self, run: RunDir, labels: LabelState, viewer: ViewerModel,
                 tool: str = "review", show_lesion=None):
        self.run = run
        self.show_lesion = show_lesion
        self.labels = labels
        self.viewer = viewer
        self.tool = tool
        self.pending_only = True
        self.active = False
        self.changed = Signal()
        self.error: str | None = None
        try:
            self._proposals = review_queue(read_proposals(run))
        except GraphError as e:  # no graph step yet: the panel says so
            self._proposals = None
            self.error = str(e)
        self.queue = pd.DataFrame()
        self.index = -1
        self.refresh(emit=False)
        if len(self.queue):
            pending = self._positions("pending")
            self.index = pending[0] if pending else 0
        labels.changed.connect(self.refresh)

    # state -------------------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        """Whether the run has proposals to review."""
        return self._proposals is not None and len(self._proposals) > 0

    def refresh(self, emit: bool = True) -> None:
        """Read the decisions from the store again."""
        if self._proposals is None:
            self.queue = pd.DataFrame()
        else:
            store = self.labels.store
            added = store.added_lesions() if store is not None else pd.DataFrame()
            self.queue = proposal_status(self._proposals, added)
        if emit:
            self._mark()
            self.changed.emit()

    def counts(self) -> dict[str, int]:
        """How many proposals are pending, accepted and rejected."""
        s = self.queue["status"].value_counts() if len(self.queue) else pd.Series(dtype=int)
        return {k: int(s.get(k, 0)) for k in ("pending", "accepted", "rejected")} | {
            "total": len(self.queue)}

    def current(self) -> dict | None:
        """The proposal under review, as plain values (None when there is none)."""
        if not (0 <= self.index < len(self.queue)):
            return None
        r = self.queue.iloc[self.index]

        def num(v):
            v = float(v) if v is not None and not pd.isna(v) else float("nan")
            return round(v, 3) if math.isfinite(v) else None

        return {
            "proposal_id": str(r["proposal_id"]),
            "position": self.index + 1,
            "file_name": str(r["file_name"]),
            "box": [float(r[c]) for c in ("x1", "y1", "x2", "y2")],
            "score": num(r["score"]),
            "rank_score": num(r.get("rank_score")),
            "similarity": num(r.get("similarity")),
            "neighbour_support": num(r.get("neighbour_support")),
            "nearest_lesion_id": (str(r["nearest_lesion_id"])
                                  if isinstance(r.get("nearest_lesion_id"), str) else None),
            "status": str(r["status"]),
            "decided_label": r["decided_label"] if isinstance(r["decided_label"], str) else None,
            "decided_by": r["decided_by"] if isinstance(r["decided_by"], str) else None,
        }

    def types(self) -> list[str]:
        """Classes a proposal can be accepted as (the keys 1-9 take them in this order)."""
        return [c for c in self.labels.class_names(assignable=True)
                if c not in (NOT_A_LESION, UNSURE)]

    # moving ------------------------------------------------------------------------------------
    def _positions(self, status: str | None = None) -> list[int]:
        if not len(self.queue):
            return []
        if status is None:
            return list(range(len(self.queue)))
        return [int(i) for i in (self.queue["status"].to_numpy() == status).nonzero()[0]]

    def go(self, position: int) -> dict | None:
        """Review the proposal at ``position`` (0-based) of :attr:`queue`."""
        if not len(self.queue):
            raise CorrectionError(self.error or "this run has no proposals to review")
        if not 0 <= int(position) < len(self.queue):
            raise CorrectionError(f"position {position} out of range 0-{len(self.queue) - 1}")
        self.index = int(position)
        self.active = True
        cur = self.current()
        self.viewer.show_image(cur["file_name"], show=self.show_lesion)
        self._mark()
        self.changed.emit()
        return cur

    def start(self) -> dict | None:
        """Start (or resume) the review: show the proposal under review in the viewer."""
        if not len(self.queue):
            raise CorrectionError(self.error or "this run has no proposals to review")
        return self.go(max(self.index, 0))

    def go_to(self, proposal_id: str) -> dict | None:
        """Review one proposal by id."""
        hit = (self.queue["proposal_id"].astype(str) == str(proposal_id)).to_numpy().nonzero()[0] \
            if len(self.queue) else []
        if not len(hit):
            raise CorrectionError(f"unknown proposal {proposal_id!r}")
        return self.go(int(hit[0]))

    def step(self, delta: int = 1) -> dict | None:
        """The next (``delta`` > 0) or previous proposal; pending ones only when
        :attr:`pending_only`. Stays put at either end."""
        if not self.active and len(self.queue):
            return self.start()
        pos = self._positions("pending" if self.pending_only else None)
        if not pos:
            self.changed.emit()
            return self.current()
        if delta > 0:
            later = [p for p in pos if p > self.index]
            target = later[0] if later else None
        else:
            earlier = [p for p in pos if p < self.index]
            target = earlier[-1] if earlier else None
        if target is None:
            self.changed.emit()
            return self.current()
        return self.go(target)

    def set_pending_only(self, value: bool) -> None:
        self.pending_only = bool(value)
        self.changed.emit()

    # deciding ----------------------------------------------------------------------------------
    def _decide(self, decision: str, label: str | None = None,
                comment: str | None = None) -> int | None:
        cur = self.current()
        if cur is None:
            raise CorrectionError(self.error or "no proposal to decide on")
        store = self.labels.need_store()
        if label is not None:
            self.labels.check_label(label)
        if cur["status"] != "pending":
            raise CorrectionError(
                f"proposal {cur['proposal_id']} was {cur['status']} by {cur['decided_by']}; "
                "undo that decision first (or relabel the lesion)"
            )
        eid = decide_proposals(self.run, [cur["proposal_id"]], decision, self.labels.user,
                               label=label, comment=comment, store=store, tool=self.tool)
        self.labels.refresh()  # also refreshes this model (labels.changed)
        nxt = [p for p in self._positions("pending") if p > self.index] or \
            self._positions("pending")
        if nxt:
            self.go(nxt[0])
        return eid

    def accept(self, label: str | None = None, comment: str | None = None) -> int | None:
        """Accept the proposal under review as a new lesion (``label``: as that type)."""
        return self._decide("accept", label, comment)

    def accept_as(self, number: int) -> int | None:
        """Accept as the ``number``-th type of :meth:`types` (1-based, the keys 1-9)."""
        types = self.types()
        if not 1 <= int(number) <= len(types):
            raise CorrectionError(f"type number {number} out of range 1-{len(types)}")
        return self.accept(types[int(number) - 1])

    def reject(self, comment: str | None = None) -> int | None:
        """Reject the proposal under review (recorded as "not a lesion")."""
        return self._decide("reject", None, comment)

    def undo(self):
        """Undo the user's latest change (a decision or any other correction); the review goes
        back to the proposal it concerned when it was one."""
        store = self.labels.need_store()
        res = store.undo(self.labels.user, tool=self.tool)
        self.labels.refresh()
        if len(self.queue):
            ids = set(res.lesion_ids)
            hit = [i for i, p in enumerate(self.queue["proposal_id"].astype(str)) if p in ids]
            if hit:
                self.go(hit[0])
        return res

    def decisions(self) -> pd.DataFrame:
        """The decided proposals, newest first."""
        if not len(self.queue):
            return pd.DataFrame(columns=["proposal_id", "status", "decided_label", "decided_by"])
        d = self.queue[self.queue["status"] != "pending"]
        return d.sort_values("event_id", ascending=False)[
            ["proposal_id", "file_name", "status", "decided_label", "decided_by", "decided_at",
             "score"]].reset_index(drop=True)

    # the viewer --------------------------------------------------------------------------------
    def _mark(self) -> None:
        """Tell the viewer which candidate is under review and the status of each."""
        status = ({str(p): str(v) for p, v in zip(self.queue["proposal_id"],
                                                   self.queue["status"], strict=True)}
                  if len(self.queue) else {})
        cur = self.current() if self.active else None
        self.viewer.set_review(cur["proposal_id"] if cur else None, status)
