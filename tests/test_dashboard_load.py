"""Load on loopback: 10 sessions relabelling at once through the served dashboard.

Each session is a :class:`widgets.dashboard.client.DashboardClient`: it signs in over HTTP,
opens its page's Bokeh session over the websocket with its login cookie and writes the same
model properties the map and correction panel write in a browser (what is simulated: no
JavaScript and no drawing). The short run (10 s) is in the default suite; the minute-long one
is marked ``slow``. The benchmark (``bench/bench_dashboard_load.py``) records the figures.
"""

from __future__ import annotations

import asyncio

import pytest
from dashboard_fixtures import LOAD_USERS, ServedDashboard, check_load, fresh_run, make_users

from widgets.dashboard.client import propagation, run_load

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("load")
    run = fresh_run(base, tmp_path_factory.getbasetemp())
    users = make_users(base / "users.json", load=True)
    srv = ServedDashboard(run, users, base / "server.log", poll_ms=500)
    yield srv, run
    srv.stop()


def _run(srv, seconds: float, seed: int):
    return asyncio.run(run_load(srv.url, LOAD_USERS, seconds, think_s=0.3, seed=seed,
                                settle_s=30))  # ends as soon as all agree; slack for a loaded CI


def test_ten_sessions_for_ten_seconds(served):
    srv, run = served
    result = _run(srv, 10, seed=1)
    counts = check_load(result, run)  # reads the store from this process meanwhile
    assert counts["relabels_acked"] >= 10, counts
    assert "10 open" in srv.log(), "the server held 10 sessions at once"
    # after another process read the store, changes still reach everyone, nothing broke
    delays = asyncio.run(propagation(srv.url, LOAD_USERS[0], LOAD_USERS[1], n=3))
    assert max(delays) < 15, delays
    log = srv.log()
    assert "ERROR" not in log and "malformed" not in log, log[-3000:]


@pytest.mark.slow
def test_ten_sessions_for_a_minute(served):
    srv, run = served
    result = _run(srv, 60, seed=2)
    counts = check_load(result, run)
    assert counts["relabels_acked"] >= 100, counts
