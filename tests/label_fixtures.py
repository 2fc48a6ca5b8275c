"""Fixtures and helpers for the label-store tests (engineer B's area).

- manifests built from the real DeepLesion CSVs (written to a temp folder, never the repo);
- pseudo-labels in the shape the mining step writes (cluster = coarse type, label = its name);
- a real PostgreSQL server started from the Debian binaries (``/usr/lib/postgresql/*/bin``);
- worker functions for the multi-process and SIGKILL tests (module level, so that
  ``multiprocessing`` with the ``spawn`` start method can import them).
"""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from factory import free_port, write_dl_info

from deeplesion_lab.labels import LabelStore, NothingToUndo, UndoConflict
from deeplesion_lab.lesion_types import COARSE_TYPES
from deeplesion_lab.manifest import read_manifest, write_manifest
from deeplesion_lab.run import RunDir

#: the fixtures, for ``from label_fixtures import *`` in the test modules
__all__ = ["manifest_path", "manifest", "other_manifest", "pseudo"]

TYPE_NAMES = list(COARSE_TYPES.values())


# real-data manifests --------------------------------------------------------------------------
@pytest.fixture(scope="session")
def manifest_path(real_dir, tmp_path_factory) -> Path:
    """Manifest of the 4,927 real test-split lesions (metadata only)."""
    out = tmp_path_factory.mktemp("label_manifest") / "manifest.parquet"
    write_manifest(real_dir / "DL_info_test.csv", out, images_root=real_dir / "Images_png")
    return out


@pytest.fixture(scope="session")
def manifest(manifest_path) -> pd.DataFrame:
    return read_manifest(manifest_path)


@pytest.fixture(scope="session")
def other_manifest(real_dir, tmp_path_factory) -> pd.DataFrame:
    """Another dataset: the Kaggle subset's train/val lesions (none of them in the test split)."""
    d = tmp_path_factory.mktemp("label_other")
    raw = pd.read_csv(real_dir / "DL_info_kaggle_subset.csv", dtype=str, keep_default_na=False)
    raw = raw[raw["Train_Val_Test"].str.strip() != "3"]
    write_dl_info(raw, d / "DL_info.csv")
    write_manifest(d / "DL_info.csv", d / "manifest.parquet")
    return read_manifest(d / "manifest.parquet")


def make_pseudo(manifest: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Pseudo-labels like ``mine`` writes: cluster = coarse type, label = its name."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "lesion_id": manifest["lesion_id"].astype(str).to_numpy(),
            "cluster": manifest["coarse_type"].astype(int).to_numpy(),
            "label": manifest["coarse_type_name"].astype(str).to_numpy(),
            "confidence": rng.uniform(0.3, 1.0, len(manifest)).round(4),
        }
    )


@pytest.fixture(scope="session")
def pseudo(manifest) -> pd.DataFrame:
    return make_pseudo(manifest)


def make_run(root: Path, manifest_path: Path, pseudo: pd.DataFrame | None) -> RunDir:
    """A run directory with run.json (and pseudo_labels.parquet when given)."""
    run = RunDir(root).init(manifest_path)
    if pseudo is not None:
        pseudo.to_parquet(run.pseudo_labels, index=False)
    return run


def synthetic_ids(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct ids in the lesion-id format (patient_study_series_slice-hash)."""
    rng = np.random.default_rng(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        p, s, k, h = rng.integers(1, 4500), rng.integers(1, 20), rng.integers(1, 400), rng.integers(
            0, 2**32
        )
        out[f"{p:06d}_{s:02d}_01_{k:03d}-{h:08x}"] = None
    return list(out)


def synthetic_pseudo(ids: list[str], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cl = rng.integers(0, 40, len(ids))
    return pd.DataFrame(
        {
            "lesion_id": ids,
            "cluster": cl,
            "label": [TYPE_NAMES[c % 8] for c in cl],
            "confidence": rng.random(len(ids)).round(4),
        }
    )


# PostgreSQL -------------------------------------------------------------------------------------
def postgres_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` with initdb and pg_ctl, or initdb on PATH."""
    cands = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    for c in reversed(cands):
        if (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


class PostgresServer:
    """A throw-away PostgreSQL server on 127.0.0.1 (run as ``postgres`` when we are root)."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.base = Path(tempfile.mkdtemp(prefix="dl-labels-pg-"))
        self.data = self.base / "data"
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def start(self) -> PostgresServer:
        if self.as_root:
            shutil.chown(self.base, "postgres", "postgres")
        r = self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                      "-E", "UTF8", "--locale=C", "--no-sync")
        if r.returncode:
            raise RuntimeError(f"initdb failed: {r.stderr[-2000:]}")
        opts = (f"-F -k {self.base} -h 127.0.0.1 -p {self.port} -c max_connections=50 "
                "-c shared_buffers=32MB")
        r = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.base / "server.log"),
                      "-o", opts, "-w", "-t", "60", "start")
        if r.returncode:
            log = (self.base / "server.log").read_text() if (self.base / "server.log").exists() \
                else ""
            raise RuntimeError(f"pg_ctl start failed: {r.stderr[-1000:]} {log[-2000:]}")
        return self

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


# workers for multiprocessing (spawn) ------------------------------------------------------------
def _open(target: str, namespace: str | None) -> LabelStore:
    return LabelStore.open(target, namespace=namespace)


def writer_worker(target: str, namespace: str | None, user: str, seed: int, ids: list[str],
                  n_batches: int, out_path: str, barrier) -> None:
    """Relabel random selections (and sometimes undo); record every acknowledged event."""
    store = _open(target, namespace)
    rng = random.Random(seed)
    acked: list[dict] = []
    barrier.wait(120)  # all writers start together, once each has its connection
    for _ in range(n_batches):
        time.sleep(rng.uniform(0, 0.02))  # think time, as a person between two lasso strokes
        if acked and rng.random() < 0.2:
            try:
                res = store.undo(user, tool="notebook", skip_conflicts=True)
            except (NothingToUndo, UndoConflict):
                continue
            acked.append({"event_id": res.event_id, "op": "undo", "n": len(res.lesion_ids)})
            continue
        sel = rng.sample(ids, rng.randint(1, 300))
        eid = store.relabel(sel, rng.choice(TYPE_NAMES), user, tool="lasso")
        acked.append({"event_id": eid, "op": "relabel", "n": len(sel)})
    store.close()
    Path(out_path).write_text(json.dumps(acked))


def stalled_writer(target: str, namespace: str | None, ids: list[str], marker: str) -> None:
    """Relabel ``ids`` in one batch, but stop inside the transaction, just before COMMIT.

    With a tiny page cache SQLite spills the uncommitted pages into the WAL file first, so the
    kill really lands with part of the batch on disk.
    """
    store = _open(target, namespace)
    if store.dialect == "sqlite":
        store._db.execute("PRAGMA cache_size = 10")

    def hook(events):
        Path(marker).write_text(json.dumps({"event_id": events[0].event_id,
                                            "n": len(events[0].lesion_ids)}))
        time.sleep(300)

    store._before_commit = hook
    store.relabel(ids, "liver", "victim", tool="lasso")


def looping_writer(target: str, namespace: str | None, ids: list[str], acked_path: str,
                   batch: int) -> None:
    """Relabel batches of ``batch`` lesions forever, appending each acknowledged event id."""
    store = _open(target, namespace)
    rng = random.Random(os.getpid())
    with open(acked_path, "a") as fh:
        while True:
            eid = store.relabel(rng.sample(ids, batch), rng.choice(TYPE_NAMES), "looper",
                                tool="lasso")
            fh.write(f"{eid}\n")
            fh.flush()
            os.fsync(fh.fileno())
