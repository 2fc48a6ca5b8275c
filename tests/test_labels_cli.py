"""``deeplesion-lab labels ...``: each action on a real run directory, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from label_fixtures import *  # noqa: F403 - the shared fixtures (manifest, pseudo, ...)
from label_fixtures import make_run

from deeplesion_lab.cli import main
from deeplesion_lab.dl_info import read_dl_info
from deeplesion_lab.labels import LabelStore

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def run(tmp_path, manifest_path, pseudo):
    return make_run(tmp_path / "run", manifest_path, pseudo)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["labels", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_relabel_auto_initialises_and_prints_the_event_id(run, pseudo, capsys):
    assert not run.label_db.exists()
    ids = pseudo["lesion_id"].iloc[:4].tolist()
    code, out, err = cli(capsys, "relabel", "--run", str(run.path), "--lesions",
                         " , ".join(ids), "--label", "kidney", "--user", "alice")
    assert code == 0 and err == ""
    eid = int(out)  # only the event id on stdout
    with LabelStore.open(run.label_db, create=False) as s:
        assert s.run_id == "run" and len(s.current_labels()) == 4927
        cur = s.labels_of(ids)
        assert (cur["label"] == "kidney").all() and (cur["event_id"] == eid).all()
        ev = s.events(limit=1).iloc[0]
        assert (ev["user"], ev["tool"], ev["n_changes"]) == ("alice", "cli", 4)


def test_actions_end_to_end(run, pseudo, capsys, tmp_path):
    r = str(run.path)
    code, out, _ = cli(capsys, "init", "--run", r)
    assert code == 0 and "loaded 4927 pseudo-labels of run run" in out
    code, out, _ = cli(capsys, "init", "--run", r)
    assert code == 0 and "already loaded" in out
    ids = pseudo.loc[pseudo["cluster"] == 4, "lesion_id"].iloc[:10].tolist()  # liver
    id_file = tmp_path / "ids.txt"
    id_file.write_text("\n".join(ids) + "\n")
    code, out, _ = cli(capsys, "relabel", "--run", r, "--lesions-file", str(id_file),
                       "--label", "lung", "--user", "bob", "--comment", "lasso on the map")
    assert code == 0
    e1 = int(out)
    code, out, _ = cli(capsys, "add-class", "--run", r, "--name", "cyst", "--color", "#aa0000",
                       "--user", "bob")
    assert code == 0 and "id 11" in out
    assert cli(capsys, "relabel", "--run", r, "--lesions", ids[0], "--label", "cyst",
               "--user", "carol")[0] == 0
    assert cli(capsys, "mark", "--run", r, "--lesions", ids[1], "--as", "not-lesion",
               "--user", "carol")[0] == 0
    assert cli(capsys, "comment", "--run", r, "--lesions", ids[2], "--text", "see prior",
               "--user", "carol")[0] == 0
    code, out, err = cli(capsys, "undo", "--run", r, "--user", "bob")
    assert code == 2 and "cannot undo event" in err and "carol" in err
    code, out, err = cli(capsys, "undo", "--run", r, "--user", "bob", "--skip-conflicts")
    assert code == 0 and "8 lesions" in err and "2 skipped" in err
    code, out, _ = cli(capsys, "redo", "--run", r, "--user", "bob")
    assert code == 0 and int(out) > e1
    code, out, _ = cli(capsys, "history", "--run", r)
    assert code == 0 and "redo" in out and "add_class" in out and "lasso on the map" in out
    code, out, _ = cli(capsys, "history", "--run", r, "--lesion", ids[2])
    assert code == 0 and "see prior" in out and "comment" in out
    code, out, _ = cli(capsys, "counts", "--run", r)
    assert code == 0 and "cyst" in out and "n_corrected" in out
    code, out, _ = cli(capsys, "classes", "--run", r)
    assert code == 0 and "not a lesion" in out and "#aa0000" in out
    code, out, _ = cli(capsys, "relabel-cluster", "--run", r, "--cluster", "6", "--label",
                       "soft tissue", "--user", "dave")
    assert code == 0
    code, out, _ = cli(capsys, "merge-clusters", "--run", r, "--clusters", "1,8", "--user",
                       "dave")
    assert code == 0
    code, out, _ = cli(capsys, "split-cluster", "--run", r, "--cluster", "1", "--lesions",
                       pseudo.loc[pseudo["cluster"] == 1, "lesion_id"].iloc[0], "--user", "dave")
    assert code == 0 and "new cluster 9" in out
    assert cli(capsys, "rename-cluster", "--run", r, "--cluster", "9", "--name", "odd one",
               "--user", "dave")[0] == 0
    code, out, _ = cli(capsys, "snapshot", "--run", r, "--name", "ft-1", "--user", "dave")
    assert code == 0
    sid = int(out)
    code, out, _ = cli(capsys, "snapshots", "--run", r)
    assert code == 0 and "ft-1" in out
    for fmt, name in (("csv", "l.csv"), ("parquet", "l.parquet"), ("coco", "coco.json"),
                      ("dl_info", "DL_info.csv")):
        code, out, _ = cli(capsys, "export", "--run", r, "--format", fmt,
                           "--out", str(tmp_path / name), "--snapshot", str(sid))
        assert code == 0 and f"wrote {tmp_path / name}" in out
    labels = pd.read_csv(tmp_path / "l.csv").set_index("lesion_id")
    assert labels.loc[ids[0], "label"] == "cyst" and labels.loc[ids[3], "label"] == "lung"
    assert len(json.loads((tmp_path / "coco.json").read_text())["annotations"]) == 4926
    dl = read_dl_info(tmp_path / "DL_info.csv").lesions.set_index("lesion_id")
    assert len(dl) == 4926 and dl.loc[ids[3], "coarse_type"] == 5
    code, out, _ = cli(capsys, "info", "--run", r)
    assert code == 0 and "n_snapshots: 1" in out
    code, out, _ = cli(capsys, "verify", "--run", r)
    assert code == 0 and "integrity: ok" in out and "matches current labels: True" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["relabel", "--lesions", "nope-1,nope-2", "--label", "lung", "--user", "a"],
         "2 of 2 lesion id(s) are not in this store's dataset"),
        (["relabel", "--lesions", "{id}", "--label", "lungs", "--user", "a"],
         "unknown class 'lungs'"),
        (["relabel", "--lesions", " , ", "--label", "lung", "--user", "a"], "empty selection"),
        (["relabel", "--lesions-file", "missing.txt", "--label", "lung", "--user", "a"],
         "lesion id file not found"),
        (["undo", "--user", "nobody"], "nobody has nothing to undo"),
        (["merge-clusters", "--clusters", "1,x", "--user", "a"], "comma-separated integers"),
        (["export", "--format", "csv", "--out", "labels.parquet"], "writes a .csv file"),
        (["add-class", "--name", "liver", "--color", "#000", "--user", "a"], "already exists"),
        (["snapshot", "--name", "s", "--user", " "], "user"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(run, pseudo, capsys, args, message):
    r = str(run.path)
    assert cli(capsys, "init", "--run", r)[0] == 0
    before = LabelStore.open(run.label_db).version()
    args = [a.replace("{id}", pseudo["lesion_id"].iloc[0]) for a in args]
    code, out, err = cli(capsys, args[0], "--run", r, *args[1:])
    assert code == 2 and out == ""
    assert err.startswith("deeplesion-lab labels: error: ") and message in err
    assert err.count("\n") == 1
    assert LabelStore.open(run.label_db).version() == before


def test_missing_or_foreign_store_and_bad_run_dir(run, tmp_path, capsys):
    code, _, err = cli(capsys, "history", "--run", str(run.path))
    assert code == 2 and "no label store yet" in err and "labels init" in err
    assert not run.label_db.exists()  # reading actions create nothing
    run.label_db.write_text("not a database")
    code, _, err = cli(capsys, "relabel", "--run", str(run.path), "--lesions", "x",
                       "--label", "lung", "--user", "a")
    assert code == 2 and "not a SQLite database" in err
    assert run.label_db.read_text() == "not a database"
    code, _, err = cli(capsys, "history", "--run", str(tmp_path / "nowhere"))
    assert code == 2 and "run directory not found" in err
    (tmp_path / "plain").mkdir()
    code, _, err = cli(capsys, "history", "--run", str(tmp_path / "plain"))
    assert code == 2 and "not a run directory" in err
    run.pseudo_labels.unlink()
    run.label_db.unlink()
    code, _, err = cli(capsys, "init", "--run", str(run.path))
    assert code == 2 and "pseudo-labels not found" in err
    assert not run.label_db.exists()


def test_console_script(run, pseudo, tmp_path):
    exe = REPO / ".venv" / "bin" / "deeplesion-lab"
    if not exe.is_file():
        pytest.skip(f"{exe} not installed (run `make venv`)")
    ids = pseudo["lesion_id"].iloc[:2].tolist()
    ok = subprocess.run([str(exe), "labels", "relabel", "--run", str(run.path), "--lesions",
                         ",".join(ids), "--label", "pelvis", "--user", "eve"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().isdigit()
    bad = subprocess.run([str(exe), "labels", "relabel", "--run", str(run.path), "--lesions",
                          ids[0], "--label", "pelvis", "--user", "eve", "--tool"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "expected one argument" in bad.stderr
    # the command module stays light: the store (and psycopg) load only when an action runs
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, deeplesion_lab.commands.labels; "
         "print(sorted(m for m in sys.modules if m.startswith(('psycopg', "
         "'deeplesion_lab.labels'))))"],
        capture_output=True, text=True, timeout=120,
    )
    assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe.stdout + probe.stderr
