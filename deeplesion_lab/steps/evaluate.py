"""The evaluation step: clustering, retrieval and classification figures into ``metrics.json``.

``deeplesion-lab evaluate`` parses its arguments and calls :func:`evaluate_step`; so does the
pipeline. The figures themselves are :func:`deeplesion_lab.evaluation.evaluate_run`'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..errors import LabError
from ..run import RunDir

__all__ = ["evaluate_done", "evaluate_step"]


def evaluate_done(run: RunDir) -> bool:
    """Whether the run's classification figures are in ``metrics.json``."""
    return "classification" in run.load_metrics()


def evaluate_step(
    run: RunDir | str | Path,
    *,
    truth: str | Path | None = None,
    manifest: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> dict:
    """Evaluate the run (:func:`~deeplesion_lab.evaluation.evaluate_run`), merge the figures
    into ``metrics.json`` and say the table; returns the merged metrics.

    Raises
    ------
    LabError
        Not a run directory and no ``manifest``, or a truth file that does not exist.
    """
    # Passive OpenMP waiting: on a busy machine spinning threads slow torch down several-fold.
    # Only effective when torch is not imported yet (it reads the variable when it loads).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ..evaluation import evaluate_run

    run = run if isinstance(run, RunDir) else RunDir(run)
    if manifest is None and not run.run_json.is_file():
        raise LabError(
            f"{run.path} is not a run directory; pass --manifest MANIFEST to evaluate the "
            "metadata of a manifest, or run `deeplesion-lab embed` first"
        )
    if truth is not None and not Path(truth).is_file():
        raise LabError(f"{truth}: truth file not found")
    res = evaluate_run(run.path, truth, manifest, progress=progress, seed=seed)
    metrics = run.update_metrics(res.metrics)
    say(res.table)
    say(f"wrote {run.metrics} ({len(metrics)} sections)")
    return metrics
