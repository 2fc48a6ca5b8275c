"""Load on the served dashboard: N collaborators relabelling at once, on loopback.

Usage: .venv/bin/python bench/bench_dashboard_load.py [--sessions 10] [--seconds 60]
       [--patients 4] [--poll-ms 1000] [--think 2 0.3]

Starts ``python -m widgets.dashboard`` (login required) on a free loopback port over a
tiny demo run, then drives N sessions with :func:`widgets.dashboard.client.run_load`: each
signs in over HTTP, opens its page's Bokeh session over the websocket with its cookie and, until
the time is up, selects 1-5 random map points and relabels them (every 7th action: undo its
own last change), waiting for the server's acknowledgement each time. What is simulated: the
browser (no JavaScript, no drawing); the HTTP, websocket, Panel and label-store paths are the
real ones.

Then it checks (:func:`dashboard_fixtures.check_load`) that every session was held to the end,
every acknowledged change is in the store, the log replays to the current labels and every
session shows the same map colours as a fresh one; and it measures how long a change takes to
reach another session's map (propagation). Writes ``bench/results/dashboard.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from dashboard_fixtures import (  # noqa: E402
    LOAD_USERS,
    ServedDashboard,
    check_load,
    make_run,
    make_users,
)

from widgets.dashboard.client import propagation, run_load  # noqa: E402


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _phase(srv, run, users, seconds: float, think: float, seed: int) -> dict:
    cpu0, t0 = _cpu_s(srv.proc.pid), resource.getrusage(resource.RUSAGE_SELF)
    result = asyncio.run(run_load(srv.url, users, seconds, think_s=think, seed=seed, settle_s=15))
    cpu1, t1 = _cpu_s(srv.proc.pid), resource.getrusage(resource.RUSAGE_SELF)
    counts = check_load(result, run)  # raises if anything acknowledged is missing
    lat = sorted(a.latency_s for a in result.acks)
    acts = len(result.acks) + len(result.refused)
    return {
        "think": think,
        "result": result,
        "counts": counts,
        "acts": acts,
        "max_ms": 1000 * lat[-1],
        "server_cpu": (cpu1 - cpu0) / result.duration_s,
        "client_cpu": (t1.ru_utime + t1.ru_stime - t0.ru_utime - t0.ru_stime) / result.duration_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--patients", type=int, default=4)
    ap.add_argument("--poll-ms", type=int, default=1000)
    ap.add_argument("--think", type=float, nargs="+", default=[2.0, 0.3],
                    help="mean pause between a session's actions (s); one phase per value")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "dashboard.md")
    ap.add_argument("--server-log", type=Path, default=None, help="keep the server's log here")
    args = ap.parse_args()
    users = LOAD_USERS[: args.sessions]
    if len(users) < args.sessions:
        raise SystemExit(f"at most {len(LOAD_USERS)} sessions (one user each)")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        run = make_run(tmp / "data", n_patients=args.patients)
        users_file = make_users(tmp / "users.json", load=True)
        n_lesions = len(__import__("pandas").read_parquet(run / "umap.parquet"))
        print(f"run with {n_lesions} lesions ready in {time.perf_counter() - t0:.1f} s")
        srv = ServedDashboard(run, users_file, tmp / "server.log", poll_ms=args.poll_ms)
        load0 = os.getloadavg()[0]
        try:
            phases = [_phase(srv, run, users, args.seconds, th, seed=i)
                      for i, th in enumerate(args.think)]
            prop = asyncio.run(propagation(srv.url, users[0], users[1], n=10))
            load1 = os.getloadavg()[0]
            log = srv.log()
            opened = log.count("opened by")
            errors = log.count(" ERROR ")
        except BaseException:
            print(srv.log()[-5000:])
            raise
        finally:
            srv.stop()
            if args.server_log:
                args.server_log.write_text(srv.log_path.read_text())

    prop_ms = sorted(1000 * x for x in prop)
    think = " ".join(f"{t:g}" for t in args.think)
    rows = [
        ("mean pause between a session's actions", lambda f: f"{f['think']:g} s"),
        ("sessions opened / held to the end",
         lambda f: f"{f['result'].sessions} / {f['result'].held}"),
        ("duration", lambda f: f"{f['result'].duration_s:.1f} s"),
        ("actions (relabel + undo)",
         lambda f: f"{f['acts']} ({f['acts'] / f['result'].duration_s:.1f}/s)"),
        ("acknowledged relabels / undos",
         lambda f: f"{f['counts']['relabels_acked']} / {f['counts']['undos_acked']}"),
        ("refused (undo: nothing to undo, or a later change by someone else)",
         lambda f: str(len(f["result"].refused))),
        ("acknowledged changes missing from the store", lambda f: "0 (each checked)"),
        ("store log replays to the current labels; integrity_check", lambda f: "yes; ok"),
        ("every session shows the same map as a fresh one at the end",
         lambda f: "yes" if f["result"].final_codes_agree else "NO"),
        ("ack latency p50 / p95 / p99 / max (ms)",
         lambda f: f"{f['result'].latency_ms(50):.0f} / {f['result'].latency_ms(95):.0f} / "
                   f"{f['result'].latency_ms(99):.0f} / {f['max_ms']:.0f}"),
        ("session connect, median / max (ms)",
         lambda f: f"{1000 * float(np.median(f['result'].connect_s)):.0f} / "
                   f"{1000 * max(f['result'].connect_s):.0f}"),
        ("server CPU (cores busy, mean)", lambda f: f"{f['server_cpu']:.2f}"),
        ("client process CPU (10 simulated browsers)", lambda f: f"{f['client_cpu']:.2f}"),
    ]
    lines = [
        f"# Dashboard load benchmark ({time.strftime('%Y-%m-%d')})",
        "",
        f"Command: `.venv/bin/python bench/bench_dashboard_load.py --sessions {args.sessions} "
        f"--seconds {args.seconds:g} --patients {args.patients} --poll-ms {args.poll_ms} "
        f"--think {think}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs, "
        f"Python {platform.python_version()}; load average {load0:.1f} at the start, "
        f"{load1:.1f} at the end (other jobs included). Server (`python -m widgets.dashboard`, "
        "login required) and the simulated browsers run in two processes on loopback. "
        f"Run: demo data, {args.patients} patients, {n_lesions} lesions on the map; label store "
        "SQLite.",
        "",
        "Simulated: the browsers. Each session is a `DashboardClient`: HTTP login, the page "
        "(`GET /`), the page's Bokeh session over the websocket with the login cookie, then "
        "writes to the map's `selection` and the correction panel's `request` as the front ends "
        "do: select 1-5 random points, relabel them to a random type, every 7th action an undo "
        "of its own last change, one at a time, each waiting for the server's acknowledgement. "
        "Real: the served Panel app, the widget models, the label store.",
        "",
        "| figure | " + " | ".join(f"phase {i + 1}" for i in range(len(phases))) + " |",
        "|---|" + "---|" * len(phases),
    ]
    lines += [f"| {name} | " + " | ".join(fn(f) for f in phases) + " |" for name, fn in rows]
    lines += [
        "",
        f"All phases on one server: {opened} sessions opened in all (the phases' sessions, one "
        f"fresh session per phase for the final check, 2 probe sessions); {errors} errors in "
        "the server log.",
        "",
        f"Propagation (after the load, one change at a time, server poll {args.poll_ms} ms): a "
        f"relabel acknowledged in one session reaches another session's map in "
        f"{prop_ms[len(prop_ms) // 2]:.0f} ms median, {prop_ms[-1]:.0f} ms max "
        f"({len(prop_ms)} changes).",
        "",
        "Ack latency: from writing the request to receiving the server's status for it. Every "
        "change is also pushed to all other sessions (map colours, correction panel, gallery) "
        "within a poll period, and that work shares the server's one IO loop with the requests. "
        "On this shared machine (see the load average) the server process gets about half a "
        "core, so at the stress pace requests queue behind the other sessions' refreshes.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
