"""The label store on a real PostgreSQL server, started by these tests.

The server comes from the Debian package's binaries (``/usr/lib/postgresql/*/bin``: initdb,
pg_ctl), runs as the ``postgres`` user when the tests run as root, listens on 127.0.0.1 on a
free port, and is stopped at the end. Each test gets its own schema (``namespace``). Without
the binaries these tests are skipped (CI installs ``postgresql`` first).

The backend contract tests of test_label_store.py run again here: they are imported below and
pick up this module's ``target`` fixture.
"""

from __future__ import annotations

import os
import pwd
import uuid

import pandas as pd
import psycopg
import pytest
from label_fixtures import *  # noqa: F403 - the shared fixtures (manifest, pseudo, ...)
from label_fixtures import PostgresServer, make_run, postgres_bin, synthetic_ids
from test_label_store import (  # noqa: F401 - the backend contract, run on PostgreSQL here
    check_v1_store_migrates,
    open_store,
    store,
    test_bad_input_is_a_clear_error_and_writes_nothing,
    test_classes_special_labels_and_comments,
    test_cluster_operations,
    test_empty_store_reads_empty_and_refuses_writes,
    test_export_coco,
    test_export_dl_info_round_trips_with_corrected_types,
    test_export_labels_csv_and_parquet,
    test_history_filters,
    test_init_binds_dataset_and_current_labels_are_the_pseudo_labels,
    test_pseudo_labels_for_another_dataset_or_bad_values_are_refused,
    test_reinit_keeps_corrections_and_reports_missing_lesions,
    test_relabel_is_one_atomic_event,
    test_reopening_with_another_dataset_is_refused,
    test_snapshots_are_immutable,
    test_store_bound_to_pseudo_ids_is_rebound_to_the_manifest,
    test_subscribe_and_changes_since,
    test_undo_never_overwrites_another_annotators_later_work,
    test_undo_redo_are_per_user,
    write_v1_store,
)
from test_label_store_reliability import (
    check_concurrent_writers,
    check_sigkill_inside_transaction,
)
from test_label_store_tags import (  # noqa: F401 - tags and saved views, on PostgreSQL here
    test_bad_tag_input_is_a_clear_error_and_writes_nothing,
    test_saved_views_per_user_readable_by_all,
    test_tag_changes_are_append_only,
    test_tags_are_events_with_user_time_and_undo,
    test_undoing_a_tag_someone_changed_later_is_a_conflict,
)

from deeplesion_lab.cli import main
from deeplesion_lab.labels import LabelStore, LabelStoreError, StoreFormatError
from deeplesion_lab.labels.backend import PostgresBackend

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(300)]


@pytest.fixture(scope="session")
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


@pytest.fixture
def target(pg_url) -> dict:
    return {"path_or_url": pg_url, "namespace": "t_" + uuid.uuid4().hex[:12]}


def test_store_lives_in_its_own_schema(store, target, pg_url):  # noqa: F811
    assert store.dialect == "postgresql" and "schema t_" in store.location
    with psycopg.connect(pg_url) as con:
        tables = {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (target["namespace"],))}
    assert {"batches", "changes", "labels_current", "snapshots", "store_meta"} <= tables
    assert store.current_labels()["lesion_id"].is_monotonic_increasing  # bytewise, like SQLite


def test_foreign_schema_and_newer_version_are_refused(pg_url, manifest):
    ns = "foreign_" + uuid.uuid4().hex[:8]
    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute(f"CREATE SCHEMA {ns}")
        con.execute(f"CREATE TABLE {ns}.patients (id int primary key)")
    with pytest.raises(StoreFormatError, match=r"other tables \(patients\)"):
        LabelStore.open(pg_url, namespace=ns, dataset=manifest)
    with psycopg.connect(pg_url) as con:
        n = con.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = %s",
                        (ns,)).fetchone()[0]
    assert n == 1  # nothing written
    ns2 = "newer_" + uuid.uuid4().hex[:8]
    LabelStore.open(pg_url, namespace=ns2, dataset=manifest).close()
    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute(f"UPDATE {ns2}.store_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreFormatError, match="newer"):
        LabelStore.open(pg_url, namespace=ns2)
    with pytest.raises(LabelStoreError, match="namespace"):
        LabelStore.open(pg_url, namespace="Bad-Name")
    with pytest.raises(LabelStoreError, match="cannot connect"):
        LabelStore.open("postgresql://postgres@127.0.0.1:1/postgres", timeout=2)


def test_v1_store_migrates_on_postgres(target):
    ids = synthetic_ids(50)
    write_v1_store(PostgresBackend(target["path_or_url"], namespace=target["namespace"]), ids)
    with LabelStore.open(target["path_or_url"], namespace=target["namespace"]) as s:
        check_v1_store_migrates(s, ids)


@pytest.mark.slow
def test_four_writer_processes_on_postgres(target, tmp_path):
    check_concurrent_writers(target["path_or_url"], tmp_path, namespace=target["namespace"])


def test_sigkill_inside_a_transaction_on_postgres(target, tmp_path):
    check_sigkill_inside_transaction(target["path_or_url"], tmp_path,
                                     namespace=target["namespace"])


def test_cli_with_db_url(target, manifest_path, pseudo, tmp_path, capsys):
    run = make_run(tmp_path / "run", manifest_path, pseudo)
    ids = pseudo["lesion_id"].iloc[:3].tolist()
    base = ["--run", str(run.path), "--db", target["path_or_url"],
            "--namespace", target["namespace"]]
    assert main(["labels", "relabel", *base, "--lesions", ",".join(ids), "--label", "bone",
                 "--user", "alice"]) == 0
    eid = int(capsys.readouterr().out.strip())
    assert not run.label_db.exists()  # the labels went to PostgreSQL
    with LabelStore.open(target["path_or_url"], namespace=target["namespace"]) as s:
        cur = s.labels_of(ids)
        assert (cur["label"] == "bone").all() and (cur["event_id"] == eid).all()
        assert s.run_id == run.path.resolve().name
    assert main(["labels", "undo", *base, "--user", "alice"]) == 0
    assert main(["labels", "export", *base, "--format", "csv",
                 "--out", str(tmp_path / "l.csv")]) == 0
    out = pd.read_csv(tmp_path / "l.csv").set_index("lesion_id")
    assert (out.loc[ids, "source"] == "pseudo").all()
