"""What all sessions of one dashboard server share: the run, its data, the label store, users.

Every ``poll_ms`` the server asks the store for its version once (:meth:`DashboardContext.tick`)
and refreshes each session that is behind (:meth:`widgets.dashboard.app.Dashboard.poll`, inside
that session's document lock), so everyone's map recolours within about ``poll_ms`` of a
change, whoever made it and from whichever process.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from deeplesion_lab.availability import run_uses_present_only
from deeplesion_lab.errors import LabError
from deeplesion_lab.run import RunDir

from .auth import SESSION_LOGIN_KEY, SESSION_USER_KEY, DashboardAuth, User
from .finetune_job import FinetuneJob

if TYPE_CHECKING:
    from .app import Dashboard

__all__ = ["DashboardContext", "store_version"]

log = logging.getLogger("deeplesion_lab.dashboard")


def store_version(store) -> int | None:
    """The id of the store's newest event: it changes whenever anyone changes the labels."""
    return None if store is None else int(store.version())



class DashboardContext:
    """What all sessions of one server share: the run, its data, the label store, users.

    Parameters
    ----------
    run_dir : str or pathlib.Path
        The run (fixed for the server's life).
    auth : DashboardAuth, optional
        Login; None means single-user loopback mode with ``local_user``.
    local_user : User, optional
        The user of every session when there is no login.
    poll_ms : int, default 1000
        Period of the server's check of the store for changes (:meth:`tick`).
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        auth: DashboardAuth | None = None,
        local_user: User | None = None,
        poll_ms: int = 1000,
    ):
        from ..data import LabData
        from ..models import open_label_store

        if auth is None and local_user is None:
            raise LabError("the dashboard needs a users file or a local user")
        self.run = RunDir(run_dir)
        self.run.info()  # a clear error when it is not a run directory
        self.auth = auth
        self.local_user = local_user
        self.poll_ms = int(poll_ms)
        self.data = LabData.from_run(self.run)
        #: The run was embedded on the lesions whose images are present (``--present-only``).
        self.present_only = run_uses_present_only(self.run.info())
        self.store = open_label_store(self.run) if self.run.pseudo_labels.is_file() else None
        self.job = FinetuneJob(self.run)
        self.sessions: dict[str, str] = {}  # session id -> user name
        self.refused = 0  # writes refused by role, for the tests and the log
        self.lock = threading.RLock()
        self._cache: dict[tuple, str] = {}
        self._cache_version: object = None
        self._live: dict[str, tuple] = {}  # session id -> (document, Dashboard)
        self._online: tuple = ()
        self._ticks = 0
        self._poller = None

    # live sessions ---------------------------------------------------------------------------
    def register(self, sid: str, doc, dash: Dashboard) -> None:
        """A session opened: it will be kept up to date by :meth:`tick`."""
        with self.lock:
            self._live[sid] = (doc, dash)
            self.sessions[sid] = dash.user.name
        log.info("session %s opened by %s (%d open)", sid[:8], dash.user.name, len(self._live))

    def unregister(self, sid: str) -> None:
        with self.lock:
            doc_dash = self._live.pop(sid, None)
            self.sessions.pop(sid, None)
        if doc_dash is not None:
            dash = doc_dash[1]
            log.info("session %s of %s closed (%d open; %d refreshes)", sid[:8], dash.user.name,
                     len(self._live), dash.n_polls)

    def tick(self) -> int:
        """Schedule :meth:`Dashboard.poll` in every session that is behind the store.

        Runs every ``poll_ms`` on the server's IO loop: one version query for all sessions;
        each lagging session then refreshes inside its own document lock (as a next-tick
        callback of its document). Sessions are also refreshed when someone joins or leaves
        (the header's "online" count) and every ~5 s anyway. Returns how many were scheduled.
        """
        v = self.version()
        online = tuple(self.online())
        self._ticks += 1
        everyone = online != self._online or self._ticks % max(1, 5000 // self.poll_ms) == 0
        self._online = online
        n = 0
        with self.lock:
            live = list(self._live.values())
        now = time.monotonic()
        for doc, dash in live:
            if dash.scheduled and now - dash.scheduled < 10.0:
                continue  # its refresh is queued (re-queued if it never ran in 10 s)
            if everyone or dash.seen_version() != v:
                dash.scheduled = now
                doc.add_next_tick_callback(dash.scheduled_poll)
                n += 1
        return n

    def start_polling(self, io_loop) -> None:
        """Run :meth:`tick` every ``poll_ms`` on ``io_loop`` (the server's)."""
        from tornado.ioloop import PeriodicCallback

        def _tick():
            try:
                self.tick()
            except Exception:  # never stop polling; say what failed
                log.exception("polling the label store failed")

        self._poller = PeriodicCallback(_tick, self.poll_ms)
        self._poller.start()

    def session_store(self):
        """The label store as one session sees it: a store object of its own (so that a
        commit notifies only the writer's session at once; the others see it at their next
        :meth:`Dashboard.poll`, as they see other processes' changes) on the server's one
        connection (:meth:`LabelStore.share`)."""
        if self.store is None:
            return None
        return self.store.share()

    def cached(self, key: tuple, make: Callable[[], str]) -> str:
        """``make()`` once per store version and ``key``, shared by all sessions."""
        v = self.version()
        with self.lock:
            if v != self._cache_version:
                self._cache, self._cache_version = {}, v
            if key not in self._cache:
                self._cache[key] = make()
            return self._cache[key]

    def user_for(self, payload: dict | None) -> tuple[User | None, str | None]:
        """``(user, login id)`` of a session, from its signed session token's payload.

        The server puts the user name and the public id of the live login into the token
        (:func:`widgets.dashboard.server.make_server`; the login cookie itself never reaches
        the page); without a login, the local user.
        """
        if self.auth is None:
            return self.local_user, None
        payload = payload or {}
        name, login_id = payload.get(SESSION_USER_KEY), payload.get(SESSION_LOGIN_KEY)
        if not isinstance(name, str) or not self.auth.sessions.is_live(login_id):
            return None, None
        return self.auth.users.get(name), login_id

    def version(self) -> object:
        with self.lock:
            return store_version(self.store)

    def jobs(self) -> list:
        """The run's jobs (:mod:`deeplesion_lab.jobs`): detectors, fine-tuning, the pipeline."""
        from deeplesion_lab.jobs import read_jobs

        try:
            return read_jobs(self.run)
        except LabError as exc:  # an unreadable record: say so, keep the page
            log.warning("job records of %s: %s", self.run.path, exc)
            return []

    def online(self) -> list[str]:
        return sorted(set(self.sessions.values()))

    def metrics(self) -> dict:
        """``metrics.json`` of the run (empty when absent or unreadable)."""
        try:
            return self.run.load_metrics()
        except LabError as exc:  # a damaged file: say so, keep the page
            log.warning("%s", exc)
            return {}

    def close(self) -> None:
        if self._poller is not None:
            self._poller.stop()
        close = getattr(self.store, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):
                close()
