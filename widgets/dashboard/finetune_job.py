"""Fine-tuning started from the dashboard, as the run's ``finetune`` job."""

from __future__ import annotations

from pathlib import Path

from deeplesion_lab.jobs import format_duration, read_job
from deeplesion_lab.run import RunDir

from ..models.finetune import JOB_NAME, finetune_argv, start_finetune_job

__all__ = ["FinetuneJob"]


class FinetuneJob:
    """Fine-tuning started from the dashboard: the run's ``finetune`` job
    (:mod:`deeplesion_lab.jobs`), so it outlives the browser tab and the server, never runs
    twice at once, and shows in ``deeplesion-lab jobs`` and notebook 4 like any other job.

    The command and the start are LesionLab's (:mod:`widgets.models.finetune`); this class
    adds the dashboard's status line and log tail.
    """

    name = JOB_NAME

    def __init__(self, run: RunDir):
        self.run = run

    def argv(self, user: str) -> list[str]:
        """``deeplesion-lab finetune --run RUN --user USER``: trains on a new snapshot of the
        current labels, recorded as taken by ``user`` (the command LesionLab's panel runs)."""
        return finetune_argv(self.run, user)

    def record(self):
        return read_job(self.run, self.name)

    def start(self, user: str) -> str:
        """Start the job as ``user``; :class:`LabError` when it already runs."""
        rec = start_finetune_job(self.run, user, self.argv(user))
        return f"fine-tuning started by {user} (job {rec.name}, process {rec.pid})"

    def status(self) -> str:
        rec = self.record()
        if rec is None:
            return "not started"
        if rec.state == "running":
            pct = f"{100 * rec.progress:.0f} %" if rec.progress is not None else "starting"
            eta = f", about {format_duration(rec.eta_s)} left" if rec.eta_s else ""
            return f"running: {pct}{eta} (started by {rec.user})"
        if rec.state == "done":
            return f"finished with exit code 0 (started by {rec.user})"
        if rec.state == "failed":
            return f"failed with exit code {rec.exit_code} (started by {rec.user}): {rec.message}"
        return f"{rec.state} (started by {rec.user}); start it again to resume"

    def progress(self) -> float | None:
        rec = self.record()
        return rec.progress if rec is not None else None

    def log_tail(self, n: int = 15) -> str:
        rec = self.record()
        if rec is None:
            return ""
        try:
            text = Path(rec.log).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        lines = [ln.split("\r")[-1] for ln in text.splitlines()]  # a bar's last state
        return "\n".join(lines[-n:])
