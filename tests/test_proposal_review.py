"""Reviewing mined lesions (issue 16): decisions as undoable label-store events, the headless
review model walking proposals in the viewer, the panel's requests, and the panel in LesionLab."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from widgets_fixtures import make_tiny_run

from deeplesion_lab.graph import (
    GraphError,
    decide_proposals,
    proposal_status,
    propose_missing,
    rank_proposals,
    read_proposals,
    review_queue,
)
from deeplesion_lab.labels import LabelStore, LabelStoreError
from deeplesion_lab.labels.taxonomy import NOT_A_LESION
from deeplesion_lab.manifest import read_manifest
from deeplesion_lab.run import RunDir

USER = "rita"


def write_proposals(run_dir: Path, seed: int = 0) -> pd.DataFrame:
    """Real proposals (``propose_missing`` + ``rank_proposals``) from detections placed away
    from the annotated lesion on each key image: two per image, with distinct scores."""
    run = RunDir(run_dir)
    man = read_manifest(run.manifest_path())
    rng = np.random.default_rng(seed)
    rows = []
    for f, g in man.groupby("file_name"):
        w = int(g["image_width"].iloc[0])
        for k in range(2):
            x1 = 4.0 + 30 * k
            y1 = float(w - 24)
            rows.append({"file_name": f, "x1": x1, "y1": y1, "x2": x1 + 14, "y2": y1 + 14,
                         "score": float(rng.uniform(0.3, 0.95)), "label": "lesion"})
    props = rank_proposals(propose_missing(man, pd.DataFrame(rows)))
    run.graph_dir.mkdir(exist_ok=True)
    props.to_parquet(run.graph_dir / "proposals.parquet", index=False)
    return props


@pytest.fixture()
def tiny(tmp_path):
    t = make_tiny_run(tmp_path, source="hand")
    t.proposals = write_proposals(t.run_dir)
    from widgets.models import LabModel

    LabModel(t.run_dir, user="setup").labels.close()  # creates labels.sqlite from pseudo-labels
    return t


# the core: decisions are store events ------------------------------------------------------------
def test_decisions_are_undoable_events_of_the_store(tiny):
    props = read_proposals(tiny.run_dir)
    q = review_queue(props)
    assert q["rank_score"].is_monotonic_decreasing and len(q) == len(tiny.proposals) >= 4
    a, b, c = (str(x) for x in q["proposal_id"].head(3))
    e1 = decide_proposals(tiny.run_dir, [a], "accept", USER, tool="review")
    e2 = decide_proposals(tiny.run_dir, [b], "accept", USER, label="liver")
    e3 = decide_proposals(tiny.run_dir, [c], "reject", USER)
    assert e1 < e2 < e3
    with LabelStore.for_run(tiny.run_dir) as store:
        st = proposal_status(q, store.added_lesions()).set_index("proposal_id")
        ev = store.events(limit=3)
        assert list(ev["op"]) == ["add_lesions"] * 3 and set(ev["user"]) == {USER}
        assert st.loc[a, "status"] == "accepted" and st.loc[a, "decided_label"] is None
        assert st.loc[b, "status"] == "accepted" and st.loc[b, "decided_label"] == "liver"
        assert st.loc[c, "status"] == "rejected" and st.loc[c, "decided_by"] == USER
        assert int(st.loc[c, "event_id"]) == e3
        assert (st.drop(index=[a, b, c])["status"] == "pending").all()
        # a rejected proposal is kept as "not a lesion": out of the training rows
        added = store.added_lesions()
        assert added.set_index("lesion_id").loc[c, "label"] == NOT_A_LESION
        # deciding twice changes nothing; undo takes the last decision back
        assert decide_proposals(tiny.run_dir, [c], "accept", USER, store=store) is None
        res = store.undo(USER)
        assert res.target_event_id == e3
        st = proposal_status(q, store.added_lesions()).set_index("proposal_id")
        assert st.loc[c, "status"] == "pending" and st.loc[b, "status"] == "accepted"
        assert store.verify()["replay_matches"]


def test_bad_decisions_are_clear_errors_and_write_nothing(tiny, tmp_path):
    pid = str(tiny.proposals["proposal_id"].iloc[0])
    with LabelStore.for_run(tiny.run_dir) as store:
        v = store.version()
    with pytest.raises(GraphError, match="decision must be one of accept, reject"):
        decide_proposals(tiny.run_dir, [pid], "maybe", USER)
    with pytest.raises(GraphError, match="rejected proposal has no type"):
        decide_proposals(tiny.run_dir, [pid], "reject", USER, label="liver")
    with pytest.raises(GraphError, match="'nope' is not a proposal"):
        decide_proposals(tiny.run_dir, [pid, "nope"], "accept", USER)
    with pytest.raises(LabelStoreError, match="unknown class 'tumour'"):
        decide_proposals(tiny.run_dir, [pid], "accept", USER, label="tumour")
    with LabelStore.for_run(tiny.run_dir) as store:
        assert store.version() == v and store.added_lesions().empty
    empty = RunDir(tmp_path / "other").init(tiny.manifest)
    with pytest.raises(GraphError, match=r"proposals.parquet not found; run `deeplesion-lab graph"):
        read_proposals(empty)


# the headless model -------------------------------------------------------------------------------
def test_review_walks_proposals_best_first_in_the_viewer(tiny):
    from widgets.models import LabModel

    lab = LabModel(tiny.run_dir, user=USER)
    rv, viewer = lab.review, lab.viewer
    shown = viewer.lesion_id
    assert rv.available and rv.counts() == {"pending": len(tiny.proposals), "accepted": 0,
                                            "rejected": 0, "total": len(tiny.proposals)}
    # a label change elsewhere in the lab does not move the viewer to a proposal
    lab.corrections.map.select([0])
    lab.corrections.relabel_selection("bone")
    assert viewer.lesion_id == shown and not rv.active
    cur = rv.start()
    best = review_queue(tiny.proposals).iloc[0]
    assert cur["proposal_id"] == best["proposal_id"] and cur["position"] == 1
    assert viewer.file_name == best["file_name"] and viewer.slice_index == viewer.key_slice
    cands = viewer.overlays()["candidates"]
    focus = [c for c in cands if c.get("current")]
    assert len(focus) == 1 and focus[0]["id"] == best["proposal_id"]
    assert focus[0]["box"] == pytest.approx([best.x1, best.y1, best.x2, best.y2])
    # accept moves on to the next pending proposal, which the viewer then shows
    rv.accept()
    assert rv.current()["position"] == 2 and rv.counts()["accepted"] == 1
    assert viewer.file_name == rv.current()["file_name"]
    marked = {c["id"]: c["status"] for c in viewer.overlays()["candidates"] if "id" in c}
    assert marked.get(best["proposal_id"], "accepted") == "accepted"
    second = rv.current()["proposal_id"]
    types = rv.types()
    assert NOT_A_LESION not in types and "unsure" not in types
    rv.accept_as(2)
    third = rv.current()["proposal_id"]
    rv.reject()
    st = rv.queue.set_index("proposal_id")
    assert st.loc[second, "decided_label"] == types[1]
    assert st.loc[third, "status"] == "rejected"
    # deciding a decided proposal again is refused; undo goes back to it, pending again
    rv.go_to(third)
    from widgets.models import CorrectionError

    with pytest.raises(CorrectionError, match="was rejected by rita; undo that decision first"):
        rv.reject()
    rv.undo()
    assert rv.current()["proposal_id"] == third and rv.current()["status"] == "pending"
    # pending only: next skips decided ones; without, it visits them too
    rv.go(0)
    rv.step(1)
    assert rv.current()["proposal_id"] == third
    rv.set_pending_only(False)
    rv.go(0)
    rv.step(1)
    assert rv.current()["proposal_id"] == second
    with pytest.raises(CorrectionError, match="type number 99 out of range"):
        rv.accept_as(99)
    lab.labels.close()


def test_decisions_by_another_annotator_appear_on_refresh(tiny):
    from widgets.models import LabModel

    mine = LabModel(tiny.run_dir, user=USER)
    mine.review.start()
    pid = mine.review.current()["proposal_id"]
    other = LabModel(tiny.run_dir, user="sam")
    other.review.go_to(pid)
    other.review.reject()
    assert mine.review.current()["status"] == "pending"
    assert mine.labels.poll()  # the lab polls the store (the panel's timer, the dashboard's)
    assert mine.review.current()["status"] == "rejected"
    assert mine.review.current()["decided_by"] == "sam"
    from widgets.models import CorrectionError

    with pytest.raises(CorrectionError, match="rejected by sam"):
        mine.review.accept()
    mine.labels.close()
    other.labels.close()


def test_a_run_without_proposals_says_why(tmp_path):
    from widgets.models import CorrectionError, LabModel

    t = make_tiny_run(tmp_path, source="hand")
    (RunDir(t.run_dir).graph_dir / "proposals.parquet").unlink()
    lab = LabModel(t.run_dir, user=USER)
    assert not lab.review.available and "proposals.parquet not found" in lab.review.error
    with pytest.raises(CorrectionError, match="proposals.parquet not found"):
        lab.review.start()
    lab.labels.close()


# the panel ------------------------------------------------------------------------------------------
def _send(panel, **req):
    from test_widgets import from_front_end

    req.setdefault("nonce", int(np.random.default_rng().integers(1 << 30)))
    from_front_end(panel, request=req)
    return panel.status


def test_panel_requests_and_the_lab_tab(tiny):
    from widgets import LesionLab

    lab = LesionLab(tiny.run_dir, user=USER, size=300)
    panel = lab.review
    n = len(tiny.proposals)
    assert lab.tasks.titles == ("Correct labels", f"Review mined ({n})")
    assert panel.available and not panel.active and panel.counts["pending"] == n
    st = _send(panel, op="start")
    assert st["ok"] and panel.active and panel.current["position"] == 1
    assert lab.viewer.model.file_name == panel.current["file_name"]
    # the slice viewer widget draws the candidate under review
    assert any(c.get("current") for c in lab.viewer.candidates)
    first = panel.current["proposal_id"]
    st = _send(panel, op="accept", label="lung")
    assert st["ok"] and f"accepted {first} as lung" in st["message"]
    assert panel.decisions[0] == {"proposal_id": first, "status": "accepted", "label": "lung",
                                  "user": USER}
    assert lab.tasks.titles[1] == f"Review mined ({n - 1})"
    st = _send(panel, op="reject")
    assert st["ok"] and panel.counts["rejected"] == 1
    st = _send(panel, op="undo")
    assert st["ok"] and "undid event" in st["message"] and panel.counts["rejected"] == 0
    st = _send(panel, op="accept", label="tumour")
    assert not st["ok"] and "unknown class 'tumour'" in st["message"]
    st = _send(panel, op="fly")
    assert not st["ok"] and "unknown request 'fly'" in st["message"]
    st = _send(panel, op="go_to", proposal_id=first)
    assert st["ok"] and panel.current["status"] == "accepted"
    # every decision is in the store's log with the user
    ev = lab.store.events(limit=5)
    assert set(ev.loc[ev["op"] == "add_lesions", "user"]) == {USER}
    lab.model.labels.close()


def test_standalone_review_starts_on_the_best_proposal(tiny):
    from widgets import ProposalReview

    w = ProposalReview(tiny.run_dir, user=USER, size=256)
    best = review_queue(tiny.proposals).iloc[0]
    assert w.panel.active and w.panel.current["proposal_id"] == best["proposal_id"]
    assert w.viewer.model.file_name == best["file_name"]
    w.model.labels.close()


# the dashboard's Review tab -------------------------------------------------------------------------
def test_dashboard_review_tab_checks_roles_and_records_the_user(tmp_path, tmp_path_factory):
    from dashboard_fixtures import USERS, fresh_run

    from widgets.dashboard.app import Dashboard, DashboardContext
    from widgets.dashboard.auth import User

    run_dir = fresh_run(tmp_path, tmp_path_factory.getbasetemp())
    props = write_proposals(run_dir, seed=3)
    ctx = DashboardContext(run_dir, local_user=User("local", "admin"), poll_ms=100)
    try:
        ann = Dashboard(ctx, User("ann", USERS["ann"][0]))
        vic = Dashboard(ctx, User("vic", USERS["vic"][0]))
        for d in (ann, vic):
            d.view()
            assert "Review" in [o.name for o in d.tabs.objects]
        assert ann.review_request("start")["ok"]
        first = ann.review.current["proposal_id"]
        assert first == review_queue(props)["proposal_id"].iloc[0]
        # the review moved the (shared) viewer model to the proposal's key slice; both views
        assert ann.review_viewer_widget.model.file_name == ann.review.current["file_name"]
        st = ann.review_request("accept", label="kidney")
        assert st["ok"], st
        # a viewer may walk the proposals but not decide
        assert vic.review_request("start")["ok"]
        st = vic.review_request("reject")
        assert not st["ok"] and "vic is a viewer: not allowed to relabel" in st["message"]
        with LabelStore.for_run(run_dir) as store:
            added = store.added_lesions().set_index("lesion_id")
            assert added.loc[first, "added_by"] == "ann" and added.loc[first, "label"] == "kidney"
            assert len(added) == 1
        # the other session sees the decision on its next poll
        vic.poll()
        vic.review_request("go_to", proposal_id=first)
        assert vic.review.current["status"] == "accepted"
        assert vic.review.current["decided_by"] == "ann"
        for d in (ann, vic):
            d.close()
    finally:
        ctx.close()


def test_the_review_moves_the_whole_lab_to_the_proposals_image(tiny):
    from widgets.models import LabModel

    lab = LabModel(tiny.run_dir, user=USER)
    cur = lab.review.start()
    shown = lab.viewer.lesion_id
    assert lab.data.row(shown)["file_name"] == cur["file_name"]
    assert lab.map.lesion_at(lab.map.current) == shown and lab.gallery.query == shown
    lab.labels.close()
