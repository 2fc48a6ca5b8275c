"""Label-store timings: a 5,000-lesion relabel and reading 32,735 current labels (issue 6).

Targets on SQLite: relabel of 5,000 lesions committed in < 200 ms; current labels of 32,735
lesions read in < 100 ms. Also measured: loading the pseudo-labels, undo of a 5,000 batch,
snapshot, polling, replay check, exports, and the same operations on PostgreSQL when the
server binaries exist (a throw-away server is started, as in the tests).

Usage::

    .venv/bin/python bench/bench_label_store.py                 # SQLite
    .venv/bin/python bench/bench_label_store.py --postgres      # + PostgreSQL
    .venv/bin/python bench/bench_label_store.py --repeats 30 --markdown

Wall-clock times (``time.perf_counter``), every write committed (SQLite: WAL,
``synchronous=FULL``, so each commit waits for fsync), and the CPU time of this process
(``time.process_time``; PostgreSQL's server work is not in it). The machine's load average is
printed with the figures: on a shared machine the wall-clock medians move with it, the CPU
times much less.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from deeplesion_lab.labels import LabelStore  # noqa: E402

TYPE_NAMES = ["bone", "abdomen", "mediastinum", "liver", "lung", "kidney", "soft tissue", "pelvis"]


def synthetic(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` distinct lesion ids (DeepLesion id format) with pseudo-labels in 40 clusters."""
    rng = np.random.default_rng(seed)
    ids: dict[str, None] = {}
    while len(ids) < n:
        p, s, k, h = (int(rng.integers(1, 4500)), int(rng.integers(1, 20)),
                      int(rng.integers(1, 400)), int(rng.integers(0, 2**32)))
        ids[f"{p:06d}_{s:02d}_01_{k:03d}-{h:08x}"] = None
    cl = rng.integers(0, 40, n)
    return pd.DataFrame({"lesion_id": list(ids), "cluster": cl,
                         "label": [TYPE_NAMES[c % 8] for c in cl],
                         "confidence": rng.random(n).round(4)})


class Times(list):
    """Wall-clock seconds per run, with the process CPU seconds beside them."""

    cpu: list[float]


def stats(xs: list[float]) -> dict[str, float]:
    cpu = getattr(xs, "cpu", None)
    xs = sorted(xs)
    return {"median_ms": 1000 * statistics.median(xs),
            "p90_ms": 1000 * xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))],
            "min_ms": 1000 * xs[0], "max_ms": 1000 * xs[-1], "n": len(xs),
            "cpu_ms": 1000 * statistics.median(cpu) if cpu else float("nan")}


def timed(fn, repeats: int) -> tuple[Times, object]:
    """Run ``fn`` ``repeats`` times; wall (perf_counter) and CPU (process_time) per run."""
    out, times = None, Times()
    times.cpu = []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        times.cpu.append(time.process_time() - c0)
    return times, out


def bench_store(target: str, namespace: str | None, n: int, batch: int, repeats: int,
                workdir: Path) -> dict[str, dict]:
    pl = synthetic(n)
    ids = pl["lesion_id"].tolist()
    kw = {"namespace": namespace} if namespace else {}
    res: dict[str, dict] = {}
    t, store = timed(lambda: LabelStore.open(target, dataset=pl[["lesion_id"]], **kw), 1)
    res[f"create store + bind {n:,} ids"] = stats(t)
    t, _ = timed(lambda: store.init_pseudo_labels(pl, f"run-{time.time()}"), 1)
    res[f"init_pseudo_labels ({n:,})"] = stats(t)
    rng = np.random.default_rng(1)
    sels = [[ids[i] for i in rng.choice(n, batch, replace=False)] for _ in range(repeats)]
    it = iter(range(repeats))
    t, _ = timed(lambda: store.relabel(sels[next(it)], TYPE_NAMES[rng.integers(8)], "alice",
                                       tool="lasso"), repeats)
    res[f"relabel {batch:,} lesions (commit)"] = stats(t)
    def cold():
        store._current_cache = None  # as after a commit: every row read from the database
        return store.current_labels()

    t, cur = timed(cold, repeats)
    assert len(cur) == n
    res[f"current_labels ({n:,} rows), read from the database"] = stats(t)
    t, cur = timed(store.current_labels, repeats)
    assert len(cur) == n
    res[f"current_labels ({n:,} rows), no event since the last read"] = stats(t)
    t, _ = timed(lambda: store.undo("alice"), min(repeats, 5))
    res[f"undo a {batch:,} batch"] = stats(t)
    v = store.version()
    store.relabel(sels[0][:200], "liver", "bob")
    t, ch = timed(lambda: store.changes_since(v), repeats)
    res["changes_since (poll, 200 changed)"] = stats(t)
    t, _ = timed(store.version, repeats)
    res["version() (poll)"] = stats(t)
    t, _ = timed(lambda: store.history(lesion_id=ids[0]), repeats)
    res["history(lesion_id)"] = stats(t)
    k = iter(range(1000))
    t, _ = timed(lambda: store.snapshot(f"s{next(k)}", "alice"), 3)
    res[f"snapshot ({n:,} labels)"] = stats(t)
    t, _ = timed(lambda: store.export_labels(workdir / "labels.parquet"), 3)
    res["export_labels parquet"] = stats(t)
    t, r = timed(store.verify, 1)
    assert r["replay_matches"], r
    res["verify (integrity + replay of the log)"] = stats(t)
    store.close()
    t, s2 = timed(lambda: LabelStore.open(target, **kw), 3)
    s2.close()
    res["open existing store (with quick_check)"] = stats(t)
    return res


def table(name: str, res: dict[str, dict]) -> str:
    lines = [f"### {name}", "",
             "| operation | median ms | p90 ms | min ms | max ms | CPU ms (median) | runs |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for op, s in res.items():
        lines.append(f"| {op} | {s['median_ms']:.1f} | {s['p90_ms']:.1f} | {s['min_ms']:.1f} | "
                     f"{s['max_ms']:.1f} | {s['cpu_ms']:.1f} | {s['n']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-lesions", type=int, default=32735)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--postgres", action="store_true", help="also on a throw-away PostgreSQL")
    args = ap.parse_args(argv)
    load = os.getloadavg()
    print(f"# label store benchmark ({time.strftime('%Y-%m-%d %H:%M')})")
    print(f"python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
          f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    with tempfile.TemporaryDirectory() as d:
        res = bench_store(str(Path(d) / "labels.sqlite"), None, args.n_lesions, args.batch,
                          args.repeats, Path(d))
        size = sum(p.stat().st_size for p in Path(d).glob("labels.sqlite*"))
        print(table(f"SQLite (file + WAL: {size / 1e6:.1f} MB after the run)", res))
        print()
    if args.postgres:
        from label_fixtures import PostgresServer, postgres_bin

        bindir = postgres_bin()
        if bindir is None:
            print("PostgreSQL binaries not found; skipped")
        else:
            server = PostgresServer(bindir).start()
            try:
                with tempfile.TemporaryDirectory() as d:
                    res = bench_store(server.url, "bench", args.n_lesions, args.batch,
                                      args.repeats, Path(d))
                print(table(f"PostgreSQL ({bindir.parent.name}, local, fsync off)", res))
            finally:
                server.stop()
    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
