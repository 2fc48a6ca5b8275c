"""Tags on lesions and saved grid views in the label store (schema v4).

Tests taking the ``store`` / ``open_store`` fixtures are part of the backend contract:
test_label_store_postgres.py imports them and runs them on a real PostgreSQL server.
"""

from __future__ import annotations

import pandas as pd
import pytest
from label_fixtures import *  # noqa: F403 - the shared fixtures (manifest, pseudo, ...)
from label_fixtures import synthetic_ids, synthetic_pseudo
from test_label_store import open_store, store, target  # noqa: F401 - fixtures

from deeplesion_lab.labels import LabelStore, LabelStoreError, NothingToUndo, UndoConflict
from deeplesion_lab.labels import schema as label_schema

pytestmark = pytest.mark.timeout(120)


def _ids(manifest: pd.DataFrame, n: int, start: int = 0) -> list[str]:
    return manifest["lesion_id"].astype(str).iloc[start:start + n].tolist()


def test_tags_are_events_with_user_time_and_undo(store, manifest):  # noqa: F811
    a, b = _ids(manifest, 3), _ids(manifest, 2, start=10)
    labels_before = store.current_labels()
    e1 = store.tag(a, ["review", "hard"], "alice", tool="lesion-lab")
    tags = store.lesion_tags()
    assert sorted(zip(tags["lesion_id"], tags["tag"], strict=True)) == sorted(
        (i, t) for i in a for t in ("hard", "review"))
    assert set(tags["tagged_by"]) == {"alice"} and (tags["event_id"] == e1).all()
    assert tags["tagged_at"].str.match(r"\d{4}-\d\d-\d\dT").all()
    ev = store.events(limit=1).iloc[0]
    assert (ev["op"], ev["user"], ev["tool"], ev["n_changes"]) == ("tag", "alice", "lesion-lab", 6)
    assert ev["detail"] == "6 lesion tag(s) tagged review, hard"
    # tagging again what is tagged writes nothing
    v = store.version()
    assert store.tag(a, "review", "alice") is None and store.version() == v
    e2 = store.tag(b, "review", "bob")
    counts = dict(zip(*store.tag_counts().T.to_numpy(), strict=True))
    assert counts == {"review": 5, "hard": 3}
    # labels are not touched by tags
    pd.testing.assert_frame_equal(store.current_labels(), labels_before)
    # alice's undo takes back her tags only (bob's stay), redo puts them back
    res = store.undo("alice")
    assert res.target_event_id == e1 and sorted(res.lesion_ids) == sorted(a)
    assert store.tag_counts().set_index("tag")["n_lesions"].to_dict() == {"review": 2}
    assert store.events(limit=1).iloc[0]["detail"] == f"undo of event {e1}: 6 tag change(s)"
    store.redo("alice")
    assert store.tag_counts().set_index("tag")["n_lesions"].to_dict() == {"review": 5, "hard": 3}
    # untag is undoable too
    e3 = store.untag(a[:1], "hard", "alice")
    assert sorted(store.lesion_tags(a[:1])["tag"]) == ["review"]
    assert store.undo("alice").target_event_id == e3
    assert sorted(store.lesion_tags(a[:1])["tag"]) == ["hard", "review"]
    hist = store.tag_history(lesion_id=a[0])
    assert hist["op"].tolist()[:2] == ["undo", "untag"] and hist["undone"].tolist()[1]
    assert (hist["user"] == "alice").all() and e2 not in hist["event_id"].tolist()
    assert store.verify_tags() == {"replay_matches": True, "n_mismatched": 0, "mismatched": []}
    with store._db.write():  # tags_current changed behind the log's back is found
        store._db.execute("UPDATE tags_current SET present = 0 WHERE lesion_id = ?", (b[0],))
    assert store.verify_tags()["mismatched"] == [(b[0], "review")]


def test_undoing_a_tag_someone_changed_later_is_a_conflict(store, manifest):  # noqa: F811
    a = _ids(manifest, 2)
    store.tag(a, "check", "alice")
    store.untag(a[:1], "check", "bob")  # bob works on one of alice's tags later
    before = (store.version(), store.lesion_tags().to_json())
    with pytest.raises(UndoConflict, match="1 of its 2 tag change"):
        store.undo("alice")
    assert (store.version(), store.lesion_tags().to_json()) == before
    res = store.undo("alice", skip_conflicts=True)
    assert res.lesion_ids == [a[1]] and res.conflicts["lesion_id"].tolist() == [a[0]]
    assert store.lesion_tags().empty
    store.undo("bob")  # bob's untag is his own to undo: the tag is back on a[0]
    assert store.lesion_tags()["lesion_id"].tolist() == [a[0]]
    assert store.verify_tags()["replay_matches"]
    with pytest.raises(NothingToUndo):
        store.undo("carol")


def test_bad_tag_input_is_a_clear_error_and_writes_nothing(store, manifest):  # noqa: F811
    a = _ids(manifest, 2)
    v = store.version()
    with pytest.raises(LabelStoreError, match="not in this store's dataset"):
        store.tag([*a, "no-such-lesion"], "x", "alice")
    with pytest.raises(LabelStoreError, match="tag: a non-empty name"):
        store.tag(a, ["ok", "  "], "alice")
    with pytest.raises(LabelStoreError, match="tag: longer than 64"):
        store.tag(a, "x" * 65, "alice")
    with pytest.raises(LabelStoreError, match="no tag given"):
        store.tag(a, [], "alice")
    with pytest.raises(LabelStoreError, match="empty selection"):
        store.tag([], "x", "alice")
    with pytest.raises(LabelStoreError, match="invalid user name"):
        store.tag(a, "x", "not a user")
    assert store.version() == v and store.lesion_tags().empty


def test_saved_views_per_user_readable_by_all(store, manifest):  # noqa: F811
    spec = {"filters": {"splits": ["test"], "confidence": [0.2, 0.8], "tags": ["review"]},
            "sort_by": "confidence", "descending": True, "selection": _ids(manifest, 4)}
    vid = store.save_view("hard cases", "alice", spec)
    assert store.load_view("hard cases", "alice") == spec  # anyone may load it
    with pytest.raises(LabelStoreError, match="alice already has a view 'hard cases'"):
        store.save_view("hard cases", "alice", {"sort_by": "size"})
    assert store.load_view("hard cases", "alice") == spec  # nothing saved was lost
    assert store.save_view("hard cases", "alice", {"sort_by": "size"}, overwrite=True) == vid
    store.save_view("hard cases", "bob", spec)  # bob's own view of the same name
    views = store.saved_views()
    assert views[["owner", "name"]].to_numpy().tolist() == [["alice", "hard cases"],
                                                          ["bob", "hard cases"]]
    assert views["n_selected"].tolist() == [0, 4]
    assert store.saved_views("bob")["spec"].iloc[0] == spec
    with pytest.raises(LabelStoreError, match="only its owner can delete it: alice, bob"):
        store.delete_view("hard cases", "carol")
    store.delete_view("hard cases", "alice")
    assert store.saved_views()["owner"].tolist() == ["bob"]
    with pytest.raises(LabelStoreError, match="alice has no saved view 'hard cases'"):
        store.load_view("hard cases", "alice")
    with pytest.raises(LabelStoreError, match="not JSON"):
        store.save_view("bad", "alice", {"x": float("nan")})
    with pytest.raises(LabelStoreError, match="must be a dict"):
        store.save_view("bad", "alice", ["a"])
    # the deleted view is marked, not erased (nothing saved is lost), and cannot be erased
    n = store._db.scalar("SELECT COUNT(*) FROM saved_views WHERE deleted_at IS NOT NULL")
    assert n == 1
    with pytest.raises(Exception, match="only marked deleted"):
        with store._db.write():
            store._db.execute("DELETE FROM saved_views")


def test_tag_changes_are_append_only(store, manifest):  # noqa: F811
    store.tag(_ids(manifest, 2), "x", "alice")
    with pytest.raises(Exception, match="append-only"):
        with store._db.write():
            store._db.execute("DELETE FROM tag_changes")


def test_v3_store_migrates_to_v4_with_tags_and_views(tmp_path, monkeypatch):
    """A store made by schema v3 (before tags) opens, migrates and takes tags and views."""
    p = tmp_path / "labels.sqlite"
    ids = synthetic_ids(30)
    with monkeypatch.context() as mp:  # the code as it was at v3: migrations 1-3 only
        mp.setattr(label_schema, "MIGRATIONS", label_schema.MIGRATIONS[:3])
        mp.setattr(label_schema, "CURRENT_VERSION", 3)
        with LabelStore.open(p, dataset=pd.DataFrame({"lesion_id": ids})) as s:
            s.init_pseudo_labels(synthetic_pseudo(ids), "run-1")
            s.relabel(ids[:3], "lung", "alice")
            assert s.schema_version == 3 and "tags_current" not in s._db.table_names()
    with LabelStore.open(p) as s:
        assert s.schema_version == label_schema.CURRENT_VERSION == 4
        mig = s._db.query("SELECT version, description FROM schema_migrations ORDER BY version")
        assert [r[0] for r in mig] == [1, 2, 3, 4] and "tags" in mig[-1][1]
        assert (s.labels_of(ids[:3])["label"] == "lung").all()  # v3's work is kept
        s.tag(ids[:2], "v4", "alice")
        s.save_view("v", "alice", {"selection": ids[:1]})
        assert s.tag_counts()["n_lesions"].tolist() == [2]
        assert s.saved_views()["n_selected"].tolist() == [1]
        assert s.undo("alice").target_op == "tag"  # then the v3 relabel
        assert s.undo("alice").target_op == "relabel"
        assert s.verify()["replay_matches"]
