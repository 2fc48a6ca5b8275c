"""``deeplesion-lab jobs``: the background jobs of a run (state, progress, ETA, log)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "jobs",
        help="list the run's jobs (long steps run in the background), wait for them, start one",
        description=(
            "Long steps (detector training, fine-tuning, detection on every slice, the "
            "background pipeline) run as jobs: one record each in RUN/jobs/ with state, "
            "progress, ETA, who started it and its log. A job killed mid-way shows as "
            "'interrupted'; starting it again resumes. Two copies of one job never run at once."
        ),
    )
    p.add_argument("--run", type=Path, required=True, help="run directory")
    p.add_argument("--wait", action="store_true", help="wait until no job runs")
    p.add_argument("--timeout", type=float, default=None, help="with --wait: give up after S s")
    p.add_argument("--start", metavar="NAME", default=None,
                   help="start job NAME in the background with the deeplesion-lab arguments "
                        "after `--`, e.g. `jobs --run R --start ft -- finetune --run R`")
    p.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _table(recs) -> str:
    if not recs:
        return "no jobs yet"
    return "\n".join(r.summary() for r in recs)


def run(args: argparse.Namespace) -> int:
    from ..errors import LabError
    from ..jobs import read_jobs, start_job, wait_for_jobs
    from ..run import RunDir

    run_dir = RunDir(args.run)
    if not run_dir.path.is_dir():
        raise LabError(f"{run_dir.path}: run directory not found")
    if args.start:
        argv = [a for a in args.command if a != "--"]
        if not argv:
            raise LabError("--start NAME needs the command after `--`")
        rec = start_job(run_dir, args.start, argv)
        print(f"started job {rec.name!r} (pid {rec.pid}); log {rec.log}")
        return 0
    if args.wait:
        last = [""]

        def show(recs) -> None:
            text = _table(recs)
            if text != last[0]:
                print(text, flush=True)
                last[0] = text

        recs = wait_for_jobs(run_dir, timeout=args.timeout, poll_s=2.0, on_update=show)
        return 0 if all(r.state == "done" for r in recs) else 1
    recs = read_jobs(run_dir)
    print(_table(recs))
    sys.stdout.flush()
    return 0
