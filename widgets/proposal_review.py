"""Reviewing mined lesions: a panel that walks the lesion graph's proposals in the slice viewer,
best first, with accept / reject / accept-as-type buttons and keyboard shortcuts."""

from __future__ import annotations

from pathlib import Path

import ipywidgets as ipw
import traitlets as t

from deeplesion_lab.errors import LabError
from deeplesion_lab.run import RunDir

from .data import LabData
from .lab_widget import LabWidget
from .models import LabelState, ViewerModel, open_label_store
from .models.review import ReviewModel

__all__ = ["ProposalReview", "ProposalReviewPanel"]


class ProposalReviewPanel(LabWidget):
    """The review panel of a :class:`~widgets.models.review.ReviewModel`.

    The front end writes a ``request`` (``{op, ..., nonce}``: ``accept`` (``label``: as a type),
    ``reject``, ``next``, ``prev``, ``go`` (``position``), ``go_to``
    (``proposal_id``), ``undo``, ``pending_only``
    (``value``), ``refresh``, ``start``); the answer comes back in ``status``. Keys, after a click in the
    panel: ``a`` accept, ``r`` reject, ``1``-``9`` accept as the n-th type, ``j``/``→`` next,
    ``k``/``←`` previous, ``u`` undo.

    Parameters
    ----------
    model : ReviewModel
    """

    _esm = Path(__file__).with_name("proposal_review.js")
    _css = Path(__file__).with_name("proposal_review.css")

    user = t.Unicode("").tag(sync=True)
    available = t.Bool(False).tag(sync=True)
    message = t.Unicode("").tag(sync=True)
    counts = t.Dict().tag(sync=True)
    current = t.Dict().tag(sync=True)
    types = t.List(t.Dict()).tag(sync=True)
    pending_only = t.Bool(True).tag(sync=True)
    active = t.Bool(False).tag(sync=True)
    decisions = t.List(t.Dict()).tag(sync=True)
    request = t.Dict().tag(sync=True)
    status = t.Dict().tag(sync=True)

    def __init__(self, model: ReviewModel, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.user = model.labels.user
        model.changed.connect(self._sync)
        self._sync()

    def _sync(self) -> None:
        m = self.model
        with self._quietly():
            self.available = m.available
            self.message = m.error or ("" if m.available else "this run has no proposals")
            self.counts = m.counts()
            self.current = m.current() or {}
            self.types = [{"name": n, "color": m.labels.color_of(n)} for n in m.types()]
            self.pending_only = m.pending_only
            self.active = m.active
            d = m.decisions().head(8)
            self.decisions = [
                {"proposal_id": str(r.proposal_id), "status": str(r.status),
                 "label": r.decided_label if isinstance(r.decided_label, str) else "",
                 "user": r.decided_by if isinstance(r.decided_by, str) else ""}
                for r in d.itertuples(index=False)
            ]

    @t.observe("request")
    def _on_request(self, change) -> None:
        req = dict(change["new"] or {})
        if self._quiet or not req:
            return
        status = self._answer(req)
        with self._quietly():
            self.status = status

    def handle(self, req: dict) -> str:
        """Carry out one request from the front end; returns the status message.

        Raises
        ------
        LabError
            It cannot be carried out (the message says why); nothing was written.
        """
        m = self.model
        op = req.get("op")
        cur = m.current()
        pid = cur["proposal_id"] if cur else None
        if op == "accept":
            label = req.get("label") or None
            eid = m.accept(label)
            return f"accepted {pid}{' as ' + label if label else ''} (event {eid})"
        if op == "reject":
            eid = m.reject()
            return f"rejected {pid} (event {eid})"
        if op == "next":
            m.step(1)
            return ""
        if op == "prev":
            m.step(-1)
            return ""
        if op == "go":
            m.go(int(req["position"]))
            return ""
        if op == "go_to":
            m.go_to(str(req["proposal_id"]))
            return ""
        if op == "undo":
            res = m.undo()
            return f"undid event {res.target_event_id} ({res.target_op})"
        if op == "pending_only":
            m.set_pending_only(bool(req.get("value")))
            return ""
        if op == "refresh":
            m.labels.refresh()
            return ""
        if op == "start":
            m.start()
            return ""
        raise LabError(f"unknown request {op!r}")


class ProposalReview(ipw.Box):
    """Review a run's proposals (mined, unannotated lesions) on their own: the review panel
    beside a slice viewer that shows each proposal on its key slice.

    Parameters
    ----------
    run_dir : str or pathlib.Path
        A run with ``graph/proposals.parquet`` (the pipeline's graph step) and a label store.
    user : str, optional
        Who decides (default: the login name).
    store : LabelStore or "auto"
        An open store, or the run's ``labels.sqlite`` (default).
    size : int, default 512
        Side of the slice viewer in CSS pixels.

    Examples
    --------
    >>> ProposalReview("runs/demo", user="alice")  # doctest: +SKIP
    """

    def __init__(self, run_dir: str | Path, user: str | None = None, *, store="auto",
                 size: int = 512, **kwargs):
        from .slice_viewer import SliceViewer

        run = RunDir(run_dir)
        data = LabData.from_run(run)
        if isinstance(store, str) and store == "auto":
            store = open_label_store(run) if run.pseudo_labels.is_file() else None
        labels = LabelState(data, store, user)
        viewer = ViewerModel(data, labels)
        self.model = ReviewModel(run, labels, viewer)
        self.panel = ProposalReviewPanel(self.model, layout=ipw.Layout(width="360px"))
        self.viewer = SliceViewer(viewer, canvas_size=size)
        if self.model.available:
            self.model.start()
        kwargs.setdefault("layout", ipw.Layout(display="flex", flex_flow="row wrap",
                                               align_items="flex-start"))
        super().__init__(children=[self.panel, self.viewer], **kwargs)
