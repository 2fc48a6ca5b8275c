"""Long steps of a run as jobs: a record each, progress, ETA, a log, never two copies at once.

A job runs one ``deeplesion-lab`` command (the same one a user would type, so its results are
the foreground command's) in a process of its own, and keeps ``RUN/jobs/NAME.json`` up to date:
state, who started it, progress and ETA (read from the command's progress bars), the last loss
or message, its log (``RUN/jobs/NAME.log``) and exit code.

- **One copy**: the job holds an exclusive ``flock`` on ``RUN/jobs/NAME.lock`` for as long as
  its process or its command lives (the command inherits the lock and dies with the job's
  process). The kernel drops the lock when both are gone, so a job killed with SIGKILL never
  leaves a stale lock, and a second start while it runs is refused (:class:`JobBusy`).
- **Resumable**: a job whose record says ``running`` but whose lock is free died; it is shown
  as ``interrupted``. Starting it again runs the same command, and the lab's long commands
  resume from what they saved (detector ``last.pt``, embedding chunks).
- **Background**: :func:`start_job` returns as soon as the job runs; it survives the shell,
  notebook or browser tab that started it. :func:`run_job` runs one in the foreground.

``deeplesion-lab jobs --run RUN`` lists them; ``deeplesion-lab pipeline --background`` runs the
long steps as jobs.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .atomic import write_json
from .errors import LabError
from .run import RunDir

__all__ = [
    "JobBusy",
    "JobRecord",
    "ProgressParser",
    "format_duration",
    "job_log",
    "job_names",
    "read_job",
    "read_jobs",
    "run_job",
    "start_job",
    "wait_for_jobs",
    "wait_with_progress",
]

STATES = ("starting", "running", "done", "failed", "interrupted")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class JobBusy(LabError):
    """A job of that name is already running in this run."""


@dataclass
class JobRecord:
    """What ``RUN/jobs/NAME.json`` holds."""

    name: str
    argv: list[str]
    state: str = "starting"
    user: str = ""
    pid: int | None = None
    started_at: float | None = None
    updated_at: float | None = None
    finished_at: float | None = None
    progress: float | None = None  # 0-1, from the command's progress bars
    eta_s: float | None = None
    message: str = ""  # the bar's text, e.g. "epoch 3/48 loss=0.51"
    exit_code: int | None = None
    log: str = ""
    history: list[float] = field(default_factory=list)  # loss values seen, for a curve

    @property
    def elapsed_s(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at

    def summary(self) -> str:
        """One line: name, state, progress, ETA, who, log."""
        pct = f"{100 * self.progress:5.1f} %" if self.progress is not None else "   -   "
        eta = f"ETA {format_duration(self.eta_s)}" if self.state == "running" and self.eta_s else ""
        took = format_duration(self.elapsed_s) if self.elapsed_s is not None else "-"
        return (f"{self.name:<24} {self.state:<11} {pct} {eta:<11} {took:>8}  by {self.user or '?'}"
                f"  {self.message[:50]:<50}  {self.log}")


def format_duration(s: float | None) -> str:
    """``'4m05s'`` / ``'42s'`` (``'-'`` for None): how long, or how long left."""
    if s is None:
        return "-"
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _job_dir(run: RunDir) -> Path:
    return run.jobs_dir


def job_log(run: str | Path | RunDir, name: str) -> Path:
    """Where job ``name`` of the run writes its log."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    return _paths(run, name)[2]


def _paths(run: RunDir, name: str) -> tuple[Path, Path, Path]:
    if not _NAME.match(name):
        raise LabError(f"job name {name!r}: use letters, digits, '.', '_', '-' (at most 64)")
    d = _job_dir(run)
    return d / f"{name}.json", d / f"{name}.lock", d / f"{name}.log"


# the lock -----------------------------------------------------------------------------------------
def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path``, or None when another process holds it."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def is_running(run: str | Path | RunDir, name: str) -> bool:
    """Whether job ``name`` holds its lock now (its process or command is alive)."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    fd = _try_lock(_paths(run, name)[1])
    if fd is None:
        return True
    os.close(fd)
    return False


# records ------------------------------------------------------------------------------------------
def _write(run: RunDir, rec: JobRecord) -> None:
    rec.updated_at = time.time()
    write_json(asdict(rec), _paths(run, rec.name)[0])


def read_job(run: str | Path | RunDir, name: str) -> JobRecord | None:
    """The record of job ``name`` (``interrupted`` when it says running but nothing runs)."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    path = _paths(run, name)[0]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise LabError(f"{path}: not a readable job record ({exc})") from None
    data = {k: v for k, v in data.items() if k in JobRecord.__dataclass_fields__}
    rec = JobRecord(**data)
    if rec.state in ("starting", "running") and not is_running(run, name):
        rec.state = "interrupted"
    return rec


def job_names(run: str | Path | RunDir) -> list[str]:
    run = run if isinstance(run, RunDir) else RunDir(run)
    return sorted(p.stem for p in _job_dir(run).glob("*.json"))


def read_jobs(run: str | Path | RunDir) -> list[JobRecord]:
    """Every job record of the run, by start time."""
    recs = [r for n in job_names(run) if (r := read_job(run, n)) is not None]
    return sorted(recs, key=lambda r: r.started_at or 0.0)


# progress -----------------------------------------------------------------------------------------
_BAR = re.compile(r"(?P<desc>[^\r\n|]*?):?\s*\d+%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)"
                  r"(?:\s*\[(?P<info>[^\]]*)\])?")
_OUTER = re.compile(r"(?:epoch|round)\s+(\d+)/(\d+)", re.I)
_LOSS = re.compile(r"loss[=:]\s*([-+0-9.eE]+)")
_STEP = re.compile(r"\(step (\d+)/(\d+)\)")  # the pipeline's steps: bars are parts of a step
_PHASE = re.compile(r"\(phase (\d+)/(\d+)\)")  # a command's phases: bars are parts of a phase


class ProgressParser:
    """Reads a command's output and keeps its overall progress, from tqdm bars.

    A bar described ``epoch K/N`` (the detector's) counts as epoch ``K`` of ``N``, its items as
    the part of that epoch; any other bar as ``n/total``. After a pipeline's ``(step K/N)``
    line, bars count as parts of step ``K`` of ``N``; after a command's ``(phase K/N)`` line
    (fine-tuning: evaluate, train, evaluate), as parts of phase ``K`` of ``N`` (of the step), so
    that the progress of a command with several bars one after another never steps back.
    ``loss=...`` in a bar or a line is the message and goes into ``losses``.
    """

    def __init__(self) -> None:
        self.fraction: float | None = None
        self.message = ""
        self.losses: list[float] = []
        self._tail = ""
        self._step: tuple[int, int] | None = None
        self._phase: tuple[int, int] | None = None

    def feed(self, text: str) -> None:
        parts = re.split(r"[\r\n]", self._tail + text)
        self._tail = parts.pop()  # an unfinished line
        for line in parts:
            self._line(line)

    def _line(self, line: str) -> None:
        step = _STEP.search(line)
        if step:
            self._step = (int(step[1]), max(int(step[2]), 1))
            self._phase = None
            self.fraction = (self._step[0] - 1) / self._step[1]
            self.message = line.strip()[-120:]
            return
        phase = _PHASE.search(line)
        if phase:
            self._phase = (int(phase[1]), max(int(phase[2]), 1))
            self.fraction = self._within(0.0)
            self.message = line.strip()[-120:]
            return
        m = _BAR.search(line)
        if m:
            n, total = int(m["n"]), max(int(m["total"]), 1)
            inner = min(n / total, 1.0)
            outer = _OUTER.search(m["desc"] or "")
            if outer:
                k, kk = int(outer[1]), max(int(outer[2]), 1)
                inner = min(((k - 1) + inner) / kk, 1.0)
            self.fraction = self._within(inner)
            self.message = " ".join(line.replace("|", " ").split())[-120:]
        loss = _LOSS.search(line)
        if loss:
            with contextlib.suppress(ValueError):
                self.losses.append(float(loss[1]))


    def _within(self, inner: float) -> float:
        """``inner`` (0-1) of the current phase, of the current step, as a fraction of all."""
        if self._phase is not None:  # a part of one phase of a command
            k, kk = self._phase
            inner = ((k - 1) + inner) / kk
        if self._step is not None:  # a part of one step of a pipeline
            k, kk = self._step
            inner = ((k - 1) + inner) / kk
        return inner


# running ------------------------------------------------------------------------------------------
def _die_with_parent() -> None:  # in the command's process: end when the job's process ends
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_job(
    run: str | Path | RunDir,
    name: str,
    argv: Sequence[str],
    *,
    user: str | None = None,
    echo: Callable[[str], None] | None = None,
    update_s: float = 1.0,
) -> JobRecord:
    """Run ``deeplesion-lab ARGV`` as job ``name`` here and now; returns its final record.

    Parameters
    ----------
    run : str, pathlib.Path or RunDir
        The run the job belongs to.
    name : str
        The job's name (one copy of a name at a time).
    argv : sequence of str
        The ``deeplesion-lab`` arguments.
    user : str, optional
        Who started it (default: the login name).
    echo : callable, optional
        Receives the command's output as it comes (e.g. ``sys.stderr.write``).
    update_s : float, default 1
        How often the record is rewritten while the command runs.

    Raises
    ------
    JobBusy
        A job of that name is running.
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    rec_path, lock_path, log_path = _paths(run, name)
    fd = _try_lock(lock_path)
    if fd is None:
        other = read_job(run, name)
        pid = f" (pid {other.pid})" if other and other.pid else ""
        raise JobBusy(f"job {name!r} is already running in {run.path}{pid}; "
                      f"see `deeplesion-lab jobs --run {run.path}`")
    try:
        argv = [str(a) for a in argv]
        rec = JobRecord(name=name, argv=argv, state="running", user=user or _login(),
                        pid=os.getpid(), started_at=time.time(), log=str(log_path))
        _write(run, rec)
        parser = ProgressParser()
        env = dict(os.environ, PYTHONUNBUFFERED="1", DLLAB_JOB=name)
        with open(log_path, "ab") as log:
            log.write(f"--- job {name}: deeplesion-lab {' '.join(argv)} ({rec.user}, "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode())
            log.flush()
            proc = subprocess.Popen(
                [sys.executable, "-m", "deeplesion_lab.cli", *argv], stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, env=env, pass_fds=(fd,), preexec_fn=_die_with_parent,
            )
            last = 0.0
            assert proc.stdout is not None
            while chunk := proc.stdout.read1(65536):
                log.write(chunk)
                text = chunk.decode("utf-8", "replace")
                parser.feed(text)
                if echo is not None:
                    echo(text)
                now = time.time()
                if now - last >= update_s:
                    _progress(run, rec, parser)
                    last = now
            code = proc.wait()
            log.flush()
        _progress(run, rec, parser)
        rec.exit_code = code
        rec.finished_at = time.time()
        rec.state = "done" if code == 0 else "failed"
        if code == 0:
            rec.progress, rec.eta_s = 1.0, 0.0
        else:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
            rec.message = (tail[0] if tail else f"exit {code}")[:300]
        _write(run, rec)
        return rec
    finally:
        os.close(fd)


def _progress(run: RunDir, rec: JobRecord, parser: ProgressParser) -> None:
    rec.progress = parser.fraction
    rec.message = parser.message or rec.message
    rec.history = parser.losses[-500:]
    elapsed = rec.elapsed_s or 0.0
    if parser.fraction and parser.fraction > 0.01:
        rec.eta_s = elapsed * (1 - parser.fraction) / parser.fraction
    _write(run, rec)


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (containers)
        return "unknown"


def start_job(
    run: str | Path | RunDir,
    name: str,
    argv: Sequence[str],
    *,
    user: str | None = None,
    timeout: float = 30.0,
) -> JobRecord:
    """Start job ``name`` in the background (its own session: it outlives the caller).

    Returns its record once it runs. Raises :class:`JobBusy` when it already runs.
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    _paths(run, name)
    if is_running(run, name):
        other = read_job(run, name)
        pid = f" (pid {other.pid})" if other and other.pid else ""
        raise JobBusy(f"job {name!r} is already running in {run.path}{pid}")
    before = read_job(run, name)
    cmd = [sys.executable, "-m", "deeplesion_lab.jobs", str(run.path), name, user or _login(),
           "--", *[str(a) for a in argv]]
    _job_dir(run).mkdir(parents=True, exist_ok=True)
    with open(_job_dir(run) / f"{name}.start.log", "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        rec = read_job(run, name)
        if rec is not None and rec.pid == proc.pid and rec != before:
            return rec
        code = proc.poll()
        if code is not None:
            rec = read_job(run, name)
            if code == 3:
                raise JobBusy(f"job {name!r} is already running in {run.path}")
            if rec is not None and rec.pid == proc.pid:
                return rec
            text = (_job_dir(run) / f"{name}.start.log").read_text(errors="replace")
            raise LabError(f"job {name!r} did not start (exit {code}): {text.strip()[-300:]}")
        time.sleep(0.05)
    raise LabError(f"job {name!r} did not start within {timeout:.0f} s")


def wait_for_jobs(
    run: str | Path | RunDir,
    names: Sequence[str] | None = None,
    *,
    timeout: float | None = None,
    poll_s: float = 0.5,
    on_update: Callable[[list[JobRecord]], None] | None = None,
) -> list[JobRecord]:
    """Wait until the jobs (all of the run's by default) are no longer running."""
    t0 = time.monotonic()
    while True:
        recs = [r for r in read_jobs(run) if names is None or r.name in names]
        if on_update is not None:
            on_update(recs)
        if not any(r.state in ("starting", "running") for r in recs):
            return recs
        if timeout is not None and time.monotonic() - t0 > timeout:
            raise LabError(f"jobs still running after {timeout:.0f} s: "
                           + ", ".join(r.name for r in recs if r.state == "running"))
        time.sleep(poll_s)


def wait_with_progress(
    run: str | Path | RunDir, names: Sequence[str] | None = None, *, poll_s: float = 2.0
) -> list[JobRecord]:
    """Wait for the run's running jobs with one progress bar each (a notebook widget in
    Jupyter), saying what is waited for; returns at once when nothing runs.

    Notebooks that need a background step's output (``make lab`` trains the detectors in the
    background) call this first, so they show the training's progress and ETA, then go on
    with its results, with no kernel restart.

    Raises
    ------
    LabError
        A job it waited for failed (its name and log).
    """
    from tqdm.auto import tqdm

    run = run if isinstance(run, RunDir) else RunDir(run)
    waiting = [r for r in read_jobs(run) if r.state in ("starting", "running")
               and (names is None or r.name in names)]
    if not waiting:
        return []
    print("waiting for the background job(s) " + ", ".join(r.name for r in waiting)
          + f" of {run.path} (`deeplesion-lab jobs --run {run.path}`)", flush=True)
    bars = {r.name: tqdm(total=1000, desc=r.name, unit="‰", leave=True) for r in waiting}

    def show(recs: list[JobRecord]) -> None:
        for rec in recs:
            bar = bars[rec.name]
            bar.n = int(1000 * (rec.progress or 0.0))
            eta = f"ETA {format_duration(rec.eta_s)}" if rec.eta_s and rec.state == "running" else ""
            bar.set_postfix_str(f"{rec.state} {eta} {rec.message[-40:]}".strip(), refresh=True)

    try:
        recs = wait_for_jobs(run, list(bars), poll_s=poll_s, on_update=show)
    finally:
        for bar in bars.values():
            bar.close()
    failed = [r for r in recs if r.state != "done"]
    if failed:
        raise LabError("; ".join(f"job {r.name!r} {r.state} ({r.message}); log {r.log}"
                                 for r in failed))
    return recs


@contextlib.contextmanager
def _quiet_sigint() -> Iterator[None]:
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _main(argv: list[str]) -> int:
    """``python -m deeplesion_lab.jobs RUN NAME USER -- ARGV...`` (what :func:`start_job` runs)."""
    if len(argv) < 4 or argv[3] != "--":
        print("usage: python -m deeplesion_lab.jobs RUN NAME USER -- ARGV...", file=sys.stderr)
        return 2
    run, name, user, rest = argv[0], argv[1], argv[2], argv[4:]
    try:
        with _quiet_sigint():  # a Ctrl-C in the starting terminal does not reach the job
            rec = run_job(run, name, rest, user=user)
    except JobBusy as exc:
        print(exc, file=sys.stderr)
        return 3
    return 0 if rec.state == "done" else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main(sys.argv[1:]))
