"""One PostgreSQL server for a team: ``labels use`` records it in run.json and every tool follows.

A real PostgreSQL server started by the test (as in ``test_label_store_postgres``); skipped
without the server binaries.
"""

from __future__ import annotations

import json
import os
import pwd

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
