"""What an unlucky or hostile user does to the files: a truncated label store, a full disk, a
file-size limit, a read-only store, spreadsheet formulas in exported cells, broken CSVs.

Each case ends in one clear line (no traceback), exit 2, and nothing already saved is lost.
A full disk is a small tmpfs where the tests can mount one (root), else ``RLIMIT_FSIZE``.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from dashboard_fixtures import fresh_run

from deeplesion_lab.labels import LabelStore, StoreFormatError, StoreWriteError
from deeplesion_lab.run import RunDir

pytestmark = pytest.mark.timeout(300)

CLI = [sys.executable, "-m", "deeplesion_lab.cli"]


def cli(*args: str, preexec=None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=120,
                          preexec_fn=preexec, cwd=cwd)


def one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """Assert exit 2 with a one-line message (no traceback) containing ``needles``."""
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def run(tmp_path, tmp_path_factory) -> Path:
    return fresh_run(tmp_path, tmp_path_factory.getbasetemp())


def _dl_info(run: Path) -> Path:
    """The demo DL_info.csv the run's manifest was built from."""
    return next(Path(RunDir(run).info()["manifest"]).parent.rglob("DL_info.csv"))


def _first_lesion(run: Path) -> str:
    return str(pd.read_parquet(run / "pseudo_labels.parquet")["lesion_id"].iloc[0])


def _events(run: Path) -> int:
    with LabelStore.open(run / "labels.sqlite") as store:
        return len(store.events())


def _started_store(run: Path) -> str:
    assert cli("labels", "init", "--run", run).returncode == 0
    lesion = _first_lesion(run)
    r = cli("labels", "relabel", "--run", run, "--lesions", lesion, "--label", "lung",
            "--user", "alice")
    assert r.returncode == 0, r.stderr
    return lesion


def _write_commands(run: Path, lesion: str, out: Path) -> dict[str, list]:
    return {
        "relabel": ["labels", "relabel", "--run", run, "--lesions", lesion, "--label", "liver",
                    "--user", "alice"],
        "add-class": ["labels", "add-class", "--run", run, "--name", "cyst", "--color", "#123456",
                      "--user", "alice"],
        "undo": ["labels", "undo", "--run", run, "--user", "alice"],
        "snapshot": ["labels", "snapshot", "--run", run, "--name", "s1", "--user", "alice"],
        "export": ["labels", "export", "--run", run, "--format", "csv", "--out", out / "x.csv"],
    }


# a truncated store -------------------------------------------------------------------------------
def test_a_truncated_store_is_refused_never_recreated(run, tmp_path):
    lesion = _started_store(run)
    db = run / "labels.sqlite"
    db.write_bytes(b"")  # truncated to 0 bytes (10 events became 2, before the fix)
    for name, args in {**_write_commands(run, lesion, tmp_path),
                       "history": ["labels", "history", "--run", run]}.items():
        one_line_error(cli(*args), str(db), "empty (0 bytes)", "nothing was written")
        assert db.stat().st_size == 0, f"{name} wrote a new store over the empty file"
    with pytest.raises(StoreFormatError, match="empty"):
        LabelStore.for_run(run)
    # only `labels init` makes a store there
    r = cli("labels", "init", "--run", run)
    assert r.returncode == 0, r.stderr
    assert _events(run) == 1


# a full disk, a file-size limit ------------------------------------------------------------------
@contextlib.contextmanager
def small_tmpfs(size: str = "8m") -> Iterator[Path]:
    """A small tmpfs (root only); skips the test where it cannot be mounted."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a tmpfs needs root (the RLIMIT_FSIZE variant runs instead)")
    mnt = Path(tempfile.mkdtemp(prefix="dl-full-"))
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        mnt.rmdir()
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        shutil.rmtree(mnt, ignore_errors=True)


def fill(disk: Path) -> Path:
    """Fill the file system of ``disk`` to the last byte; returns the filler (delete it to free)."""
    filler = disk / "filler"
    with open(filler, "wb") as fh:
        with contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
    with contextlib.suppress(OSError):
        with open(disk / "filler2", "wb") as fh:
            while True:
                fh.write(b"\0")
                fh.flush()
    return filler


def _file_size_limit(limit: int):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


@pytest.mark.parametrize("how", ["tmpfs", "rlimit"])
def test_a_full_disk_gives_one_line_and_loses_nothing(how, run, tmp_path):
    lesion = _started_store(run)
    before = _events(run)
    with contextlib.ExitStack() as stack:
        if how == "tmpfs":
            disk = stack.enter_context(small_tmpfs())
            shutil.copytree(run, disk / "run")
            work, out, preexec = disk / "run", disk, None
            fill(disk)
        else:  # every file this command writes may grow to 2 KB at most
            work, out, preexec = run, tmp_path, _file_size_limit(2048)
        for name, args in _write_commands(work, lesion, out).items():
            line = one_line_error(cli(*args, preexec=preexec), "nothing was written")
            assert "labels.sqlite" in line or "x.csv" in line, (name, line)
        assert not (out / "x.csv").exists(), "a half-written export"
        line = one_line_error(
            cli("manifest", _dl_info(run), "--out", out / "m.parquet", preexec=preexec),
            "m.parquet", "cannot write", "nothing was written",
        )
        assert not (out / "m.parquet").exists()
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")], "temporary files left"
        if how == "tmpfs":
            for f in ("filler", "filler2"):
                (disk / f).unlink(missing_ok=True)
            assert _events(work) == before, "the store changed"
    assert _events(run) == before


def test_a_write_refused_at_commit_is_rolled_back_and_named(run):
    """The store is open when the disk fills up (the dashboard's case)."""
    _started_store(run)
    with small_tmpfs() as disk:
        shutil.copytree(run, disk / "run")
        store = LabelStore.open(disk / "run" / "labels.sqlite")
        try:
            before = len(store.events())
            ids = store.current_labels()["lesion_id"].astype(str).tolist()
            fill(disk)
            with pytest.raises(StoreWriteError, match="nothing was written") as e:
                for i in range(50):  # until the WAL must grow past what is left
                    store.relabel(ids, ["lung", "liver"][i % 2], "alice", comment="x" * 1500)
            assert "full" in str(e.value)
            n_done = len(store.events()) - before
            (disk / "filler").unlink()
            (disk / "filler2").unlink(missing_ok=True)
            store.relabel(ids[:1], "bone", "alice")  # space again: the store works
            assert len(store.events()) == before + n_done + 1
            assert store.verify()["replay_matches"]
        finally:
            store.close()


def test_the_dashboard_shows_a_refused_write_and_keeps_the_session(run):
    from widgets.dashboard.app import Dashboard, DashboardContext
    from widgets.dashboard.auth import User

    _started_store(run)
    with small_tmpfs() as disk:
        shutil.copytree(run, disk / "run")
        ctx = DashboardContext(disk / "run", local_user=User("local", "admin"))
        try:
            dash = Dashboard(ctx, User("ann", "annotator"))
            assert len(dash.select(range(5))) == 5
            fill(disk)
            status = {"ok": True}
            for i in range(50):
                status = dash.request("relabel", label=["lung", "liver"][i % 2], comment="y" * 1500)
                if not status["ok"]:
                    break
            assert status["ok"] is False, "the full disk never refused a write"
            assert "could not be written" in status["message"], status
            (disk / "filler").unlink()
            (disk / "filler2").unlink(missing_ok=True)
            assert dash.request("relabel", label="bone")["ok"], "the session is still usable"
        finally:
            ctx.close()


def test_a_read_only_store_gives_one_line(run, tmp_path):
    lesion = _started_store(run)
    before = _events(run)
    if os.geteuid() == 0:  # root writes through permissions: use a read-only file system
        with small_tmpfs() as disk:
            shutil.copytree(run, disk / "run")
            r = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True)
            if r.returncode != 0:
                pytest.skip(f"cannot remount read-only ({r.stderr!r})")
            for name, args in _write_commands(disk / "run", lesion, tmp_path).items():
                if name == "export":
                    continue  # exporting reads the store (its output goes elsewhere)
                one_line_error(cli(*args), "labels.sqlite", "nothing was written")
            subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
            assert _events(disk / "run") == before
    else:
        for p in run.iterdir():
            p.chmod(0o444)
        run.chmod(0o555)
        try:
            r = cli(*_write_commands(run, lesion, tmp_path)["relabel"])
            one_line_error(r, "labels.sqlite", "nothing was written")
        finally:
            run.chmod(0o755)
    assert _events(run) == before


# what exports carry ------------------------------------------------------------------------------
def test_csv_exports_cannot_run_formulas_and_parquet_stays_exact(run, tmp_path):
    _started_store(run)
    evil = "=HYPERLINK(\"http://x\",\"y\")"
    with LabelStore.for_run(run) as store:
        store.add_class("+cmd|calc", "#112233", "alice")
        ids = store.current_labels()["lesion_id"].astype(str).tolist()
        store.relabel(ids[:2], "+cmd|calc", "alice", comment=evil)
    assert cli("labels", "export", "--run", run, "--format", "csv", "--out",
               tmp_path / "l.csv").returncode == 0
    assert cli("labels", "export", "--run", run, "--format", "parquet", "--out",
               tmp_path / "l.parquet").returncode == 0
    text = (tmp_path / "l.csv").read_text()
    cells = [c for line in text.splitlines() for c in line.split(",")]
    assert "'+cmd|calc" in cells and "+cmd|calc" not in cells, text[:500]
    assert not any(c.startswith(("=", "+", "@")) for c in cells)
    exact = pd.read_parquet(tmp_path / "l.parquet")
    assert (exact["label"] == "+cmd|calc").sum() == 2


# broken CSVs -------------------------------------------------------------------------------------
def test_a_csv_with_only_a_header_is_an_error(run, tmp_path):
    src = _dl_info(run)
    f = tmp_path / "header_only.csv"
    f.write_text(src.read_text().splitlines()[0] + "\n")
    one_line_error(cli("manifest", f, "--out", tmp_path / "m.parquet"), str(f), "no rows")
    assert not (tmp_path / "m.parquet").exists()


def test_an_unbalanced_quote_names_its_line(run, tmp_path):
    lines = _dl_info(run).read_text().splitlines()
    # a quote that never closes: everything after it would be one field
    f = tmp_path / "open_quote.csv"
    f.write_text("\n".join([lines[0], lines[1], lines[2].replace(",F,", ',"F,', 1), *lines[3:6]]))
    one_line_error(cli("manifest", f, "--out", tmp_path / "m.parquet"), str(f), "line 3", "quote")
    # a missing closing quote that the parser recovers from: every row broken, none kept
    g = tmp_path / "lost_quote.csv"
    i = lines[1].index('"')
    broken = lines[1][: i + 1] + lines[1][i + 1 :].replace('"', "", 1)
    g.write_text("\n".join([lines[0], broken]) + "\n")
    one_line_error(cli("manifest", g, "--out", tmp_path / "m.parquet"), "line 2",
                   "unbalanced quote", "no manifest written")
    assert not (tmp_path / "m.parquet").exists()


def test_the_cli_refuses_a_user_name_the_dashboard_would_refuse(run):
    lesion = _started_store(run)
    r = cli("labels", "relabel", "--run", run, "--lesions", lesion, "--label", "liver",
            "--user", "alice smith")
    one_line_error(r, "invalid user name")
