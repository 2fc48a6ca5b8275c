"""Reviewing mined lesions in a real browser (issue 16): LesionLab's "Review mined lesions" tab in
JupyterLab, driven by chromium with the mouse and the keyboard; the decisions are read back from
the label store by this process. A screenshot goes to ``test-artifacts/proposal_review.png``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_proposal_review import write_proposals
from widgets_fixtures import (
    chromium_page,
    jupyterlab,
    make_tiny_run,
    need_chromium,
    notebook,
    open_notebook,
    wait_until,
)

pytestmark = pytest.mark.browser

USER = "key-reviewer"
BG = "rgb(23, 25, 29)"  # .dlr background in widgets/proposal_review.css


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    need_chromium()
    t = make_tiny_run(tmp_path_factory.mktemp("review_run"), source="hand")
    write_proposals(t.run_dir)
    return t


def _store_decisions(run_dir: Path):
    from deeplesion_lab.labels import LabelStore

    with LabelStore.for_run(run_dir) as store:
        return store.added_lesions(), store.events(limit=20)


def test_review_with_mouse_and_keys_in_lesion_lab(tiny, tmp_path):
    from playwright.sync_api import sync_playwright

    root = tmp_path / "root"
    root.mkdir()
    src = (
        "from widgets import LesionLab\n"
        f"lab = LesionLab(r'{tiny.run_dir}', user={USER!r}, size=380)\n"
        "lab"
    )
    (root / "review.ipynb").write_text(json.dumps(notebook(src)))
    with (
        jupyterlab(root) as url,
        sync_playwright() as p,
        chromium_page(p, "proposal_review", height=1500) as page,
    ):
        open_notebook(page, url, "review.ipynb", wait_for=".dlv canvas")
        tab = page.locator(".lm-TabBar-tab", has_text="Review mined")
        tab.first.click()
        panel = page.locator(".dlr").first
        panel.wait_for(state="visible", timeout=30_000)
        # the style sheet beside the ESM (proposal_review.css) reached the page
        assert panel.evaluate("e => getComputedStyle(e).backgroundColor") == BG
        assert panel.get_attribute("data-active") == "false"
        panel.get_by_text("Start review").click()
        page.wait_for_function(
            "() => document.querySelector('.dlr').dataset.active === 'true'", timeout=15_000)
        first = panel.get_attribute("data-proposal")
        assert first
        # the viewer draws the proposal under review
        page.wait_for_function(
            "() => Number(document.querySelector('.dlv').parentElement.dataset"
            ".shownCandidates) > 0", timeout=15_000)
        # keys go to the panel after a click in it: a accepts, 2 accepts as the 2nd type
        panel.locator(".dlr-head").click()
        page.keyboard.press("a")
        added, _ = wait_until(lambda: (lambda a: a if len(a[0]) == 1 else None)(
            _store_decisions(tiny.run_dir)), what="the accept")
        assert added["lesion_id"].iloc[0] == first and added["added_by"].iloc[0] == USER
        page.wait_for_function(
            f"() => document.querySelector('.dlr').dataset.proposal !== {first!r}",
            timeout=15_000)
        second = panel.get_attribute("data-proposal")
        types = panel.locator(".dlr-type")
        second_type = types.nth(1).inner_text().strip().rstrip("0123456789").strip()
        page.keyboard.press("2")
        added, events = wait_until(lambda: (lambda a: a if len(a[0]) == 2 else None)(
            _store_decisions(tiny.run_dir)), what="the accept as a type")
        row = added.set_index("lesion_id").loc[second]
        assert row["label"] == second_type
        # the correction panel of the same cell did not take the key as well
        assert not (events["op"] == "relabel").any(), events[["op", "user"]]
        # r rejects, u undoes it
        page.wait_for_function(
            f"() => document.querySelector('.dlr').dataset.proposal !== {second!r}",
            timeout=15_000)
        page.keyboard.press("r")
        wait_until(lambda: len(_store_decisions(tiny.run_dir)[0]) == 3, what="the reject")
        page.keyboard.press("u")
        wait_until(lambda: len(_store_decisions(tiny.run_dir)[0]) == 2, what="the undo")
        page.wait_for_function(
            "() => document.querySelector('.dlr .dlr-status').textContent.includes('undid')",
            timeout=15_000)
        assert tab.first.inner_text().strip().endswith(f"({len(tiny_pending(tiny))})")
        assert not page.page_errors, page.page_errors


def tiny_pending(tiny) -> list[str]:
    from deeplesion_lab.graph import proposal_status, read_proposals

    added, _ = _store_decisions(tiny.run_dir)
    st = proposal_status(read_proposals(tiny.run_dir), added)
    return st.loc[st["status"] == "pending", "proposal_id"].tolist()


def test_review_in_the_served_dashboard(tmp_path, tmp_path_factory):
    """An annotator reviews in the dashboard's Review tab with a click and a key."""
    need_chromium()
    from dashboard_fixtures import USERS, ServedDashboard, fresh_run, make_users
    from playwright.sync_api import sync_playwright

    run = fresh_run(tmp_path, tmp_path_factory.getbasetemp())
    write_proposals(run, seed=5)
    users = make_users(tmp_path / "users.json")
    srv = ServedDashboard(run, users, tmp_path / "server.log", poll_ms=300)
    try:
        with sync_playwright() as p, chromium_page(p, "dashboard_review", width=1500) as page:
            page.set_default_timeout(60_000)
            page.goto(srv.url + "/")
            page.wait_for_url("**/login**")
            page.fill("#username", "ann")
            page.fill("#password", USERS["ann"][1])
            page.click("#login-submit")
            page.wait_for_selector(".dlm-stage canvas")
            page.get_by_text("Review", exact=True).first.click()
            panel = page.locator(".dlr").first
            panel.wait_for(state="visible")
            # ... and the Panel twin's shadow root (its _stylesheets)
            assert panel.evaluate("e => getComputedStyle(e).backgroundColor") == BG
            panel.get_by_text("Start review").click()
            wait_until(lambda: panel.get_attribute("data-active") == "true", what="the start")
            first = panel.get_attribute("data-proposal")
            panel.locator(".dlr-head").click()
            page.keyboard.press("a")
            added, events = wait_until(lambda: (lambda a: a if len(a[0]) == 1 else None)(
                _store_decisions(run)), what="the accept")
            assert added["lesion_id"].iloc[0] == first and added["added_by"].iloc[0] == "ann"
            ev = events[events["op"] == "add_lesions"].iloc[0]
            assert ev["user"] == "ann"
            # the page shows the decision and the next proposal
            wait_until(lambda: panel.get_attribute("data-proposal") != first, what="the next")
            wait_until(lambda: panel.locator(".dlr-item").count() == 1, what="the decision list")
            assert first in panel.locator(".dlr-item").first.inner_text()
    finally:
        srv.stop()
