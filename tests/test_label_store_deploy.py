"""One PostgreSQL server for a team: ``labels use`` records it in run.json and every tool follows.

A real PostgreSQL server started by the test (as in ``test_label_store_postgres``); skipped
without the server binaries.
"""

from __future__ import annotations

import json
import os
import pwd

import pandas as pd
import pytest
from label_fixtures import *  # noqa: F403 - the shared fixtures (manifest_path, pseudo, ...)
from label_fixtures import PostgresServer, make_run, postgres_bin

from deeplesion_lab.cli import main
from deeplesion_lab.labels import LabelStore


@pytest.fixture(scope="module")
def pg_url():
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; "
                    "apt-get install postgresql to run these tests")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a 'postgres' user to run initdb as")
    server = PostgresServer(bindir)
    try:
        server.start()
    except RuntimeError as exc:
        server.stop()
        pytest.fail(f"could not start PostgreSQL from {bindir}: {exc}")
    yield server.url
    server.stop()


def test_labels_use_points_every_tool_of_the_run_at_the_server(pg_url, manifest_path, pseudo,
                                                               tmp_path, capsys) -> None:
    run = make_run(tmp_path / "run", manifest_path, pseudo)
    lid = str(pseudo["lesion_id"].iloc[0])
    assert main(["labels", "use", "--run", str(run.path), "--db", pg_url,
                 "--namespace", "team_a"]) == 0
    assert "every tool on this run" in capsys.readouterr().out
    rec = json.loads(run.run_json.read_text())["label_store"]
    assert rec == {"url": pg_url, "namespace": "team_a"}
    # a correction through the CLI without --db lands on the server, not in a local file
    assert main(["labels", "relabel", "--run", str(run.path), "--lesions", lid,
                 "--label", "liver", "--user", "alice"]) == 0
    assert not run.label_db.exists()
    with LabelStore.open(pg_url, namespace="team_a", create=False) as store:
        cur = store.current_labels().set_index("lesion_id")
        assert cur.loc[lid, "label"] == "liver"
    # the dashboard and the notebooks open the run's store the same way
    with LabelStore.for_run(run) as store:
        assert store.dialect == "postgresql" and "team_a" in store.location
        assert store.current_labels().set_index("lesion_id").loc[lid, "label"] == "liver"
    # back to the run's own file
    assert main(["labels", "use", "--run", str(run.path), "--local"]) == 0
    with LabelStore.for_run(run) as store:
        assert store.dialect == "sqlite"


def test_labels_use_refuses_a_password_in_the_url(manifest_path, pseudo, tmp_path,
                                                  capsys) -> None:
    run = make_run(tmp_path / "run", manifest_path, pseudo)
    rc = main(["labels", "use", "--run", str(run.path), "--db",
               "postgresql://alice:secret@db.example:5432/labels"])
    err = capsys.readouterr().err
    assert rc == 2 and "~/.pgpass" in err and "secret" not in err
    assert "label_store" not in json.loads(run.run_json.read_text())


def test_labels_use_copies_the_local_store_or_says_how(pg_url, manifest_path, pseudo, tmp_path,
                                                       capsys) -> None:
    """A run whose labels.sqlite holds corrections: ``labels use --db`` does not silently start
    the server's store without them; ``--copy-local`` copies the whole store (events, undo,
    snapshots, tags), ``--fresh`` starts from the pseudo-labels."""
    run = make_run(tmp_path / "run", manifest_path, pseudo)
    ids = [str(x) for x in pseudo["lesion_id"].iloc[:3]]
    with LabelStore.for_run(run) as local:  # the run's own file, with a history
        local.relabel(ids[:2], "liver", "alice")
        local.relabel(ids[2:], "lung", "bob")
        local.undo("bob")
        snap = local.snapshot("before-team", "alice")
        local.tag(ids[:1], "check", "alice")
        local_events = local.events(limit=100)
        local_labels = local.current_labels().sort_values("lesion_id").reset_index(drop=True)
        local_snap = local.snapshot_labels(snap)
    n_corr = int((local_events["op"] != "init").sum())
    assert n_corr >= 4
    # the plain command refuses and changes nothing (no store on the server, no run.json entry)
    rc = main(["labels", "use", "--run", str(run.path), "--db", pg_url, "--namespace", "team_c"])
    err = capsys.readouterr().err
    assert rc == 2 and "--copy-local" in err and f"{n_corr} correction event(s)" in err
    assert "label_store" not in json.loads(run.run_json.read_text())
    with LabelStore.open(pg_url, namespace="team_c", allow_empty=True) as store:
        assert store.version() == 0 and store.run_id is None
    # --copy-local: the same log, ids, labels, snapshot and tags on the server
    assert main(["labels", "use", "--run", str(run.path), "--db", pg_url, "--namespace", "team_c",
                 "--copy-local"]) == 0
    out = capsys.readouterr().out
    assert f"copied {run.label_db}" in out and f"{len(local_events)} events" in out
    with LabelStore.for_run(run) as store:
        assert store.dialect == "postgresql"
        pd.testing.assert_frame_equal(
            store.current_labels().sort_values("lesion_id").reset_index(drop=True),
            local_labels, check_dtype=False)
        assert store.events(limit=100)["event_id"].tolist() == local_events["event_id"].tolist()
        assert store.verify()["replay_matches"]
        pd.testing.assert_frame_equal(store.snapshot_labels(snap), local_snap,
                                      check_dtype=False)
        assert store.lesion_tags([ids[0]])["tag"].tolist() == ["check"]
        # the server's ids continue after the copied ones; undo works on the copied stack
        assert store.relabel(ids[:1], "bone", "carol") == int(local_events["event_id"].max()) + 1
        store.undo("alice")  # alice's tag, her latest batch
    # a copy goes into an empty store only
    rc = main(["labels", "use", "--run", str(run.path), "--db", pg_url, "--namespace", "team_c",
               "--copy-local"])
    assert rc == 2 and "already holds" in capsys.readouterr().err
    # --fresh: an empty namespace from the pseudo-labels, the file's corrections left out
    assert main(["labels", "use", "--run", str(run.path), "--db", pg_url, "--namespace", "team_d",
                 "--fresh"]) == 0
    assert f"{n_corr} correction event(s) in it are not on the server" in capsys.readouterr().out
    with LabelStore.for_run(run) as store:
        assert "team_d" in store.location
        assert set(store.current_labels()["source"]) == {"pseudo"}
