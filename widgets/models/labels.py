"""The current labels and classes of a run, from its label store (:class:`LabelState`)."""

from __future__ import annotations

import getpass

import numpy as np
import pandas as pd

from deeplesion_lab.lesion_types import TYPE_COLORS, UNLABELED_NAME
from deeplesion_lab.run import RunDir

from ..data import LabData
from .signal import CorrectionError, Signal

_FALLBACK_COLORS = (
    "#1B9E77", "#D95F02", "#7570B3", "#E7298A", "#66A61E", "#E6AB02", "#A6761D", "#17BECF",
)


def open_label_store(run: RunDir):
    """The run's label store (``RUN_DIR/labels.sqlite``), bound to its manifest and filled
    with the mined pseudo-labels the first time (:meth:`LabelStore.for_run`)."""
    from deeplesion_lab.labels import LabelStore

    return LabelStore.for_run(run)


class LabelState:
    """Current label, cluster and confidence of every lesion, and the class list.

    Reads and writes go through the label store; the state follows the store's events (its
    own and, on :meth:`refresh` / :meth:`poll`, other processes'), and :attr:`changed` fires
    after each update so that the views recolour.

    Parameters
    ----------
    data : LabData
        The lesions.
    store : LabelStore or None
        The label store. Without one, labels are the mined pseudo-labels (or the official type)
        and corrections raise :class:`CorrectionError`.
    user : str, optional
        Recorded with every change (default: the login name).

    Attributes
    ----------
    labels : numpy.ndarray
        Current label of each lesion row (``"unlabeled"`` where none).
    clusters : numpy.ndarray
        Mined cluster of each row (-1 where none).
    confidence : numpy.ndarray
        Pseudo-label confidence (1.0 once corrected; NaN where unknown).
    corrected : numpy.ndarray
        True where a person has set the label.
    classes : list of dict
        ``{name, color, kind}`` of the taxonomy (plus ``unlabeled``).
    """

    def __init__(self, data: LabData, store=None, user: str | None = None):
        self.data = data
        self.store = store
        self.user = str(user if user is not None else getpass.getuser()).strip()
        if not self.user:
            raise CorrectionError("a user name is needed to record corrections")
        self.changed = Signal()
        n = len(data)
        les = data.lesions
        self.labels = np.full(n, UNLABELED_NAME, dtype=object)
        self.clusters = (
            les["cluster"].to_numpy(dtype=np.int64).copy() if "cluster" in les else np.full(n, -1)
        )
        self.confidence = (
            les["confidence"].to_numpy(dtype=float).copy() if "confidence" in les
            else np.full(n, np.nan)
        )
        self.corrected = np.zeros(n, dtype=bool)
        self.classes: list[dict] = []
        self._index: dict[str, int] = {}
        self._version: int | None = None
        self._codes: np.ndarray | None = None
        self._unsubscribe = None
        if store is not None:
            self._unsubscribe = store.subscribe(lambda event: self.refresh())
        self.refresh(full=True)

    # reading -----------------------------------------------------------------------------------
    def refresh(self, full: bool = False) -> None:
        """Bring labels and classes up to date with the store, then emit :attr:`changed`.

        Only the lesions changed since the last refresh are read, unless ``full`` (or the store
        was re-initialised meanwhile).
        """
        if self.store is None:
            self._from_pseudo_labels()
        else:
            if full or self._version is None:
                cur = self.store.current_labels()
                self._version = int(self.store.version())
            else:
                cur = self.store.changes_since(self._version)
                self._version = int(cur.attrs.get("version", self.store.version()))
            self._apply(cur)
            self._set_classes(self.store.classes().to_dict("records"))
        self._codes = None
        self.changed.emit()

    def poll(self) -> bool:
        """Refresh if someone changed the store since the last refresh; returns whether so."""
        if self.store is None:
            return False
        if int(self.store.version()) == self._version:
            return False
        self.refresh()
        return True

    def _apply(self, cur: pd.DataFrame) -> None:
        if not len(cur):
            return
        rows = np.fromiter(
            (self.data.row_of.get(str(x), -1) for x in cur["lesion_id"]), np.int64, len(cur)
        )
        ok = rows >= 0
        r = rows[ok]
        lab = cur["label"].astype(object).to_numpy()[ok]
        self.labels[r] = [x if isinstance(x, str) and x else UNLABELED_NAME for x in lab]
        cl = pd.to_numeric(cur["cluster"], errors="coerce").fillna(-1).to_numpy()[ok]
        self.clusters[r] = cl.astype(np.int64)
        self.confidence[r] = pd.to_numeric(cur["confidence"], errors="coerce").to_numpy()[ok]
        self.corrected[r] = (cur["source"].astype(object).to_numpy()[ok] == "corrected")

    def _from_pseudo_labels(self) -> None:
        les = self.data.lesions
        n = len(les)
        pseudo = les["pseudo_label"] if "pseudo_label" in les else pd.Series([None] * n)
        typ = les["coarse_type_name"] if "coarse_type_name" in les else pd.Series([None] * n)
        for i, (p, t) in enumerate(zip(pseudo, typ, strict=True)):
            if isinstance(p, str) and p:
                self.labels[i] = p
            elif isinstance(t, str) and t:
                self.labels[i] = t
        self._set_classes([{"name": k, "color": v, "kind": "coarse"} for k, v in TYPE_COLORS.items()
                           if k != UNLABELED_NAME])

    def _set_classes(self, records: list[dict]) -> None:
        classes = [
            {"name": str(c["name"]), "color": str(c.get("color") or "#bbbbbb"),
             "kind": str(c.get("kind") or "")}
            for c in records
        ]
        known = {c["name"] for c in classes}
        for name in pd.unique(self.labels):
            if name not in known and name != UNLABELED_NAME:
                classes.append({"name": name, "color": self._spare_color(len(classes)),
                                "kind": "unknown"})
                known.add(name)
        classes.append({"name": UNLABELED_NAME, "color": TYPE_COLORS[UNLABELED_NAME],
                        "kind": "none"})
        self.classes = classes
        self._index = {c["name"]: i for i, c in enumerate(classes)}

    @staticmethod
    def _spare_color(i: int) -> str:
        return _FALLBACK_COLORS[i % len(_FALLBACK_COLORS)]

    def class_names(self, assignable: bool = False) -> list[str]:
        """Class names; ``assignable`` leaves out ``unlabeled`` (not a label one can give)."""
        return [c["name"] for c in self.classes
                if not assignable or c["name"] != UNLABELED_NAME]

    def color_of(self, name: str) -> str:
        i = self._index.get(name)
        return self.classes[i]["color"] if i is not None else TYPE_COLORS[UNLABELED_NAME]

    def codes(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Class index (into :attr:`classes`) of each lesion row, as uint8 (uint16 if > 255)."""
        if self._codes is None:
            cat = pd.Categorical(self.labels, categories=self.class_names())
            self._codes = cat.codes.astype(np.uint8 if len(self.classes) <= 256 else np.uint16)
        return self._codes if rows is None else self._codes[rows]

    def label_of(self, lesion_id: str) -> str:
        return str(self.labels[self.data.row_of[str(lesion_id)]])

    def need_store(self):
        """The store, or a clear error when the labels are read-only."""
        if self.store is None:
            raise CorrectionError(
                "no label store is open for this run (it has no pseudo-labels yet?); "
                "corrections need `deeplesion-lab mine` first"
            )
        return self.store

    def check_label(self, label: str) -> str:
        """A class of the store's taxonomy, or a clear error."""
        names = self.class_names(assignable=True)
        if label not in names:
            raise CorrectionError(f"unknown class {label!r}; add it first (known: {', '.join(names)})")
        return label

    def history(self, limit: int = 50, **filters) -> pd.DataFrame:
        """The store's event log, newest first (one row per batch)."""
        if self.store is None:
            return pd.DataFrame()
        return self.store.events(limit=limit, **filters)

    def close(self) -> None:
        """Stop following the store."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None


