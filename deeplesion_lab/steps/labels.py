"""The label-store step: load the run's pseudo-labels into its label store.

``deeplesion-lab labels init`` parses its arguments and calls :func:`init_label_store`; so does
the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..run import RunDir

__all__ = ["init_label_store", "label_store_done"]


def label_store_done(run: RunDir) -> bool:
    """Whether the run has its (SQLite) label store."""
    return run.label_db.is_file()


def init_label_store(
    run: RunDir | str | Path,
    *,
    pseudo: str | Path | None = None,
    run_id: str | None = None,
    user: str = "pipeline",
    db: str | None = None,
    namespace: str | None = None,
    tool: str = "cli",
    say: Callable[[str], None] = print,
):
    """Load ``pseudo`` (default the run's ``pseudo_labels.parquet``) into the run's label store
    (``labels.sqlite``, or ``db``) under ``run_id`` (default the run folder's name); returns the
    store's init report.

    Raises
    ------
    LabelStoreError
        No run directory, no (readable) pseudo-labels, or a store that refuses them.
    """
    import pandas as pd

    from ..labels import LabelStore, LabelStoreError

    run = run if isinstance(run, RunDir) else RunDir(run)
    if not run.path.is_dir():
        raise LabelStoreError(f"{run.path}: run directory not found")
    run.info()
    src = Path(pseudo) if pseudo is not None else run.pseudo_labels
    if not src.is_file():
        raise LabelStoreError(
            f"{src}: pseudo-labels not found; run `deeplesion-lab mine --run {run.path}` first"
        )
    try:
        pl = pd.read_parquet(src)
    except Exception as exc:  # pyarrow raises several types
        raise LabelStoreError(f"{src}: not a readable parquet file ({exc})") from exc
    with LabelStore.for_run(run, db=db, namespace=namespace, init=False,
                            allow_empty=True) as store:
        report = store.init_pseudo_labels(pl, run_id or run.path.resolve().name, user=user,
                                          tool=tool)
        say(report.summary())
        say(f"store: {store.location}")
    return report
