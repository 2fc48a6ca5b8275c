"""The dashboard app: sessions, roles, collaboration, escaping; and the served app over HTTP and
its websocket (a real server subprocess, real label store, no browser).

Browser tests are in ``test_dashboard_browser.py``, the load test in ``test_dashboard_load.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import re

import numpy as np
import pytest
from dashboard_fixtures import (
    HTML_CLASS,
    USERS,
    ServedDashboard,
    fresh_run,
    http_client,
    login,
    make_users,
    request,
)

from deeplesion_lab.errors import LabError
from deeplesion_lab.labels import LabelStore
from widgets.dashboard.app import (
    Dashboard,
    DashboardContext,
    PermissionDenied,
    synced_traits,
)
from widgets.dashboard.auth import User
from widgets.dashboard.bridge import panel_twin
from widgets.dashboard.client import ClientError, DashboardClient

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return fresh_run(tmp_path_factory.mktemp("dash"), tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def ctx(run_dir):
    c = DashboardContext(run_dir, local_user=User("local", "admin"), poll_ms=100)
    yield c
    c.close()


def _dash(ctx, name: str) -> Dashboard:
    return Dashboard(ctx, User(name, USERS[name][0]))


def _labels(store: LabelStore) -> dict[str, str]:
    cur = store.current_labels()
    return dict(zip(cur["lesion_id"].astype(str), cur["label"].astype(str), strict=True))


def _tab(dash: Dashboard, name: str) -> int:
    return [o.name for o in dash.tabs.objects].index(name)


def _point_ids(dash: Dashboard, points) -> list[str]:
    return [dash.lab.map.lesion_at(int(p)) for p in points]


# the twins -------------------------------------------------------------------------------------
def test_twins_mirror_the_widgets(ctx):
    d = _dash(ctx, "vic")
    pairs = ((d.map_widget, d.map), (d.viewer_widget, d.viewer),
             (d.panel_widget, d.corrections), (d.gallery_widget, d.gallery))
    for widget, twin in pairs:
        names = synced_traits(type(widget))
        assert names, type(widget).__name__
        for name in names:
            assert getattr(twin, name) == getattr(widget, name), name
    assert len(d.viewer.image) == 2 * d.viewer.image_shape[0] * d.viewer.image_shape[1] > 0
    assert len(d.map.point_visible) == len(d.map.codes) == ctx.data.n_points > 0
    # the map's point mask is its own parameter; Panel's `visible` still hides the component
    assert d.map.visible is True and 'model.get("point_visible")' in d.map._esm
    # a change made in Python reaches the twin
    before = d.map_widget.selection
    d.map_widget.selection = [0, 1]
    assert d.map.selection == np.array([0, 1], "<u4").tobytes() != before
    assert d.map_widget.selected.tolist() == [0, 1]


def test_header_counts_lesions_as_the_map_shows_them(ctx):
    from widgets.dashboard.app import lesion_count_text

    d = _dash(ctx, "vic")
    n = len(ctx.data)
    assert ctx.data.n_points == n and not ctx.present_only
    assert f"· {n:,} lesions</span>" in d._header_html()
    assert lesion_count_text(4927, 18, True) == "18 of 4,927 lesions have images"
    assert lesion_count_text(32, 30, False) == "30 of 32 lesions on the map"
    assert lesion_count_text(32735, 32735, False) == "32,735 lesions"


def test_a_trait_named_like_a_panel_parameter_is_refused():
    """A widget trait called ``visible`` (Panel hides a component with it) cannot be twinned."""
    import anywidget
    import traitlets as t

    class Clashing(anywidget.AnyWidget):
        _esm = "export default { render() {} };"
        visible = t.Bytes(b"").tag(sync=True)

    with pytest.raises(LabError, match="visible"):
        panel_twin(Clashing)


def test_front_end_changes_reach_the_models(ctx):
    """What the browser writes (a slice scroll, a click on the map) is acted on in Python."""
    d = _dash(ctx, "vic")
    slices = d.viewer.slices
    assert len(slices) > 1
    target = slices[0] if d.viewer.image_slice != slices[0] else slices[-1]
    before = d.viewer.image
    d.viewer.slice_index = target  # the viewer's wheel/slider writes this
    assert d.viewer.image_slice == target and d.lab.viewer.slice_index == target
    assert d.viewer.image != before
    other = 3 if d.map.current != 3 else 4
    d.map.click = {"point": other, "nonce": 1}  # the map's click writes this
    assert d.map.current == other
    assert d.viewer.lesion_id == d.lab.map.lesion_at(other)
    assert d.gallery.query.get("lesion_id") == d.viewer.lesion_id, "the gallery follows"
    assert d.gallery.items, "similar lesions found"


def test_page_can_only_write_what_its_front_end_writes(ctx):
    """A forged write of an output (the map's colours, the panel's user) is undone."""
    d = _dash(ctx, "ann")
    assert set(d.map._frontend_writes) == {"click", "filters", "hover_point", "selection"}
    assert d.corrections._frontend_writes == ("request",)
    codes = d.map.codes
    d.map.codes = bytes(len(codes))  # as a patch from the browser would
    assert d.map.codes == codes and d.map_widget.codes == codes
    d.corrections.user = "root"
    assert d.panel_widget.user == "ann" and d.corrections.user == "ann"


# roles -------------------------------------------------------------------------------------------
def test_annotator_relabel_goes_through_the_store_with_the_user(ctx):
    d = _dash(ctx, "ann")
    assert d.corrections.visible
    pts = [0, 1, 2]
    d.select(pts)
    ids = _point_ids(d, pts)
    status = d.request("relabel", label="liver", comment="checked")
    assert status["ok"], status
    assert all(_labels(ctx.store)[i] == "liver" for i in ids)
    h = ctx.store.history(lesion_id=ids[0])
    assert h.iloc[0]["user"] == "ann" and h.iloc[0]["label_after"] == "liver"
    codes = np.frombuffer(d.map.codes, np.uint8)
    names = [c["name"] for c in d.map.classes]
    assert all(names[codes[p]] == "liver" for p in pts), "the session's map recoloured"
    d.view()
    assert "checked" not in d.history.object, "tables out of view are rendered lazily"
    d.tabs.active = _tab(d, "History")  # as a click in the browser sets it
    assert "checked" in d.history.object and "ann" in d.history.object


def test_the_3d_tab_loads_the_viewers_lesion_only_when_opened(ctx):
    d = _dash(ctx, "vic")
    d.view()
    assert d.volume.volume == b"", "a closed tab loads nothing"
    d.tabs.active = _tab(d, "3-D")
    shape = d.volume.volume_shape
    assert d.volume.lesion_id == d.lab.viewer.lesion_id and shape[1] > 0
    assert len(d.volume.volume) == 2 * shape[0] * shape[1] * shape[2], "int16 bytes"
    other = d.lab.map.lesion_at(3)
    d.lab.show_lesion(other)
    assert d.volume.lesion_id == other, "the 3-D view follows the viewer"
    d.close()


def test_viewer_cannot_change_labels(ctx):
    d = _dash(ctx, "vic")
    assert not d.corrections.visible, "the correction controls are hidden for viewers"
    d.select([4, 5])
    v0, labels0, refused0 = ctx.store.version(), _labels(ctx.store), ctx.refused
    for op, args in (("relabel", {"label": "lung"}), ("undo", {}), ("add_class", {"name": "x"}),
                     ("relabel_cluster", {"cluster": 0, "label": "lung"}), ("bogus", {})):
        status = d.request(op, **args)
        assert status["ok"] is False and "viewer" in status["message"], (op, status)
    assert ctx.store.version() == v0 and _labels(ctx.store) == labels0
    assert ctx.refused == refused0 + 5
    assert d.request("suggest")["ok"], "looking (suggestions) is allowed"
    with pytest.raises(PermissionDenied):
        d.snapshot("mine")
    with pytest.raises(PermissionDenied):
        d.start_finetune()
    with pytest.raises(PermissionDenied):
        _dash(ctx, "ann").snapshot("not-for-annotators")
    assert ctx.store.version() == v0


def test_role_is_checked_at_write_time(tmp_path, tmp_path_factory):
    """A demoted or removed user's open page can no longer write."""
    import json

    from widgets.dashboard.auth import DashboardAuth, UserFile, add_user

    run = fresh_run(tmp_path, tmp_path_factory.getbasetemp())
    users = make_users(tmp_path / "users.json")
    c = DashboardContext(run, auth=DashboardAuth(UserFile(users)))
    try:
        d = Dashboard(c, User("bob", "annotator"))
        d.select([0])
        assert d.request("relabel", label="lung")["ok"]
        add_user(users, "bob", "viewer", USERS["bob"][1])  # demoted while his page is open
        st = d.request("relabel", label="liver")
        assert st["ok"] is False and "bob is a viewer" in st["message"]
        data = json.loads(users.read_text())
        del data["users"]["bob"]
        users.write_text(json.dumps(data))
        st = d.request("undo")
        assert st["ok"] is False and "no longer a user" in st["message"]
        assert c.store.events(limit=1).iloc[0]["user"] == "bob"
        assert int(c.store.version()) == 2, "only the first relabel was written"
    finally:
        c.close()


def test_collaborators_see_each_other_and_the_later_change_wins(ctx):
    ann, bob = _dash(ctx, "ann"), _dash(ctx, "bob")
    bob.poll()
    p = 6
    lid = _point_ids(ann, [p])[0]
    ann.select([p])
    assert ann.request("relabel", label="kidney")["ok"]
    assert bob.poll(), "bob's session notices ann's change"
    names = [c["name"] for c in bob.map.classes]
    assert names[np.frombuffer(bob.map.codes, np.uint8)[p]] == "kidney"
    assert not bob.poll(), "nothing new since"
    bob.select([p])
    assert bob.request("relabel", label="bone")["ok"]
    ann.poll()
    assert _labels(ctx.store)[lid] == "bone"
    names = [c["name"] for c in ann.map.classes]
    assert names[np.frombuffer(ann.map.codes, np.uint8)[p]] == "bone"
    h = ctx.store.history(lesion_id=lid)
    assert list(h["user"][:2]) == ["bob", "ann"] and list(h["label_after"][:2]) == ["bone", "kidney"]


def test_undo_is_per_user(ctx):
    ann, bob = _dash(ctx, "ann"), _dash(ctx, "bob")
    a_lid, b_lid = _point_ids(ann, [7, 8])
    before = _labels(ctx.store)
    ann.select([7])
    assert ann.request("relabel", label="pelvis")["ok"]
    bob.select([8])
    assert bob.request("relabel", label="pelvis")["ok"]
    assert ann.request("undo")["ok"]
    now = _labels(ctx.store)
    assert now[a_lid] == before[a_lid], "ann's change undone"
    assert now[b_lid] == "pelvis", "bob's change kept"
    assert bob.request("undo")["ok"]
    assert _labels(ctx.store)[b_lid] == before[b_lid]


def test_admin_snapshot_and_html_is_shown_as_text(ctx):
    root = _dash(ctx, "root")
    assert root.request("add_class", name=HTML_CLASS, color="#ff0000")["ok"]
    root.select([9])
    assert root.request("relabel", label=HTML_CLASS, comment="<b>bold?</b>")["ok"]
    root.view()
    sid = root.snapshot("<script>alert(2)</script>")
    assert sid is not None
    snaps = ctx.store.list_snapshots()
    assert "<script>alert(2)</script>" in set(snaps["name"])
    root.tabs.active = _tab(root, "History")
    root.tabs.active = _tab(root, "Metrics")
    for pane in (root.history, root.metrics, root.message, root.header):
        text = pane.object
        assert "<img src=x" not in text and "<script>" not in text and "<b>bold" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in root.metrics.object
    assert "&lt;b&gt;bold?&lt;/b&gt;" in root.history.object
    assert HTML_CLASS in [c["name"] for c in root.map.classes], "sent as data, drawn as text"


def test_finetune_job_is_admin_only_and_single(ctx, monkeypatch, tmp_path):
    from deeplesion_lab.jobs import read_job, wait_for_jobs

    root = _dash(ctx, "root")
    with pytest.raises(LabError, match="not allowed to finetune"):
        _dash(ctx, "ann").start_finetune()
    assert ctx.job.argv("root") == ["finetune", "--run", str(ctx.run.path), "--user", "root"]
    # a stand-in command that runs for a few seconds (the real one trains a detector)
    monkeypatch.setattr(ctx.job, "argv", lambda user: [
        "demo-data", "--out", str(tmp_path / "d"), "--patients", "2", "--seed", "1"])
    msg = root.start_finetune()
    assert "started by root" in msg
    with pytest.raises(LabError, match="already running"):
        root.start_finetune()
    assert "running" in ctx.job.status()
    (rec,) = wait_for_jobs(ctx.run, ["finetune"], timeout=120)
    assert rec.state == "done" and rec.user == "root", rec
    assert "exit code 0" in ctx.job.status()
    assert read_job(ctx.run, "finetune").progress == 1.0
    assert "demo-data" in ctx.job.log_tail(50)


def test_not_a_run_directory(tmp_path):
    with pytest.raises(LabError, match="not a run directory"):
        DashboardContext(tmp_path, local_user=User("x", "admin"))


def test_serve_command_registers():
    """``serve`` parses as the core CLI's entry point registers it."""
    from widgets.dashboard.cli import register

    parser = argparse.ArgumentParser(prog="deeplesion-lab")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--run", "r", "--port", "0"])
    assert args.address == "127.0.0.1" and args.users is None and callable(args.func)


def test_serve_help_through_the_core_cli():
    """``deeplesion-lab serve --help`` through the core CLI (entry point ``serve``)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "deeplesion_lab.cli", "serve", "--help"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0 and "invalid choice: 'serve'" in r.stderr:
        pytest.skip("the serve entry point is not installed (pip install -e .)")
    assert r.returncode == 0, r.stderr
    assert "--users" in r.stdout and "--add-user" in r.stdout and "127.0.0.1" in r.stdout


# the served app --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("served")
    run = fresh_run(base, tmp_path_factory.getbasetemp())
    users = make_users(base / "users.json")
    srv = ServedDashboard(run, users, base / "server.log", poll_ms=300)
    yield srv, run
    srv.stop()


def test_unauthenticated_requests_are_refused(served):
    srv, _ = served
    opener, _ = http_client()
    status, headers, _ = request(opener, srv.url + "/")
    assert status == 302 and "login" in headers["Location"]
    # a forged, unsigned cookie does not pass either
    status, headers, _ = request(opener, srv.url + "/?x=1")
    opener.addheaders = [("Cookie", "user=root")]
    status, headers, _ = request(opener, srv.url + "/")
    assert status == 302 and "login" in headers["Location"]

    async def ws_without_cookie():
        from bokeh.util.token import generate_jwt_token, generate_session_id
        from tornado.websocket import websocket_connect

        token = generate_jwt_token(generate_session_id())
        await websocket_connect(srv.url.replace("http", "ws") + "/ws", subprotocols=["bokeh", token])

    with pytest.raises(Exception) as e:
        asyncio.run(ws_without_cookie())
    assert re.search(r"30[23]|40[13]", str(e.value)), e.value


def test_login_cookie_flags_and_local_resources(served):
    srv, _ = served
    opener, jar = login(srv.url, "ann")
    cookie = next(c for c in jar if c.name == "user")
    assert cookie.has_nonstandard_attr("HttpOnly") or "httponly" in str(cookie._rest).lower()
    assert "strict" in str(cookie._rest).lower()
    status, _, page = request(opener, srv.url + "/")
    assert status == 200
    urls = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert urls, "the page loads its scripts"
    for u in urls:
        assert not re.match(r"^(https?:)?//", u) or u.startswith(srv.url), f"external resource {u}"


def test_logout_ends_the_login(served):
    srv, _ = served
    opener, jar = login(srv.url, "vic")
    assert request(opener, srv.url + "/")[0] == 200
    status, _, body = request(opener, srv.url + "/logout")
    assert status == 200 and "Signed out" in body
    assert not any(c.name == "user" and c.value for c in jar)
    assert request(opener, srv.url + "/")[0] == 302


def test_wrong_passwords_lock_the_user_out(served):
    srv, _ = served
    opener, _ = http_client()
    for _ in range(5):
        status, _, body = request(opener, srv.url + "/login", {"username": "eve", "password": "nope"})
        assert status == 401 and "Wrong user name or password" in body
    status, _, body = request(
        opener, srv.url + "/login", {"username": "eve", "password": USERS["eve"][1]}
    )
    assert status == 429 and "Too many failed sign-ins" in body, "locked even with the right password"
    login(srv.url, "ann")  # other users are not locked out


def test_no_endpoint_serves_files_by_user_path(served):
    srv, run = served
    opener, _ = login(srv.url, "root")
    for path in ("/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd",
                 "/components/../../../etc/passwd", f"/static/{run}/run.json",
                 "/login?next=//evil.example/"):
        status, headers, body = request(opener, srv.url + path)
        assert "root:x:0:0" not in body and '"manifest"' not in body, path
        if status in (301, 302):
            assert "evil.example" not in headers.get("Location", ""), path


def test_websocket_sessions_roles_and_live_updates(served):
    """Through the real websocket protocol: a viewer's forged relabel is refused by the server,
    an annotator's is acknowledged, and another session sees it without reloading."""
    srv, run = served

    async def scenario():
        vic = DashboardClient(srv.url, "vic", USERS["vic"][1])
        ann = DashboardClient(srv.url, "ann", USERS["ann"][1])
        bob = DashboardClient(srv.url, "bob", USERS["bob"][1])
        for c in (vic, ann, bob):
            await c.connect()
        try:
            await vic.select([0, 1])
            st = await vic.request("relabel", label="lung")
            assert st["ok"] is False and "viewer" in st["message"]
            await ann.select([0, 1])
            st = await ann.request("relabel", label="lung", comment="via websocket")
            assert st["ok"], st
            names = [c["name"] for c in bob.classes()]

            def bob_sees():
                codes = bob.codes()
                return len(codes) > 1 and names[codes[0]] == "lung" and names[codes[1]] == "lung"

            assert await bob.wait_for(bob_sees, timeout=20), "bob's map recoloured live"
        finally:
            for c in (vic, ann, bob):
                await c.close()

    asyncio.run(scenario())
    store = LabelStore.open(run / "labels.sqlite")
    try:
        ev = store.events()
        mine = ev[ev["comment"] == "via websocket"]
        assert list(mine["user"]) == ["ann"]
        assert "vic" not in set(ev["user"])
    finally:
        store.close()
    assert "refused relabel for vic" in srv.log()


def test_client_without_login_cannot_open_a_session(served):
    srv, _ = served

    async def go():
        c = DashboardClient(srv.url)
        await c.connect()

    with pytest.raises(ClientError, match="HTTP 302"):
        asyncio.run(go())
