"""The contract of the label store's parts: what :class:`~.store.LabelStore` and its mixins
(:mod:`.history`, :mod:`.undo`, :mod:`.snapshots`, :mod:`.replay`, :mod:`.lesions`,
:mod:`.tags`, :mod:`.clusters`, :mod:`.export`) share.

:class:`StoreBase` holds the connection (``_db``, a :class:`~.backend.Backend`), the write
transaction (:meth:`StoreBase._tx`, observers notified after COMMIT), the batch insert
(:meth:`StoreBase._insert_batch`), the checks every write makes, and the one lesion operation
(:meth:`StoreBase._lesion_op`) that relabels and moves lesions. A mixin subclasses it and uses
nothing else of the store but what it declares here.
"""

from __future__ import annotations

import contextlib
import difflib
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import pandas as pd

from . import schema
from .backend import Backend
from .checks import check_comment, check_text, check_user, from_source, list_ids
from .errors import NotInitialisedError, UnknownClassError, UnknownLesionError
from .events import ChangeEvent

__all__ = ["KEEP", "Applied", "Keep", "StoreBase"]


class Keep:
    """Sentinel type: leave this field as it is."""


#: Leave the label (or cluster) of the selected lesions as it is.
KEEP = Keep()


class Applied(NamedTuple):
    """What :meth:`StoreBase._lesion_op` committed."""

    event_id: int
    cluster: int | None


class StoreBase:
    """The connection, transactions, checks and lesion operation the store's parts share.

    Parameters
    ----------
    backend : Backend
        The open connection (SQLite or PostgreSQL).
    """

    def __init__(self, backend: Backend):
        self._db = backend
        self._subscribers: list[Callable[[ChangeEvent], Any]] = []
        #: Test hook: called inside each write transaction just before COMMIT, with the pending
        #: :class:`ChangeEvent` list. Used by the crash tests; leave it None.
        self._before_commit: Callable[[list[ChangeEvent]], Any] | None = None
        #: The id of the last event this object committed.
        self.last_event_id: int | None = None
        #: (version, frame) of the last :meth:`current_labels` read.
        self._current_cache: tuple[int, pd.DataFrame] | None = None


    @property
    def location(self) -> str:
        """The SQLite path or the redacted PostgreSQL URL."""
        return self._db.location

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._db.dialect

    @property
    def dataset_hash(self) -> str | None:
        """The bound dataset's hash (the manifest's ``data_hash``), or None if unbound."""
        return self._db.scalar("SELECT value FROM store_meta WHERE key = 'dataset_hash'")

    @property
    def run_id(self) -> str | None:
        """The pseudo-label run in effect (None before the first init)."""
        return self._db.scalar("SELECT run_id FROM runs ORDER BY seq DESC LIMIT 1")

    def version(self) -> int:
        """The id of the newest event (0 for none): cheap, for polling."""
        return int(self._db.scalar("SELECT COALESCE(MAX(id), 0) FROM batches"))

    def classes(self) -> pd.DataFrame:
        """The taxonomy: ``name``, ``class_id``, ``color``, ``kind``, ``created_by``,
        ``created_at`` (ordered by class id)."""
        rows = self._db.query(
            "SELECT name, class_id, color, kind, created_by, created_at FROM classes "
            "ORDER BY class_id"
        )
        return pd.DataFrame(
            rows, columns=["name", "class_id", "color", "kind", "created_by", "created_at"]
        )

    def subscribe(self, callback: Callable[[ChangeEvent], Any]) -> Callable[[], None]:
        """Call ``callback(event)`` after every change this object commits.

        In-process only (other processes' changes: poll :meth:`version` /
        :meth:`changes_since`). A callback that raises is reported as a warning and does not
        undo the committed change. Returns a function that unsubscribes.
        """
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    def _notify(self, events: list[ChangeEvent]) -> None:
        for ev in events:
            self.last_event_id = ev.event_id
            for cb in list(self._subscribers):
                try:
                    cb(ev)
                except Exception as exc:  # observers must not break writes
                    warnings.warn(
                        f"label store observer {cb!r} failed on event {ev.event_id}: {exc!r}",
                        RuntimeWarning,
                        stacklevel=3,
                    )

    @contextlib.contextmanager
    def _tx(self):
        """A write transaction collecting :class:`ChangeEvent` s; observers run after COMMIT."""
        events: list[ChangeEvent] = []
        with self._db.write():
            yield events
            if self._before_commit is not None:
                self._before_commit(events)
        self._notify(events)

    def _require_dataset(self) -> None:
        if self._db.scalar("SELECT value FROM store_meta WHERE key = 'dataset_hash'") is None:
            raise NotInitialisedError(
                f"{self.location}: the store has no lesions yet; load pseudo-labels first "
                "(init_pseudo_labels / `deeplesion-lab labels init`) or open it with dataset="
            )

    def _class_names(self) -> list[str]:
        return [r[0] for r in self._db.query("SELECT name FROM classes ORDER BY class_id")]

    def _check_class(self, label: Any) -> str:
        if not isinstance(label, str) or not label:
            raise UnknownClassError(f"a label must be a class name (got {label!r})")
        names = self._class_names()
        if label not in names:
            close = difflib.get_close_matches(label, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownClassError(
                f"unknown class {label!r}{hint}; known classes: {', '.join(names)}; add a new "
                "class first with add_class(name, color, user) (CLI: labels add-class); "
                "nothing was written"
            )
        return label

    def _check_known(self, n: int) -> None:
        unknown = [
            r[0]
            for r in self._db.query(
                "SELECT s.lesion_id FROM sel_ids s LEFT JOIN labels_current c "
                "ON c.lesion_id = s.lesion_id WHERE c.lesion_id IS NULL"
            )
        ]
        if unknown:
            meta = schema.read_meta(self._db)
            raise UnknownLesionError(
                f"{len(unknown)} of {n} lesion id(s) are not in this store's dataset "
                f"({meta.get('dataset_hash')}, {meta.get('n_lesions')} lesions"
                f"{from_source(meta.get('dataset_source'))}): {list_ids(unknown)}; "
                "unknown ids or lesions of another dataset; nothing was written",
                unknown,
            )

    def _insert_batch(
        self,
        op: str,
        user: str,
        tool: str,
        comment: str | None,
        n_changes: int,
        params: dict | None = None,
        target: int | None = None,
    ) -> int:
        return self._db.insert_returning_id(
            "INSERT INTO batches (user_name, tool, op, comment, created_at, n_changes, "
            "target_batch, params) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (user, tool, op, comment, schema.now(), n_changes, target, schema.dumps(params)),
        )

    def _record_and_apply(self, bid: int, label: Any, cluster: Any) -> None:
        """Log the selection's before/after rows for batch ``bid`` and update current labels."""
        set_label = label is not KEEP
        set_cluster = cluster is not KEEP
        params: list[Any] = [bid]
        la, fa, sa = "c.label", "c.confidence", "c.source"
        ca = "c.cluster"
        if set_label:
            la, fa, sa = "CAST(? AS TEXT)", "1.0", "'corrected'"
            params.append(label)
        if set_cluster:
            ca = "CAST(? AS BIGINT)"
            params.append(cluster)
        params.append(bid)
        self._db.execute(
            "INSERT INTO changes (batch_id, lesion_id, label_before, label_after, cluster_before, "
            "cluster_after, confidence_before, confidence_after, source_before, source_after, "
            "last_before, last_after) "
            f"SELECT ?, c.lesion_id, c.label, {la}, c.cluster, {ca}, c.confidence, {fa}, "
            f"c.source, {sa}, c.last_batch, ? "
            "FROM sel_ids s CROSS JOIN labels_current c WHERE c.lesion_id = s.lesion_id",
            params,
        )
        sets: list[str] = []
        up: list[Any] = []
        if set_label:
            sets += ["label = ?", "confidence = 1.0", "source = 'corrected'"]
            up.append(label)
        if set_cluster:
            sets.append("cluster = ?")
            up.append(cluster)
        sets.append("last_batch = ?")
        up.append(bid)
        self._db.execute(
            f"UPDATE labels_current SET {', '.join(sets)} "
            "WHERE lesion_id IN (SELECT lesion_id FROM sel_ids)",
            up,
        )


    def _lesion_op(
        self,
        op: str,
        user: str,
        tool: str,
        comment: str | None,
        select: Callable[[], Sequence[str]],
        *,
        params: dict[str, Any],
        label: str | Keep = KEEP,
        cluster: Callable[[], int] | None = None,
        cluster_param: str | None = None,
        check: Callable[[list[str]], None] | None = None,
        event_cluster: int | None = None,
    ) -> Applied:
        """One atomic batch changing the label and/or cluster of a selection of lesions.

        Parameters
        ----------
        op, user, tool, comment
            Recorded with the batch (user, tool and comment are checked first).
        select : callable
            Called inside the transaction: the lesion ids (a cluster's members are read
            there, so the batch sees one consistent state).
        params : dict
            The batch's parameters (what undo and the history show).
        label : str or KEEP
            The new label (a class of the taxonomy), or :data:`KEEP`.
        cluster : callable, optional
            Called inside the transaction: the new cluster id; None keeps the cluster.
        cluster_param : str, optional
            Record the new cluster id in ``params`` under this key.
        check : callable, optional
            ``check(ids)`` inside the transaction; raises to refuse the selection.
        event_cluster : int, optional
            The cluster the :class:`ChangeEvent` names (default the new cluster id).

        Returns
        -------
        Applied
            The event id and the new cluster id (None when the cluster was kept).
        """
        user = check_user(user)
        tool = check_text(tool, "tool")
        comment = check_comment(comment)
        with self._tx() as events:
            self._require_dataset()
            if label is not KEEP:
                self._check_class(label)
            ids = list(select())
            self._db.fill_selection(ids)
            self._check_known(len(ids))
            if check is not None:
                check(ids)
            value = cluster() if cluster is not None else None
            if cluster_param is not None:
                params = {**params, cluster_param: value}
            bid = self._insert_batch(op, user, tool, comment, len(ids), params)
            self._record_and_apply(bid, label, KEEP if cluster is None else value)
            events.append(
                ChangeEvent(
                    bid,
                    op,
                    user,
                    tuple(ids),
                    None if label is KEEP else label,
                    event_cluster if event_cluster is not None else value,
                )
            )
        return Applied(bid, value)

    def current_labels(self) -> pd.DataFrame:
        """The current label of every lesion (:meth:`.store.LabelStore.current_labels`)."""
        raise NotImplementedError
