"""What the store's writes return and report: events, init reports, undo results, op names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

__all__ = [
    "ChangeEvent",
    "InitReport",
    "UndoResult",
    "LABEL_OPS",
    "CLUSTER_OPS",
    "UNDOABLE_OPS",
    "describe_event",
    "empty_conflicts",
]

#: Operations that set labels.
LABEL_OPS = ("relabel", "relabel_cluster", "mark_not_lesion", "mark_unsure")
#: Operations that move lesions between clusters (and may set labels).
CLUSTER_OPS = ("merge_clusters", "split_cluster")
#: Operations a user can undo (comments, class additions and re-initialisations cannot be).
#: Undoing ``add_lesions`` takes the added lesions out of the dataset again (their geometry stays
#: in the append-only ``added_lesions`` table, so a redo or a later re-add restores them).
UNDOABLE_OPS = (*LABEL_OPS, *CLUSTER_OPS, "rename_cluster", "add_lesions", "tag", "untag")


@dataclass(frozen=True)
class ChangeEvent:
    """What a committed write changed; passed to :meth:`LabelStore.subscribe` callbacks.

    Attributes
    ----------
    event_id : int
        The batch id.
    op : str
        ``relabel``, ``relabel_cluster``, ``merge_clusters``, ``split_cluster``,
        ``rename_cluster``, ``mark_not_lesion``, ``mark_unsure``, ``comment``, ``add_class``,
        ``undo``, ``redo``, ``init`` or ``add_lesions``.
    user : str
    lesion_ids : tuple of str
        Lesions whose label or cluster changed (empty for class/cluster-name events; for
        ``init`` every lesion may have changed).
    label : str or None
        The new label when the op set one.
    cluster : int or None
        The cluster concerned, when there is one.
    """

    event_id: int
    op: str
    user: str
    lesion_ids: tuple[str, ...] = ()
    label: str | None = None
    cluster: int | None = None


@dataclass
class InitReport:
    """What :meth:`LabelStore.init_pseudo_labels` did.

    Attributes
    ----------
    run_id : str
        The run now in effect.
    event_id : int or None
        The ``init`` event (None when the same pseudo-labels were already loaded).
    n_lesions : int
        Pseudo-labelled lesions of the run.
    previous_run_id : str or None
        The run it replaced.
    n_corrected : int
        Corrected lesions kept (their corrections stay in force).
    orphaned : list of str
        Corrected lesions that the new run does not contain (their corrected label stays, with no
        cluster).
    unchanged : bool
        True when these pseudo-labels were already the current ones (nothing written).
    """

    run_id: str
    event_id: int | None
    n_lesions: int
    previous_run_id: str | None = None
    n_corrected: int = 0
    orphaned: list[str] = field(default_factory=list)
    unchanged: bool = False

    def summary(self) -> str:
        """One line for humans."""
        if self.unchanged:
            return f"pseudo-labels of run {self.run_id} already loaded ({self.n_lesions} lesions)"
        text = f"loaded {self.n_lesions} pseudo-labels of run {self.run_id} (event {self.event_id})"
        if self.previous_run_id is not None:
            text += f", replacing run {self.previous_run_id}; {self.n_corrected} corrections kept"
        if self.orphaned:
            text += (
                f"; {len(self.orphaned)} corrected lesions are not in the new run: "
                + _ids_text(self.orphaned)
            )
        return text


@dataclass
class UndoResult:
    """What :meth:`LabelStore.undo` / :meth:`LabelStore.redo` did (``int(result)`` = event id).

    Attributes
    ----------
    event_id : int
        The new ``undo``/``redo`` event.
    target_event_id : int
        The batch undone (for undo) or the undo event redone (for redo).
    target_op : str
        The op of the batch that was undone or redone.
    lesion_ids : list of str
        Lesions reverted.
    conflicts : pandas.DataFrame
        Lesions skipped because another annotator changed them later (only with
        ``skip_conflicts=True``; empty otherwise).
    """

    event_id: int
    target_event_id: int
    target_op: str
    lesion_ids: list[str]
    conflicts: pd.DataFrame

    def __int__(self) -> int:
        return self.event_id

    def __repr__(self) -> str:
        return (
            f"UndoResult(event_id={self.event_id}, target_event_id={self.target_event_id}, "
            f"target_op={self.target_op!r}, n_lesions={len(self.lesion_ids)}, "
            f"n_conflicts={len(self.conflicts)})"
        )


def describe_event(op: str, params: dict, n: int, target: Any) -> str:
    """A short human description of an event."""
    if target is not None and not pd.isna(target):
        target = int(target)
    if op in ("relabel", "mark_not_lesion", "mark_unsure"):
        return f"{n} lesions -> {params.get('label', '?')}"
    if op == "relabel_cluster":
        return f"cluster {params.get('cluster')} ({n} lesions) -> {params.get('label')}"
    if op == "merge_clusters":
        extra = f", relabelled {params['label']}" if params.get("label") else ""
        return f"clusters {params.get('clusters')} -> {params.get('into')} ({n} lesions{extra})"
    if op == "split_cluster":
        return f"{n} lesions of cluster {params.get('cluster')} -> new cluster {params.get('new_cluster')}"
    if op == "rename_cluster" or params.get("kind") == "cluster_name":
        head = f"{op} of event {target}: " if op in ("undo", "redo") else ""
        return f"{head}cluster {params.get('cluster')} named {params.get('after')!r}"
    if op == "add_class":
        return f"class {params.get('name')!r} ({params.get('color')}, id {params.get('class_id')})"
    if op == "init":
        return f"pseudo-labels of run {params.get('run_id')} ({params.get('n_lesions')} lesions)"
    if params.get("kind") == "tags":
        head = f"{op} of event {target}: " if op in ("undo", "redo") else ""
        verb = "untagged" if op == "untag" else "tagged"
        tags = ", ".join(params.get("tags") or [])
        return f"{head}{n} tag change(s)" if head else f"{n} lesion tag(s) {verb} {tags}"
    if op in ("undo", "redo"):
        skipped = f", {params['skipped']} skipped (conflicts)" if params.get("skipped") else ""
        return f"{op} of event {target} ({n} lesions{skipped})"
    if op == "add_lesions":
        labels = params.get("labels") or []
        what = f" as {', '.join(labels)}" if labels else ""
        return f"{n} lesions added ({params.get('origin', 'by hand')}){what}"
    if op == "comment":
        return f"comment on {params.get('n_lesions', '?')} lesions"
    return f"{n} changes"


def empty_conflicts() -> pd.DataFrame:
    """An empty conflicts table (the columns of :attr:`UndoResult.conflicts`)."""
    return pd.DataFrame(columns=["lesion_id", "label", "changed_in", "changed_by"])


def _ids_text(ids: list[str], n: int = 5) -> str:
    shown = ", ".join(ids[:n])
    return shown + (f" and {len(ids) - n} more" if len(ids) > n else "")
