"""The served dashboard in a real browser (Playwright + Debian's chromium), loopback only.

Annotator: signs in through the form, sees the map and a slice, lassoes points and relabels
them; a second user, already looking in another browser context, sees the map change without
reloading. Viewer: no correction controls, and a relabel request forged in the page's own
Bokeh document is refused by the server. Unauthenticated requests get the login page. A class
named ``<img src=x onerror=alert(1)>`` is shown as text. No request leaves 127.0.0.1.

Screenshots go to ``test-artifacts/dashboard_*.png``. Run with ``pytest -m browser``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dashboard_fixtures import HTML_CLASS, USERS, ServedDashboard, fresh_run, make_users
from widgets_fixtures import ARTIFACTS, CHROMIUM_ARGS, need_chromium

from deeplesion_lab.labels import LabelStore

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

LOCAL = ("http://127.0.0.1", "ws://127.0.0.1", "blob:http://127.0.0.1", "data:")

#: ``deepAll(selector)``: querySelectorAll through open shadow roots (Panel renders in them).
DEEP = """const deepAll = (sel) => { const out = [];
  const walk = (root) => { out.push(...root.querySelectorAll(sel));
    for (const e of root.querySelectorAll('*')) if (e.shadowRoot) walk(e.shadowRoot) };
  walk(document); return out };"""


def _js(body: str) -> str:
    """A page function with :data:`DEEP` in scope."""
    return f"(arg) => {{ {DEEP} {body} }}"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("browser")
    run = fresh_run(base, tmp_path_factory.getbasetemp())
    users = make_users(base / "users.json")
    srv = ServedDashboard(run, users, base / "server.log", poll_ms=300)
    yield srv, run
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    chromium = need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def traffic():
    """Every request any page made that did not go to 127.0.0.1, and every JS dialog."""
    return {"external": [], "dialogs": []}


def _page(browser, traffic):
    ctx = browser.new_context(viewport={"width": 1720, "height": 1080})
    page = ctx.new_page()
    page.set_default_timeout(60_000)

    def on_request(req):
        if not req.url.startswith(LOCAL):
            traffic["external"].append(req.url)

    def on_dialog(dialog):
        traffic["dialogs"].append(dialog.message)
        dialog.dismiss()

    page.on("request", on_request)
    page.on("dialog", on_dialog)
    return ctx, page


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard_{name}.png"), full_page=True)


def _sign_in(page, url: str, user: str) -> None:
    page.goto(url + "/")
    page.wait_for_url("**/login**")
    page.fill("#username", user)
    page.fill("#password", USERS[user][1])
    page.click("#login-submit")
    page.wait_for_selector(".dlm-stage canvas")
    page.wait_for_function(
        _js("const e = deepAll('[data-image-slice]')[0];"
            " return !!e && Number(e.dataset.imageSlice) >= 0 && Number(e.dataset.renders) > 0")
    )  # the slice viewer has drawn a slice


def _legend_count(page, label: str) -> int:
    """The count the map's legend shows for ``label`` (0 when absent)."""
    texts = page.locator(".dlm-chip").all_inner_texts()
    for t in texts:
        name, _, n = t.strip().rpartition(" ")
        if name == label:
            return int(n.replace(",", ""))
    return 0


def _lasso_left_half(page) -> None:
    box = page.locator(".dlm-stage").bounding_box()
    x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
    pts = [(x0 + 4, y0 + 4), (x0 + w * 0.5, y0 + 4), (x0 + w * 0.5, y0 + h - 4), (x0 + 4, y0 + h - 4),
           (x0 + 4, y0 + 6)]
    page.mouse.move(*pts[0])
    page.mouse.down()
    for p in pts[1:]:
        page.mouse.move(*p, steps=8)
    page.mouse.up()


_SELECTED = "const b = deepAll('.dlc-sel b')[0]; return !!b && Number(b.textContent) > 0"


def _store(run: Path) -> LabelStore:
    return LabelStore.open(run / "labels.sqlite")


def test_unauthenticated_requests_get_the_login_page(served, browser, traffic):
    srv, _ = served
    ctx, page = _page(browser, traffic)
    try:
        resp = ctx.request.get(srv.url + "/", max_redirects=0)
        assert resp.status == 302 and "login" in resp.headers["location"]
        page.goto(srv.url + "/")
        page.wait_for_url("**/login**")
        assert page.locator("#login-submit").is_visible()
        assert page.locator(".dlm-stage").count() == 0
        page.fill("#username", "ann")
        page.fill("#password", "not her password")
        page.click("#login-submit")
        assert "Wrong user name or password" in page.locator("#login-error").inner_text()
        _shot(page, "login")
    finally:
        ctx.close()


def test_annotator_lasso_relabel_seen_live_by_a_second_user(served, browser, traffic):
    srv, run = served
    bob_ctx, bob = _page(browser, traffic)
    ann_ctx, ann = _page(browser, traffic)
    try:
        _sign_in(bob, srv.url, "bob")  # bob is already looking when ann corrects
        _sign_in(ann, srv.url, "ann")
        assert "ann · annotator" in ann.locator("#dl-user").inner_text()
        assert ann.locator(".dlc").is_visible()
        before_bob = _legend_count(bob, "lung")

        _lasso_left_half(ann)
        ann.wait_for_function(_js(_SELECTED))
        n_sel = int(ann.locator(".dlc-sel b").inner_text().replace(",", ""))
        assert n_sel > 0, "the lasso selected points"
        ann.locator(".dlc select").first.select_option("lung")
        ann.fill(".dlc input[placeholder='comment (optional)']", "lasso in the browser")
        ann.get_by_role("button", name="Relabel selection").click()
        ann.wait_for_selector(".dlc-status.ok")
        assert f"relabelled {n_sel} lesion(s) as lung" in ann.locator(".dlc-status").inner_text()
        _shot(ann, "annotator")

        store = _store(run)
        try:
            ev = store.events(limit=1).iloc[0]
            assert (ev["user"], ev["op"], int(ev["n_changes"]) <= n_sel) == ("ann", "relabel", True)
            assert ev["comment"] == "lasso in the browser"
            cur = store.current_labels()
            expected = int((cur["label"] == "lung").sum())
        finally:
            store.close()
        assert before_bob < expected <= before_bob + n_sel
        # bob's map recolours by itself (periodic poll of the store), no reload
        bob.wait_for_function(
            _js("return deepAll('.dlm-chip').some(c => c.textContent.trim() === `${arg[0]} ${arg[1]}`)"),
            arg=["lung", expected],
        )
        assert _legend_count(bob, "lung") == expected
        _shot(bob, "second_user")
    finally:
        ann_ctx.close()
        bob_ctx.close()


def test_viewer_has_no_controls_and_a_forged_request_is_refused(served, browser, traffic):
    srv, run = served
    ctx, page = _page(browser, traffic)
    store = _store(run)
    try:
        _sign_in(page, srv.url, "vic")
        assert page.locator("#dl-viewer-note").is_visible()
        assert not page.locator(".dlc").is_visible(), "viewers do not see correction controls"
        assert page.get_by_role("button", name="Relabel selection").count() == 0 or not (
            page.get_by_role("button", name="Relabel selection").is_visible()
        )
        v0 = store.version()
        # what a viewer could try: write a request into the page's document by hand
        found = page.evaluate(
            """() => { for (const doc of Bokeh.documents) for (const m of doc.all_models) {
                 const d = m.data; if (d && d.properties && 'request' in d.properties) {
                   d.request = {op: 'relabel', label: 'lung', nonce: 4242}; return true } }
               return false }"""
        )
        assert found, "the (hidden) correction panel model is in the page"
        status = page.wait_for_function(
            """() => { for (const doc of Bokeh.documents) for (const m of doc.all_models) {
                 const d = m.data; if (d && d.properties && 'status' in d.properties && 'request'
                   in d.properties && d.status && d.status.nonce === 4242) return d.status }
               return null }"""
        ).json_value()
        assert status["ok"] is False and "viewer" in status["message"]
        assert store.version() == v0, "nothing was written"
        _shot(page, "viewer")
    finally:
        store.close()
        ctx.close()
    assert "refused relabel for vic" in srv.log()


def test_html_class_name_is_shown_as_text(served, browser, traffic):
    srv, run = served
    ctx, page = _page(browser, traffic)
    try:
        _sign_in(page, srv.url, "root")
        page.fill(".dlc input[placeholder='class name']", HTML_CLASS)
        page.get_by_role("button", name="Add class").click()
        page.wait_for_selector(".dlc-status.ok")
        _lasso_left_half(page)
        page.wait_for_function(_js(_SELECTED))
        page.locator(".dlc select").first.select_option(HTML_CLASS)
        page.fill(".dlc input[placeholder='comment (optional)']", "<b>not bold</b>")
        page.get_by_role("button", name="Relabel selection").click()
        page.wait_for_function(
            _js("return deepAll('.dlc-status.ok').some(e => e.textContent.includes('relabelled'))")
        )
        # the map legend shows the name as text
        page.wait_for_function(
            _js("return deepAll('.dlm-chip').some(c => c.textContent.startsWith(arg))"), arg=HTML_CLASS
        )
        page.locator(".bk-tab", has_text="History").click()  # rendered when it comes into view
        page.locator("table.dl-table td", has_text=HTML_CLASS).first.wait_for()
        page.locator("table.dl-table td", has_text="<b>not bold</b>").first.wait_for()
        _shot(page, "html_as_text")
        page.locator(".bk-tab", has_text="Metrics").click()
        page.locator("table.dl-table td", has_text=HTML_CLASS).first.wait_for()
        _shot(page, "metrics")
        injected = page.evaluate(
            _js("return deepAll('img[src=\"x\"]').length"
                " + deepAll('b').filter(b => b.textContent === 'not bold').length")
        )
        assert injected == 0, "user text became HTML"
        assert traffic["dialogs"] == [], "a script from user text ran"
    finally:
        ctx.close()


def test_no_request_left_loopback(traffic):
    """Runs last in this module: every page above loaded only from 127.0.0.1."""
    assert traffic["external"] == []


def test_running_jobs_show_in_the_header_and_admin_progress(served, browser, traffic):
    """A background job of the run (here a stand-in command) appears with its progress bar."""
    from deeplesion_lab.jobs import start_job, wait_for_jobs

    srv, run = served
    start_job(run, "stand-in", ["demo-data", "--out", str(run.parent / "jobdemo"), "--patients",
                                "6", "--seed", "5"], user="root")
    ctx, page = _page(browser, traffic)
    try:
        _sign_in(page, srv.url, "root")
        page.wait_for_function(_js("return deepAll('#dl-jobs-running').length > 0"), timeout=30000)
        page.get_by_text("Admin", exact=True).click()
        page.wait_for_function(
            _js("const t = deepAll('#dl-jobs')[0]; return !!t && t.textContent.includes('stand-in')"
                " && deepAll('#dl-jobs progress').length > 0"), timeout=30000)
        _shot(page, "jobs")
        (rec,) = wait_for_jobs(run, ["stand-in"], timeout=120)
        assert rec.state == "done"
        page.wait_for_function(
            _js("const t = deepAll('#dl-jobs')[0]; return !!t && t.textContent.includes('done')"),
            timeout=30000)  # the page refreshes by itself
    finally:
        ctx.close()
