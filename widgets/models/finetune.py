"""Fine-tuning the run's detector on the current labels, as a background job (:class:`FinetuneModel`)."""

from __future__ import annotations

from deeplesion_lab.errors import LabError
from deeplesion_lab.jobs import JobBusy, format_duration, is_running, read_job, read_jobs, start_job
from deeplesion_lab.run import RunDir

from .labels import LabelState
from .signal import Signal

#: The job's name: the same as the dashboard's and notebook 4's, so only one runs at a time.
JOB_NAME = "finetune"

__all__ = ["JOB_NAME", "FinetuneModel", "finetune_argv", "start_finetune_job"]


def finetune_argv(run: RunDir, user: str, epochs: int | None = None) -> list[str]:
    """``deeplesion-lab finetune --run RUN --user USER [--epochs N]``: fine-tuning on a new
    snapshot of the current labels, recorded as taken by ``user``."""
    argv = ["finetune", "--run", str(run.path), "--user", user]
    if epochs is not None:
        argv += ["--epochs", str(int(epochs))]
    return argv


def start_finetune_job(run: RunDir, user: str, argv: list[str]):
    """Start ``argv`` as the run's :data:`JOB_NAME` job (LesionLab's panel and the dashboard).

    Returns
    -------
    JobRecord

    Raises
    ------
    LabError
        When the job already runs, naming who started it.
    """
    try:
        return start_job(run, JOB_NAME, argv, user=user)
    except JobBusy:
        rec = read_job(run, JOB_NAME)
        by = rec.user if rec is not None and rec.user else "someone"
        raise LabError(f"fine-tuning already running (started by {by})") from None


class FinetuneModel:
    """Start ``deeplesion-lab finetune`` as the run's ``finetune`` job and follow its progress.

    The job runs in its own process group (:func:`deeplesion_lab.jobs.start_job`): closing the
    browser tab or stopping the kernel does not stop it, and ``deeplesion-lab jobs --run RUN``,
    notebook 4 and the dashboard show the same job. It trains on a new snapshot of the current
    labels, recorded as taken by :attr:`LabelState.user`.

    Parameters
    ----------
    run : RunDir
    labels : LabelState
        The store (fine-tuning needs one) and the user.
    epochs : int, optional
        ``--epochs`` for the job (default: the command's).
    """

    def __init__(self, run: RunDir, labels: LabelState, epochs: int | None = None):
        self.run = run
        self.labels = labels
        self.epochs = epochs
        self.changed = Signal()

    def argv(self) -> list[str]:
        """The job's command line (:func:`finetune_argv`)."""
        return finetune_argv(self.run, self.labels.user, self.epochs)

    def blocked(self) -> str | None:
        """Why fine-tuning cannot start now (None: it can)."""
        if self.labels.store is None:
            return "no label store for this run: fine-tuning trains on the store's labels"
        if is_running(self.run, JOB_NAME):
            rec = read_job(self.run, JOB_NAME)
            by = rec.user if rec is not None and rec.user else "someone"
            return f"fine-tuning already runs (started by {by}); it goes on if this tab closes"
        if not any(self.run.detector_dir.glob("*/model.pt")):
            training = [r for r in read_jobs(self.run)
                        if r.name.startswith("train-detector") and r.state == "running"]
            if training:
                r = training[0]
                pct = f" {100 * r.progress:.0f} %" if r.progress is not None else ""
                return f"no detector yet: {r.name} is training ({pct.strip() or 'starting'})"
            return ("no detector yet: train one first (`deeplesion-lab train-detector --run RUN "
                    "--classes pseudo`)")
        return None

    def start(self) -> str:
        """Start the job; returns a message. Raises :class:`LabError` with the reason when
        :meth:`blocked`."""
        why = self.blocked()
        if why is not None:
            raise LabError(f"cannot fine-tune: {why}")
        try:
            rec = start_finetune_job(self.run, self.labels.user, self.argv())
        except LabError as exc:
            raise LabError(f"cannot fine-tune: {exc}") from None
        self.changed.emit()
        return (f"fine-tuning started by {self.labels.user} (process {rec.pid}); it runs in the "
                "background and goes on if this tab closes")

    def state(self) -> dict:
        """The job as the panel shows it: ``state`` (none, starting, running, done, failed,
        interrupted), ``progress`` (0-1 or None), ``eta`` and ``elapsed`` (text), ``message``,
        ``user``, ``blocked`` (why the button is disabled, or "")."""
        rec = read_job(self.run, JOB_NAME)
        out = {"state": "none", "progress": None, "eta": "", "elapsed": "", "message": "",
               "user": "", "exit_code": None, "blocked": self.blocked() or ""}
        if rec is None:
            return out
        running = rec.state in ("starting", "running")  # read_job says "interrupted" if dead
        out.update({
            "state": rec.state, "progress": rec.progress, "message": rec.message, "user": rec.user,
            "eta": format_duration(rec.eta_s) if running and rec.eta_s else "",
            "elapsed": format_duration(rec.elapsed_s) if rec.elapsed_s is not None else "",
            "exit_code": rec.exit_code,
        })
        return out
