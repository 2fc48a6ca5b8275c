"""The report step: ``report.html`` from the run's metrics and outputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..run import RunDir

__all__ = ["report_done", "report_step"]


def report_done(run: RunDir) -> bool:
    """Whether ``report.html`` exists and is newer than ``metrics.json`` (every step that
    changes what the report shows writes its figures there)."""
    if not run.report.is_file():
        return False
    return not run.metrics.is_file() or run.report.stat().st_mtime >= run.metrics.stat().st_mtime


def report_step(run: RunDir | str | Path, out: str | Path | None = None, *,
                say: Callable[[str], None] = print) -> Path:
    """Write the run's report (:func:`deeplesion_lab.report.write_report`); returns its path."""
    from ..report import write_report

    run = run if isinstance(run, RunDir) else RunDir(run)
    run.info()  # a clear error if this is not a run directory
    path = write_report(run.path, out)
    say(f"wrote {path}")
    return path
