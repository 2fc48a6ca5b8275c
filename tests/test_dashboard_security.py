"""The served dashboard probed as an outsider or a hostile user would, over real HTTP and
websocket connections to a server subprocess on loopback (issue: one anonymous request stopped
the dashboard). Each test here failed before its fix."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from dashboard_fixtures import (
    REPO,
    USERS,
    ServedDashboard,
    fresh_run,
    http_client,
    login,
    login_from,
    make_users,
    request,
)

from widgets.dashboard.app import Dashboard, DashboardContext
from widgets.dashboard.auth import (
    SESSION_LOGIN_KEY,
    SESSION_USER_KEY,
    DashboardAuth,
    LoginThrottle,
    User,
    UserFile,
    hash_password,
)
from widgets.dashboard.client import DashboardClient
from widgets.dashboard.guard import SECURITY_HEADERS, route_table
from widgets.dashboard.logs import OneLinePerMessage
from widgets.dashboard.server import make_server

pytestmark = pytest.mark.timeout(300)

# URLs that imported a module of the request's choice (the second made the server exit)
CRASH_URLS = (
    "/components/this/x/__css__/y",
    "/components/venv.__main__/x/__css__/y",
    "/components/antigravity/x/__css__/y",
)
ZEN = "Beautiful is better than ugly"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("secure")
    run = fresh_run(base, tmp_path_factory.getbasetemp())
    users = make_users(base / "users.json")
    srv = ServedDashboard(run, users, base / "server.log", poll_ms=300)
    yield srv, run, users
    srv.stop()


def _sample_url(pattern: str) -> str:
    """A concrete path matching a tornado route pattern."""
    path = pattern.rstrip("$")
    path = re.sub(r"\(\?![^)]*\)", "", path)  # negative look-aheads
    path = path.replace("(.*)", "x/y.js").replace("/?", "/")
    return path or "/"


def _alive(srv) -> None:
    assert srv.proc.poll() is None, f"the server stopped:\n{srv.log()[-3000:]}"


def test_every_route_refuses_anonymous_requests_and_nothing_is_imported(served, tmp_path):
    srv, run, users = served
    built = make_server(run, port=0, users=users, quiet=True)  # the same app, to list its routes
    try:
        table = route_table(built.server._tornado)
    finally:
        built.stop()
    patterns = [p for p, _ in table]
    assert any(p.startswith("/components") for p in patterns), patterns
    assert all(cls.__name__.startswith("Guarded") for _, cls in table), table
    opener, _ = http_client()
    public = {"/login", "/logout"}
    checked = 0
    for pattern in patterns:
        url = _sample_url(pattern)
        for method_data in (None, {"x": "1"}):  # GET, then POST
            status, headers, _ = request(opener, srv.url + url, method_data)
            if url in public:
                assert status in (200, 401, 405), (url, status)
                continue
            assert status in (302, 401, 403), (url, method_data, status)
            if status == 302:
                assert headers["Location"].startswith("/login"), (url, headers["Location"])
            checked += 1
    for url in CRASH_URLS:
        status, _, _ = request(opener, srv.url + url)
        assert status == 302, (url, status)
    assert checked >= 2 * (len(patterns) - 2)
    _alive(srv)
    # signed in, the component route still imports nothing a request names
    opener, _ = login(srv.url, "ann")
    for url in CRASH_URLS:
        status, _, _ = request(opener, srv.url + url)
        assert status == 404, (url, status)
    time.sleep(0.5)
    _alive(srv)
    assert ZEN not in srv.log(), "a request imported the module 'this'"


def test_a_signed_in_page_loads_every_resource_it_names(served):
    """The guard keeps what the page needs: each script and stylesheet it names answers 200."""
    srv, _, _ = served
    opener, _ = login(srv.url, "ann")
    status, _, page = request(opener, srv.url + "/")
    assert status == 200
    urls = sorted({"/" + u.lstrip("./") for u in re.findall(r'(?:src|href)="([^"]+)"', page)
                   if u and not u.startswith(("http:", "https:", "//", "#"))})
    assert any(u.startswith("/static/") for u in urls), urls
    for url in urls:
        assert request(opener, srv.url + url)[0] == 200, url
        assert request(http_client()[0], srv.url + url)[0] == 302, f"{url} served anonymously"
    _alive(srv)


def _page_token(opener, base_url: str) -> tuple[str, str]:
    status, _, page = request(opener, base_url + "/")
    assert status == 200
    return re.search(r'"token":"([^"]+)"', page).group(1), page


def test_session_token_carries_the_user_not_the_login_cookie_and_is_signed(served):
    from bokeh.util.token import generate_jwt_token, generate_session_id, get_token_payload

    srv, _, _ = served
    opener, jar = login(srv.url, "vic")
    cookie = next(c for c in jar if c.name == "user").value
    token, page = _page_token(opener, srv.url)
    assert cookie not in page, "the HttpOnly login cookie is readable by page scripts"
    payload = get_token_payload(token)
    assert cookie not in json.dumps(payload)
    assert payload["cookies"] == {} and payload["headers"] == {}, payload
    assert payload[SESSION_USER_KEY] == "vic" and payload[SESSION_LOGIN_KEY]
    assert "." in token, "session tokens are signed"

    async def open_ws(forged: str) -> str | None:
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        req = HTTPRequest(srv.url.replace("http", "ws") + "/ws", headers={"Cookie": f"user={cookie}"})
        ws = await websocket_connect(req, subprotocols=["bokeh", forged])
        try:
            return await asyncio.wait_for(ws.read_message(), 10)  # ACK, or None when closed
        finally:
            ws.close()

    extra = {**{k: v for k, v in payload.items() if k != "session_expiry" and k != "session_id"},
             SESSION_USER_KEY: "root"}
    for forged in (
        generate_jwt_token(generate_session_id(signed=False), signed=False, extra_payload=extra),
        generate_jwt_token(
            generate_session_id(secret_key=b"x" * 44, signed=True),
            secret_key=b"x" * 44, signed=True, extra_payload=extra,
        ),
    ):
        assert asyncio.run(open_ws(forged)) is None, "a forged token opened a session"
    assert asyncio.run(open_ws(token)) is not None, "the real token opens its session"
    _alive(srv)


def test_logout_ends_the_cookie_everywhere_and_the_open_page_can_no_longer_write(served):
    srv, run, _ = served

    async def scenario():
        ann = DashboardClient(srv.url, "bob", USERS["bob"][1])
        await ann.connect()
        try:
            await ann.select([0])
            assert (await ann.request("relabel", label="lung", comment="before logout"))["ok"]
            copy_opener, _ = http_client()
            copy_opener.addheaders = [("Cookie", ann.cookie)]  # a copy of the cookie
            assert request(copy_opener, srv.url + "/")[0] == 200
            status, _, body = request(copy_opener, srv.url + "/logout")
            assert status == 200 and "Signed out" in body
            assert request(copy_opener, srv.url + "/")[0] == 302, "the cookie still works"
            st = await ann.request("relabel", label="liver", comment="after logout")
            assert st["ok"] is False and "signed out" in st["message"], st
        finally:
            await ann.close()

    asyncio.run(scenario())
    from deeplesion_lab.labels import LabelStore

    with LabelStore.open(run / "labels.sqlite") as store:
        comments = set(store.events()["comment"].dropna())
    assert "before logout" in comments and "after logout" not in comments


def test_a_stranger_cannot_lock_a_user_out_of_their_own_machine(served):
    srv, _, _ = served
    for _ in range(6):
        assert login_from(srv.url, "127.0.0.2", "ann", "wrong-guess") in (401, 429)
    assert login_from(srv.url, "127.0.0.2", "ann", USERS["ann"][1]) == 429, "attacker locked"
    assert login_from(srv.url, "127.0.0.1", "ann", USERS["ann"][1]) == 302, "ann locked out"


def test_an_admin_lifts_a_lockout(tmp_path, tmp_path_factory):
    run = fresh_run(tmp_path, tmp_path_factory.getbasetemp())
    users = make_users(tmp_path / "users.json")
    auth = DashboardAuth(UserFile(users), LoginThrottle(max_failures=2))
    for ip in ("10.0.0.1", "10.0.0.2"):
        auth.failure("eve", ip)
        auth.failure("eve", ip)
    assert auth.locked_for("eve", "10.0.0.1") > 0 and auth.locked_users() == ["eve"]
    ctx = DashboardContext(run, auth=auth)
    try:
        with pytest.raises(Exception, match="not allowed to unlock users"):
            Dashboard(ctx, User("ann", "annotator")).unlock_user("eve")
        assert Dashboard(ctx, User("root", "admin")).unlock_user("eve") == 2
        assert auth.locked_for("eve", "10.0.0.1") == 0 and auth.locked_users() == []
    finally:
        ctx.close()


def test_the_password_hash_does_not_stall_other_requests(served):
    srv, _, users = served
    t0 = time.perf_counter()
    hash_password("x" * 10, iterations=100_000)
    per_iter = (time.perf_counter() - t0) / 100_000
    slow = int(2.0 / per_iter)  # a hash of about 2 s
    data = json.loads(users.read_text())
    data["users"]["slowpoke"] = {"role": "viewer", "password": hash_password("slow-password",
                                                                             iterations=slow)}
    users.write_text(json.dumps(data))
    done: dict[str, float] = {}

    def slow_login():
        opener, _ = http_client()
        request(opener, srv.url + "/login", {"username": "slowpoke", "password": "slow-password"})
        done["login"] = time.perf_counter()

    th = threading.Thread(target=slow_login)
    th.start()
    time.sleep(0.4)
    opener, _ = http_client()
    status, _, _ = request(opener, srv.url + "/login")
    done["page"] = time.perf_counter()
    th.join(60)
    assert status == 200
    assert done["page"] < done["login"] - 0.5, "the login page waited for another login's hash"


def test_every_answer_forbids_framing(served):
    srv, _, _ = served
    anonymous, _ = http_client()
    signed_in, _ = login(srv.url, "ann")
    for opener, url in ((anonymous, "/login"), (anonymous, "/"), (signed_in, "/"),
                        (signed_in, "/static/js/bokeh.min.js")):
        _, headers, _ = request(opener, srv.url + url)
        for name, value in SECURITY_HEADERS.items():
            got = headers.get(name) or ""
            assert value in [part.strip() for part in got.split(";")], (url, name, got)


def _serve_cmd(run: Path, users: Path, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "widgets.dashboard", "--run", str(run), "--users", str(users),
            "--port", str(port), "--address", "127.0.0.1", *extra]


def test_cookie_secret_comes_from_a_file_or_the_environment_never_the_command_line(
    tmp_path, tmp_path_factory
):
    run = fresh_run(tmp_path, tmp_path_factory.getbasetemp())
    users = make_users(tmp_path / "users.json")
    secret = "a-long-kept-secret-" + "k" * 30
    r = subprocess.run(_serve_cmd(run, users, 1, "--cookie-secret", secret), cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--cookie-secret-file" in r.stderr and secret not in r.stderr
    secret_file = tmp_path / "secret"
    secret_file.write_text(secret + "\n")
    logs = []
    srv = ServedDashboard(run, users, tmp_path / "a.log", extra=["--cookie-secret-file",
                                                                  str(secret_file)])
    try:
        opener, jar = login(srv.url, "ann")
        cookie = next(c for c in jar if c.name == "user").value
        cmdline = Path(f"/proc/{srv.proc.pid}/cmdline").read_bytes().decode(errors="replace")
        assert secret not in cmdline
    finally:
        srv.stop()
        logs.append(srv.log())
    # the same secret from the environment: the login survives the restart (sessions are kept)
    import os

    os.environ["DLLAB_COOKIE_SECRET"] = secret
    try:
        srv = ServedDashboard(run, users, tmp_path / "b.log")
    finally:
        del os.environ["DLLAB_COOKIE_SECRET"]
    try:
        again, _ = http_client()
        again.addheaders = [("Cookie", f"user={cookie}")]
        assert request(again, srv.url + "/")[0] == 200
    finally:
        srv.stop()
        logs.append(srv.log())
    assert all(secret not in text for text in logs), "the secret was printed"


def test_malformed_websocket_messages_log_one_short_line_each(served):
    srv, _, _ = served
    before = srv.log()

    async def send_garbage():
        for _ in range(3):
            c = DashboardClient(srv.url, "ann", USERS["ann"][1])
            await c.connect()
            header = json.dumps({"msgid": "x1", "msgtype": "PATCH-DOC", "num_buffers": 0})
            content = json.dumps({"events": [{"kind": "ModelChanged", "model": {"id": "nope"},
                                              "attr": "x" * 3000, "new": [1] * 500}]})
            for fragment in (header, "{}", content):
                await c._ws.write_message(fragment)
            await asyncio.sleep(0.5)
            await c.close()

    asyncio.run(send_garbage())
    time.sleep(0.5)
    _alive(srv)
    new = srv.log()[len(before):]
    assert "Traceback" not in new, new[-3000:]
    errors = [ln for ln in new.splitlines() if " ERROR " in ln or "error" in ln.lower()]
    assert errors, "the refused messages are not logged at all"
    assert all(len(ln) < 400 for ln in errors), max(errors, key=len)


def test_one_line_filter_limits_a_flood():
    import logging

    now = [0.0]
    f = OneLinePerMessage(burst=3, window_s=60, max_chars=50, clock=lambda: now[0])

    def rec(msg: str) -> logging.LogRecord:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys as _sys

            return logging.LogRecord("bokeh", logging.ERROR, __file__, 1, msg, (), _sys.exc_info())

    kept = [r for r in (rec("bad message\n" + "x" * 500) for _ in range(10)) if f.filter(r)]
    assert len(kept) == 3 and f.suppressed == 7
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in kept)
    assert len(kept[0].getMessage()) < 100
    now[0] = 61.0
    r = rec("later")
    assert f.filter(r) and "7 similar messages suppressed" in r.getMessage()


def test_user_names_follow_one_rule_in_the_store_and_the_dashboard(tmp_path):
    from deeplesion_lab.labels.checks import check_user
    from deeplesion_lab.labels.errors import LabelStoreError
    from widgets.dashboard.auth import AuthError, add_user

    for bad in ("al ice", "", "a" * 65, "<b>x</b>", "alice;rm"):
        with pytest.raises(LabelStoreError, match="invalid user name"):
            check_user(bad)
        with pytest.raises(AuthError, match="invalid user name"):
            add_user(tmp_path / "u.json", bad, "viewer", "long-password")
    assert check_user("alice.b-c_d@site") == "alice.b-c_d@site"
