"""The correction panel widget: every correction goes through the label store, with the user."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import traitlets as t

from deeplesion_lab.errors import LabError

from .lab_widget import LabWidget
from .models import CorrectionModel, Signal

__all__ = ["CorrectionPanel", "history_records"]


def history_records(events: pd.DataFrame, limit: int = 50) -> list[dict]:
    """The store's event log as short JSON rows for the history list.

    Each row: ``event, time, user, tool, op, n, comment, detail, undone``.
    """
    out: list[dict] = []
    if events is None or not len(events):
        return out

    def txt(v) -> str:
        return "" if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA else str(v)

    for rec in events.head(limit).to_dict("records"):
        n = rec.get("n_changes")
        out.append(
            {
                "event": int(rec["event_id"]),
                "time": txt(rec.get("created_at"))[:19].replace("T", " "),
                "user": txt(rec.get("user")),
                "tool": txt(rec.get("tool")),
                "op": txt(rec.get("op")),
                "n": int(n) if n is not None and not pd.isna(n) else 0,
                "comment": txt(rec.get("comment")),
                "detail": _singular(txt(rec.get("detail"))),
                "undone": not pd.isna(rec.get("undone_by")) if "undone_by" in rec else False,
            }
        )
    return out


def _singular(text: str) -> str:
    """``"1 lesions"`` -> ``"1 lesion"`` in the store's event descriptions."""
    return re.sub(r"(?<![\d.,])1 lesions\b", "1 lesion", text)


class CorrectionPanel(LabWidget):
    """Relabel the map's selection or whole clusters, merge/split, add classes, undo/redo,
    "suggest next" and the history list.

    The front end writes a ``request`` (``{op, ..., nonce}``); the answer comes back in
    ``status``. Errors (empty selection, unknown class) are shown there, nothing is written.

    Parameters
    ----------
    model : CorrectionModel
        The headless corrections model (labels, store, map selection).
    n_suggestions : int, default 20
        How many lesions "suggest next" lists.
    poll_seconds : float, default 5
        How often the front end asks for other annotators' changes (0: never).
    lab_actions : bool, default False
        Offer *Snapshot* and *Export* (``LesionLab`` turns them on; the dashboard has its own,
        role-checked ones, so its panel refuses these requests).
    show_simulated : bool, default False
        List the pipeline's simulated annotator's corrections in the history too (a demo run's
        pipeline makes some before fine-tuning; the panel says how many it hides).

    Attributes
    ----------
    lesion_requested : Signal
        Emits a lesion id when the user clicks a suggestion (the lab shows it).
    """

    _esm = Path(__file__).with_name("correction_panel.js")
    _css = Path(__file__).with_name("correction_panel.css")

    user = t.Unicode("").tag(sync=True)
    classes = t.List(t.Dict()).tag(sync=True)
    selection_count = t.Int(0).tag(sync=True)
    selection_labels = t.Dict().tag(sync=True)
    clusters = t.List(t.Dict()).tag(sync=True)
    history = t.List(t.Dict()).tag(sync=True)
    suggestions = t.List(t.Dict()).tag(sync=True)
    request = t.Dict().tag(sync=True)
    status = t.Dict().tag(sync=True)
    poll_seconds = t.Float(5.0).tag(sync=True)
    show_simulated = t.Bool(False).tag(sync=True)
    simulated = t.Dict().tag(sync=True)
    lab_actions = t.Bool(False).tag(sync=True)

    def __init__(self, model: CorrectionModel, n_suggestions: int = 20, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.n_suggestions = int(n_suggestions)
        self.lesion_requested = Signal()
        self.user = model.labels.user
        model.labels.changed.connect(self._on_labels)
        model.map.selection_changed.connect(self._on_selection)
        self._on_labels()
        self._on_selection(model.map.selection)


    # model -> traits ---------------------------------------------------------------------------
    def _on_labels(self) -> None:
        lab = self.model.labels
        counts = np.bincount(lab.codes().astype(np.int64), minlength=len(lab.classes))
        with self._quietly():
            self.classes = [
                {"name": c["name"], "color": c["color"], "n": int(counts[i])}
                for i, c in enumerate(lab.classes)
            ]
            self.clusters = self.model.clusters().to_dict("records")
            self.simulated = self.model.simulated_summary()
            self.history = history_records(
                self.model.history(limit=50, simulated=self.show_simulated))
        self._on_selection(self.model.map.selection)
        if self.suggestions:
            self._refresh_suggestions()

    def _on_selection(self, selection) -> None:
        lab = self.model.labels
        rows = self.model.data.point_rows[np.asarray(selection, dtype=np.int64)]
        counts = np.bincount(lab.codes(rows).astype(np.int64), minlength=len(lab.classes))
        names = lab.class_names()
        with self._quietly():
            self.selection_count = len(selection)
            self.selection_labels = {names[i]: int(c) for i, c in enumerate(counts) if c}

    def _refresh_suggestions(self) -> None:
        df = self.model.suggestions(top=self.n_suggestions)
        recs = [
            {
                "lesion_id": r.lesion_id,
                "label": r.label,
                "score": round(float(r.score), 3),
                "reason": r.reason,
                "point": int(r.point),
            }
            for r in df.itertuples(index=False)
        ]
        with self._quietly():
            self.suggestions = recs

    # front end -> model ------------------------------------------------------------------------
    @t.observe("show_simulated")
    def _toggle_simulated(self, change) -> None:
        if not self._quiet:
            self._on_labels()

    @t.observe("request")
    def _on_request(self, change) -> None:
        req = dict(change["new"] or {})
        if self._quiet or not req:
            return
        status = self._answer(req)
        if req.get("op") == "poll" and status["ok"] and not status["message"]:
            return
        with self._quietly():
            self.status = status

    def handle(self, req: dict) -> str:
        """Carry out one request from the front end; returns the status message.

        Raises
        ------
        LabError
            The request cannot be carried out (the message says why); nothing was written.
        """
        m = self.model
        op = req.get("op")
        comment = (str(req.get("comment") or "").strip() or None)
        if op == "relabel":
            n = len(m.map.selection)
            ev = m.relabel_selection(str(req.get("label", "")), comment)
            return f"relabelled {n} lesion(s) as {req.get('label')} (event {ev})"
        if op == "mark":
            n = len(m.map.selection)
            ev = m.mark_selection(str(req.get("label", "")), comment)
            return f"marked {n} lesion(s) {req.get('label')} (event {ev})"
        if op == "relabel_cluster":
            ev = m.relabel_cluster(int(req["cluster"]), str(req.get("label", "")), comment)
            return f"cluster {req['cluster']} relabelled as {req.get('label')} (event {ev})"
        if op == "merge":
            ev = m.merge_clusters(int(req["source"]), int(req["target"]), comment)
            return f"cluster {req['source']} merged into {req['target']} (event {ev})"
        if op == "split":
            n = len(m.map.selection)
            new = m.split_selection(str(req.get("label") or ""), req.get("color"), comment)
            return f"split {n} lesion(s) off into cluster {new} ({str(req.get('label')).strip()})"
        if op == "add_class":
            name = str(req.get("name") or "").strip()
            m.add_class(name, req.get("color"))
            return f"class {name} added"
        if op == "undo":
            res = m.undo()
            return f"undone event {res.target_event_id} ({res.target_op}, {len(res.lesion_ids)} lesion(s))"
        if op == "redo":
            res = m.redo()
            return f"redone event {res.target_event_id} ({len(res.lesion_ids)} lesion(s))"
        if op == "suggest":
            self._refresh_suggestions()
            return f"{len(self.suggestions)} lesion(s) to review, most suspicious first"
        if op == "select_cluster":
            sel = m.map.select_cluster(int(req["cluster"]))
            return f"cluster {req['cluster']}: {len(sel)} lesion(s) selected"
        if op == "clear_selection":
            m.map.clear_selection()
            return "selection cleared"
        if op == "show":
            lid = str(req.get("lesion_id", ""))
            m.data.row(lid)  # a clear error for an unknown id
            self.lesion_requested.emit(lid)
            return f"showing {lid}"
        if op == "refresh":
            m.labels.refresh(full=True)
            return "up to date with the store"
        if op == "poll":
            return "others' changes loaded" if m.labels.poll() else ""
        if op in ("snapshot", "export"):
            if not self.lab_actions:
                raise LabError(f"{op} is not offered here")
            if op == "snapshot":
                sid = m.snapshot(str(req.get("name") or ""), comment)
                return f"snapshot {sid} saved: fine-tune on it with `deeplesion-lab finetune --snapshot {sid}`"
            return f"labels exported to {m.export(str(req.get('format') or 'csv'))}"
        if op == "show_simulated":
            self.show_simulated = bool(req.get("show"))
            sim = self.simulated or {}
            return (f"history {'with' if self.show_simulated else 'without'} the simulated "
                    f"annotator's {sim.get('events', 0)} event(s)")
        raise LabError(f"unknown request {op!r}")
