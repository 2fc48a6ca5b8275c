"""The simulated-corrections step of the demo: a stand-in for annotators, from the truth file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..run import RunDir

__all__ = ["SIMULATED_TOOL", "corrections_done", "simulate_corrections"]

#: The tool recorded with the simulated annotator's events.
SIMULATED_TOOL = "pipeline-simulated"


def corrections_done(run: RunDir, user: str = "demo-annotator") -> bool:
    """Whether the run's label store holds the simulated annotator's corrections (``user``'s
    events recorded with tool :data:`SIMULATED_TOOL`)."""
    from ..labels import LabelStore

    if not run.label_db.is_file():
        return False
    with LabelStore.open(run.label_db, create=False) as store:
        ev = store.events(user=user, limit=1_000_000)
    return bool(len(ev)) and bool((ev["tool"] == SIMULATED_TOOL).any())


def simulate_corrections(run_dir: str | Path | RunDir, truth: str | Path, share: float = 0.5,
                         user: str = "demo-annotator", seed: int = 0) -> int:
    """Stand in for annotators: fix ``share`` of the wrong pseudo-labels using the truth file.

    Corrections go through the label store as ordinary relabel events by ``user`` (one batch per
    true type, tool :data:`SIMULATED_TOOL`), so they appear in history and can be undone like
    any person's work. Returns the number of lesions corrected.
    """
    from ..labels import LabelStore
    from ..lesion_types import COARSE_TYPES

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    t = pd.read_parquet(truth)
    t = t[t["annotated"] & t["lesion_id"].notna()][["lesion_id", "coarse_type"]]
    with LabelStore.open(run.label_db) as store:
        cur = store.current_labels()[["lesion_id", "label"]]
        df = cur.merge(t, on="lesion_id")
        df["true_label"] = df["coarse_type"].map(COARSE_TYPES)
        wrong = df[df["label"] != df["true_label"]]
        rng = np.random.default_rng(seed)
        pick = wrong.sample(n=int(round(len(wrong) * share)),
                            random_state=int(rng.integers(1 << 31)))
        for label, g in pick.groupby("true_label"):
            store.relabel(g["lesion_id"].tolist(), label, user, tool=SIMULATED_TOOL,
                          comment="simulated annotator (truth file)")
    return len(pick)
