"""Server-side login sessions: a login cookie is good only while its session lives.

A login creates a session: a random secret (the value of the signed ``user`` cookie) whose
SHA-256 is stored, never the secret itself, with the user, a public id and an expiry.
``/logout`` ends it at once, so a copied cookie stops working, and the open pages of that
login can no longer write (the dashboard checks the public id on each write). The sessions
live in a small SQLite file beside the users file (mode 0600), so logins survive a restart
when the cookie secret is kept (``--cookie-secret-file``); with a random secret they end at
restart anyway.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deeplesion_lab.errors import LabError

__all__ = ["LoginSessions", "LoginSession"]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


@dataclass(frozen=True)
class LoginSession:
    """A live login: its user and the public id pages may carry (not a credential)."""

    user: str
    public_id: str


class LoginSessions:
    """Live logins, in SQLite (``path``) or in memory (``path=None``).

    Parameters
    ----------
    path : str or pathlib.Path, optional
        The sessions database; None keeps them in memory (they end with the process).
    lifetime_s : float, default 86400
        How long a login lives.
    clock : callable, optional
        Time source (``time.time``); tests pass a fake clock.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        lifetime_s: float = 86400.0,
        clock: Callable[[], float] = time.time,
    ):
        self.path = Path(path) if path is not None else None
        self.lifetime_s = float(lifetime_s)
        self.clock = clock
        self._lock = threading.Lock()
        target = ":memory:"
        if self.path is not None:
            if not self.path.parent.is_dir():
                raise LabError(f"{self.path}: folder {self.path.parent} does not exist")
            if not self.path.exists():  # private from the start
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            target = str(self.path)
        try:
            self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout = 5000")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS login_sessions (digest TEXT PRIMARY KEY, "
                "public_id TEXT UNIQUE NOT NULL, user TEXT NOT NULL, created REAL NOT NULL, "
                "expires REAL NOT NULL)"
            )
        except sqlite3.Error as exc:
            raise LabError(f"{target}: cannot open the login sessions database ({exc})") from exc

    def create(self, user: str) -> tuple[str, LoginSession]:
        """Start a login of ``user``: ``(secret token for the cookie, session)``."""
        token = secrets.token_urlsafe(32)
        public_id = secrets.token_hex(8)
        now = self.clock()
        with self._lock:
            self._db.execute("DELETE FROM login_sessions WHERE expires <= ?", (now,))
            self._db.execute(
                "INSERT INTO login_sessions (digest, public_id, user, created, expires) "
                "VALUES (?, ?, ?, ?, ?)",
                (_digest(token), public_id, user, now, now + self.lifetime_s),
            )
        return token, LoginSession(user, public_id)

    def lookup(self, token: str | None) -> LoginSession | None:
        """The live session of a cookie's token, or None (unknown, ended or expired)."""
        if not token:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT user, public_id FROM login_sessions WHERE digest = ? AND expires > ?",
                (_digest(token), self.clock()),
            ).fetchone()
        return LoginSession(*row) if row else None

    def is_live(self, public_id: str | None) -> bool:
        """Whether the session with ``public_id`` has not ended."""
        if not public_id:
            return False
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM login_sessions WHERE public_id = ? AND expires > ?",
                (public_id, self.clock()),
            ).fetchone()
        return row is not None

    def end(self, token: str | None) -> bool:
        """End the session of ``token`` (logout); whether there was one."""
        if not token:
            return False
        with self._lock:
            cur = self._db.execute("DELETE FROM login_sessions WHERE digest = ?", (_digest(token),))
        return cur.rowcount > 0

    def end_user(self, user: str) -> int:
        """End every session of ``user`` (e.g. after a password change); how many."""
        with self._lock:
            cur = self._db.execute("DELETE FROM login_sessions WHERE user = ?", (user,))
        return int(cur.rowcount)

    def close(self) -> None:
        with self._lock:
            self._db.close()
