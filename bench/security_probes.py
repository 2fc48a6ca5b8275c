"""Probe a served dashboard as an outsider and a hostile user would; write the answers.

Starts ``python -m widgets.dashboard`` (users file, login required) on a free loopback port over
a small demo run, sends each probe as a real HTTP / websocket request to loopback only, and
writes a table of probe -> answer to ``bench/results/security_probes.md`` (summarised in
``SECURITY.md``). Every probe also has a test in ``tests/test_dashboard_security.py`` or
``tests/test_write_failures.py``; this script records what the server answers today.

    .venv/bin/python bench/security_probes.py
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from dashboard_fixtures import (  # noqa: E402
    USERS,
    ServedDashboard,
    fresh_run,
    http_client,
    login,
    login_from,
    make_users,
    request,
)

OUT = HERE / "results" / "security_probes.md"


def probes(srv) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    anon, _ = http_client()

    def alive() -> str:
        return "server up" if srv.proc.poll() is None else "SERVER STOPPED"

    for url in ("/components/this/x/__css__/y", "/components/venv.__main__/x/__css__/y",
                "/static/js/bokeh.min.js", "/favicon.ico", "/metadata", "/autoload.js", "/ws",
                "/static/extensions/panel/panel.min.js", "/"):
        status, headers, _ = request(anon, srv.url + url)
        loc = headers.get("Location", "")
        rows.append((f"anonymous GET `{url}`",
                     f"{status} {'-> ' + loc.split('?')[0] if loc else ''}; {alive()}"))
    zen = "Beautiful is better" in srv.log()
    rows.append(("the Zen of Python in the server log (module `this` imported)",
                 "yes" if zen else "no"))
    ann, jar = login(srv.url, "ann")
    for url in ("/components/this/x/__css__/y", "/components/venv.__main__/x/__css__/y"):
        status, _, _ = request(ann, srv.url + url)
        rows.append((f"signed-in GET `{url}`", f"{status}; {alive()}"))
    cookie = next(c for c in jar if c.name == "user").value
    _, headers, page = request(ann, srv.url + "/")
    rows.append(("login cookie inside the page (session token)",
                 "yes" if cookie in page else "no"))
    token = re.search(r'"token":"([^"]+)"', page).group(1)
    rows.append(("session token signed", "yes" if "." in token else "no"))
    rows.append(("`X-Frame-Options` / CSP on the app page",
                 f"{headers.get('X-Frame-Options')} / {headers.get('Content-Security-Policy')}"))
    copy, _ = http_client()
    copy.addheaders = [("Cookie", f"user={cookie}")]
    request(ann, srv.url + "/logout")
    rows.append(("a copy of the cookie after `/logout`", f"GET / -> {request(copy, srv.url + '/')[0]}"))
    for _ in range(6):
        login_from(srv.url, "127.0.0.2", "bob", "wrong")
    rows.append(("6 wrong passwords for bob from 127.0.0.2, then bob from 127.0.0.2",
                 str(login_from(srv.url, "127.0.0.2", "bob", USERS["bob"][1]))))
    rows.append(("... and bob from 127.0.0.1", str(login_from(srv.url, "127.0.0.1", "bob",
                                                         USERS["bob"][1]))))

    async def garbage() -> None:
        from widgets.dashboard.client import DashboardClient

        c = DashboardClient(srv.url, "root", USERS["root"][1])
        await c.connect()
        for frag in ('{"msgid":"1","msgtype":"PATCH-DOC","num_buffers":0}', "{}", "x" * 5000):
            await c._ws.write_message(frag)
        await asyncio.sleep(0.5)
        await c.close()

    before = len(srv.log())
    asyncio.run(garbage())
    time.sleep(0.3)
    new = srv.log()[before:]
    rows.append(("one malformed websocket message: bytes logged",
                 f"{len(new.encode())} bytes, traceback: {'yes' if 'Traceback' in new else 'no'}"))
    rows.append(("after all probes", alive()))
    return rows


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        run = fresh_run(base, base / "cache")
        users = make_users(base / "users.json")
        srv = ServedDashboard(run, users, base / "server.log", poll_ms=300)
        try:
            rows = probes(srv)
        finally:
            srv.stop()
    lines = [
        "# Security probes of the served dashboard",
        "",
        f"`.venv/bin/python bench/security_probes.py`, {dt.date.today()}; server "
        "`python -m widgets.dashboard` with a users file on 127.0.0.1, every request to "
        "loopback.",
        "",
        "| probe | answer |",
        "|---|---|",
        *[f"| {p} | {a} |" for p, a in rows],
        "",
    ]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
