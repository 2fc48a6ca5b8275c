"""Users, roles and login for the served dashboard.

The users file is JSON, written only by :func:`add_user` (atomically, mode 0600)::

    {"version": 1,
     "users": {"alice": {"role": "annotator",
                         "password": "pbkdf2_sha256$200000$<salt b64>$<hash b64>"}}}

Passwords are stored as salted PBKDF2-SHA256 hashes, never in clear. Roles:

============  ====================================================================
``viewer``    looks: map, slices, history, metrics
``annotator`` also corrects: relabel, undo/redo their own changes, add a class
``admin``     also takes snapshots of the labels, starts fine-tuning, lifts lockouts
============  ====================================================================

Logging in starts a server-side login session (:mod:`widgets.dashboard.sessions`) and sets a
signed, HTTP-only, ``SameSite=Strict`` cookie ``user`` holding that session's secret token
(tornado secure cookie, signed with the server's cookie secret); ``/logout`` ends the session,
so the cookie stops working everywhere. The role is read from the users file at each write, so
a changed role or a removed user takes effect without a restart. Repeated failed logins lock
out a user name from one address, an address, or (after many more, from anywhere) a user name,
for a while (:class:`LoginThrottle`); an admin can lift a lockout. The password hash runs off
the server's event loop.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from deeplesion_lab.atomic import write_json
from deeplesion_lab.errors import LabError
from deeplesion_lab.labels.checks import check_user

from .sessions import LoginSession, LoginSessions

__all__ = [
    "ROLES",
    "PERMISSIONS",
    "AuthError",
    "User",
    "UserFile",
    "LoginThrottle",
    "DashboardAuth",
    "hash_password",
    "verify_password",
    "add_user",
    "generate_cookie_secret",
    "safe_next_url",
    "USER_COOKIE",
    "SESSION_USER_KEY",
    "SESSION_LOGIN_KEY",
    "SIGNED_OUT",
]

#: Roles, least to most privileged.
ROLES: tuple[str, ...] = ("viewer", "annotator", "admin")

#: What each role may do (checked by the server on every action, not only in the UI).
PERMISSIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset({"view"}),
    "annotator": frozenset({"view", "relabel", "undo", "add_class"}),
    "admin": frozenset(
        {"view", "relabel", "undo", "add_class", "snapshot", "finetune", "unlock_users"}
    ),
}

#: Name of the signed cookie holding the secret token of the login session.
USER_COOKIE = "user"

#: Keys the server adds to each (signed) Bokeh session token: the user's name and the public
#: id of the login session, so that the page never needs the login cookie itself.
SESSION_USER_KEY = "dl_user"
SESSION_LOGIN_KEY = "dl_login"

#: The role of a session whose login ended (``/logout``): it may no longer do anything.
SIGNED_OUT = "signed-out"

log = logging.getLogger("deeplesion_lab.dashboard")

_HASH_ALGO = "pbkdf2_sha256"
_ITERATIONS = 200_000


class AuthError(LabError, ValueError):
    """A users file, user name, role or password is not acceptable."""


# passwords ---------------------------------------------------------------------------------------
def hash_password(password: str, *, salt: bytes | None = None, iterations: int = _ITERATIONS) -> str:
    """A salted PBKDF2-SHA256 hash: ``pbkdf2_sha256$ITER$SALT$HASH`` (base64 parts).

    Parameters
    ----------
    password : str
        The clear password (not stored anywhere).
    salt : bytes, optional
        16 random bytes by default.
    iterations : int, default 200000
        PBKDF2 rounds.
    """
    if not isinstance(password, str) or not password:
        raise AuthError("the password must be a non-empty string")
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, int(iterations))
    b64 = base64.b64encode
    return f"{_HASH_ALGO}${int(iterations)}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a hash made by :func:`hash_password` (constant-time)."""
    try:
        algo, iters, salt_b64, hash_b64 = str(encoded).split("$")
        if algo != _HASH_ALGO:
            return False
        salt = base64.b64decode(salt_b64, validate=True)
        expected = base64.b64decode(hash_b64, validate=True)
        iterations = int(iters)
    except (ValueError, TypeError):
        return False
    got = hashlib.pbkdf2_hmac("sha256", str(password).encode("utf-8"), salt, iterations)
    return hmac.compare_digest(got, expected)


# a fixed hash to compare against for unknown users, so timing does not tell names apart
_DUMMY_HASH = hash_password("not a password", salt=b"\0" * 16)


def generate_cookie_secret() -> str:
    """A fresh random secret for signing session cookies (64 url-safe characters)."""
    return secrets.token_urlsafe(48)


# users -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class User:
    """A logged-in collaborator.

    Parameters
    ----------
    name : str
        The user name recorded with every correction.
    role : str
        One of :data:`ROLES`.
    """

    name: str
    role: str

    def can(self, action: str) -> bool:
        """Whether the role allows ``action`` (see :data:`PERMISSIONS`)."""
        return action in PERMISSIONS.get(self.role, frozenset())


def check_user_name(name: str) -> str:
    """Return ``name`` if it is a valid user name (the label store's rule: 1-64 of letters,
    digits, ``._-@``; see :func:`deeplesion_lab.labels.checks.check_user`)."""
    try:
        return check_user(name)
    except LabError as exc:
        raise AuthError(str(exc).removeprefix("user: ")) from None


def _check_role(role: str, where: str) -> str:
    if role not in ROLES:
        raise AuthError(f"{where}: unknown role {role!r}; expected one of {', '.join(ROLES)}")
    return role


class UserFile:
    """The users file, re-read when it changes on disk.

    Parameters
    ----------
    path : str or pathlib.Path
        The JSON users file (see the module docstring).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, dict] = {}
        self.load()

    def load(self) -> dict[str, dict]:
        """Read (or re-read, when its mtime/size changed) and validate the file."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise AuthError(
                f"{self.path}: users file not found; create it with "
                f"`deeplesion-lab serve --users {self.path} --add-user NAME --role annotator`"
            ) from None
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp == self._stamp:
                return self._users
            users = _parse_users(self.path)
            self._users, self._stamp = users, stamp
            return users

    def get(self, name: str) -> User | None:
        """The user called ``name``, or None."""
        rec = self.load().get(name)
        return User(name, rec["role"]) if rec else None

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if ``password`` is right, else None (same work for unknown names)."""
        rec = self.load().get(name)
        if rec is None:
            verify_password(password, _DUMMY_HASH)
            return None
        if not verify_password(password, rec["password"]):
            return None
        return User(name, rec["role"])

    def names(self) -> list[str]:
        return sorted(self.load())


def _parse_users(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AuthError(f"{path}: not valid JSON ({exc})") from None
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict):
        raise AuthError(f"{path}: expected an object with a 'users' mapping")
    out: dict[str, dict] = {}
    for name, rec in users.items():
        where = f"{path}: user {name!r}"
        try:
            check_user_name(name)
        except AuthError as exc:
            raise AuthError(f"{path}: {exc}") from None
        if not isinstance(rec, dict):
            raise AuthError(f"{where}: expected an object with 'role' and 'password'")
        _check_role(rec.get("role"), f"{where}, field 'role'")
        pw = rec.get("password")
        if not isinstance(pw, str) or not pw.startswith(_HASH_ALGO + "$") or pw.count("$") != 3:
            raise AuthError(
                f"{where}, field 'password': not a {_HASH_ALGO} hash (clear passwords are not "
                "accepted; use --add-user)"
            )
        out[name] = {"role": rec["role"], "password": pw}
    return out


def add_user(path: str | Path, name: str, role: str, password: str) -> User:
    """Add or update a user in the users file (created if absent), atomically.

    Parameters
    ----------
    path : str or pathlib.Path
        The users file.
    name : str
        User name (letters, digits, ``._-@``).
    role : {'viewer', 'annotator', 'admin'}
    password : str
        Clear password; at least 8 characters. Only its hash is written.
    """
    path = Path(path)
    check_user_name(name)
    _check_role(role, f"user {name!r}")
    if not isinstance(password, str) or len(password) < 8:
        raise AuthError(f"user {name!r}: the password must have at least 8 characters")
    users = _parse_users(path) if path.exists() else {}
    users[name] = {"role": role, "password": hash_password(password)}
    write_json({"version": 1, "users": users}, path)  # mkstemp: the file is 0600
    return User(name, role)


# throttling --------------------------------------------------------------------------------------
class LoginThrottle:
    """Lock out a user name or a client address after repeated failed logins.

    Parameters
    ----------
    max_failures : int, default 5
        Failures within ``window_s`` that trigger a lockout.
    window_s : float, default 300
        Sliding window over which failures are counted.
    lockout_s : float, default 300
        How long a locked key is refused (even with the right password).
    clock : callable, optional
        Time source (``time.monotonic``); tests pass a fake clock.
    """

    def __init__(
        self,
        max_failures: int = 5,
        window_s: float = 300.0,
        lockout_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_failures = max_failures
        self.window_s = window_s
        self.lockout_s = lockout_s
        self.clock = clock
        self._fails: dict[str, list[float]] = {}
        self._locked_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def locked_for(self, *keys: str) -> float:
        """Seconds left on the longest lockout among ``keys`` (0 when none is locked)."""
        now = self.clock()
        with self._lock:
            left = [self._locked_until.get(k, 0.0) - now for k in keys]
        return max([0.0, *left])

    def failure(self, *keys: str) -> None:
        """Record one failed attempt for each key (e.g. ``user:alice`` and ``ip:1.2.3.4``)."""
        now = self.clock()
        with self._lock:
            for k in keys:
                recent = [t for t in self._fails.get(k, []) if now - t < self.window_s]
                recent.append(now)
                self._fails[k] = recent
                if len(recent) >= self.max_failures:
                    self._locked_until[k] = now + self.lockout_s
                    self._fails[k] = []
            if len(self._fails) > 10_000:  # forget stale keys: bounded memory under a flood
                self._fails = {k: v for k, v in self._fails.items() if v and now - v[-1] < self.window_s}
                self._locked_until = {k: t for k, t in self._locked_until.items() if t > now}

    def success(self, *keys: str) -> None:
        """Forget the failures of ``keys`` after a successful login."""
        with self._lock:
            for k in keys:
                self._fails.pop(k, None)

    def locked_keys(self) -> list[str]:
        """The keys locked out now."""
        now = self.clock()
        with self._lock:
            return sorted(k for k, t in self._locked_until.items() if t > now)

    def unlock(self, which: Callable[[str], bool]) -> int:
        """Lift the lockouts (and forget the failures) of the keys ``which`` accepts."""
        now = self.clock()
        with self._lock:
            lifted = [k for k, t in self._locked_until.items() if t > now and which(k)]
            for k in lifted:
                del self._locked_until[k]
            for k in [k for k in self._fails if which(k)]:
                del self._fails[k]
        return len(lifted)


# login pages -------------------------------------------------------------------------------------
def safe_next_url(url: str | None, default: str = "/") -> str:
    """``url`` if it is a local absolute path (``/...``, not ``//host``), else ``default``."""
    if not url or not isinstance(url, str):
        return default
    parts = urlsplit(url)
    if parts.scheme or parts.netloc or not url.startswith("/") or url.startswith("//") or "\\" in url:
        return default
    return url


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ margin: 0; font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       background: linear-gradient(135deg, #0f2027, #203a43 60%, #2c5364); min-height: 100vh;
       display: flex; align-items: center; justify-content: center; color: #1d2733; }}
.card {{ background: #fff; border-radius: 12px; padding: 32px 36px; width: 340px;
         box-shadow: 0 12px 40px rgba(0,0,0,.35); }}
h1 {{ font-size: 20px; margin: 0 0 4px 0; }}
.sub {{ color: #5b6b7b; font-size: 13px; margin-bottom: 20px; }}
label {{ display: block; font-size: 13px; font-weight: 600; margin: 12px 0 4px; }}
input {{ width: 100%; box-sizing: border-box; padding: 9px 10px; border: 1px solid #c6d0da;
         border-radius: 6px; font-size: 14px; }}
button {{ margin-top: 20px; width: 100%; padding: 10px; border: 0; border-radius: 6px;
          background: #0072B2; color: #fff; font-size: 15px; font-weight: 600; cursor: pointer; }}
.error {{ background: #fde8e8; color: #9b1c1c; border-radius: 6px; padding: 8px 10px;
          font-size: 13px; margin-top: 8px; }}
a {{ color: #0072B2; }}
</style></head>
<body><div class="card">{body}</div></body></html>
"""


def render_login_page(action: str, error: str = "", next_url: str = "/") -> str:
    """The login page (no external resources; every dynamic value escaped)."""
    err = f'<div class="error" id="login-error">{html.escape(error)}</div>' if error else ""
    body = (
        "<h1>DeepLesion lab</h1><div class='sub'>Sign in to the annotation dashboard</div>"
        f"{err}"
        f'<form method="post" action="{html.escape(action, quote=True)}">'
        '<label for="username">User name</label>'
        '<input id="username" name="username" autocomplete="username" autofocus required>'
        '<label for="password">Password</label>'
        '<input id="password" name="password" type="password" autocomplete="current-password" '
        "required>"
        f'<input type="hidden" name="next" value="{html.escape(next_url, quote=True)}">'
        '<button type="submit" id="login-submit">Sign in</button></form>'
    )
    return _PAGE.format(title="Sign in - DeepLesion lab", body=body)


def render_logout_page(login_url: str) -> str:
    body = (
        "<h1>Signed out</h1><div class='sub'>You have left the annotation dashboard.</div>"
        f'<a href="{html.escape(login_url, quote=True)}">Sign in again</a>'
    )
    return _PAGE.format(title="Signed out - DeepLesion lab", body=body)


# the bokeh/Panel auth provider -------------------------------------------------------------------
def _make_handlers(auth: DashboardAuth):
    from tornado.web import RequestHandler

    class LoginHandler(RequestHandler):
        """``GET /login``: the form; ``POST /login``: check, throttle, set the cookie."""

        def check_xsrf_cookie(self) -> None:  # the form is same-site only (SameSite=Strict)
            return None

        def _page(self, error: str = "", status: int = 200) -> None:
            self.set_status(status)
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.set_header("Cache-Control", "no-store")
            self.set_header("X-Frame-Options", "DENY")
            self.set_header(
                "Content-Security-Policy",
                "default-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'",
            )
            nxt = safe_next_url(self.get_argument("next", "/"))
            self.finish(render_login_page(auth.login_url, error, nxt))

        def get(self) -> None:
            self._page()

        async def post(self) -> None:
            from tornado.ioloop import IOLoop

            name = self.get_argument("username", "")[:200]
            password = self.get_argument("password", "")[:1000]
            ip = self.request.remote_ip or "?"
            left = auth.locked_for(name, ip)
            if left > 0:
                self._page(
                    f"Too many failed sign-ins; try again in {int(left) + 1} s.", status=429
                )
                return
            # the hash takes ~0.1 s: off the event loop, so other sessions do not stall
            user = await IOLoop.current().run_in_executor(
                None, auth.users.authenticate, name, password
            )
            if user is None:
                auth.failure(name, ip)
                log.warning("failed sign-in for %r from %s", name[:64], ip)
                self._page("Wrong user name or password.", status=401)
                return
            auth.success(name, ip)
            token, _ = auth.sessions.create(user.name)
            self.set_secure_cookie(
                USER_COOKIE,
                token,
                expires_days=auth.expiry_days,
                httponly=True,
                samesite="Strict",
                path="/",
            )
            self.redirect(safe_next_url(self.get_argument("next", "/")))

    class LogoutHandler(RequestHandler):
        def get(self) -> None:
            raw = self.get_secure_cookie(USER_COOKIE, max_age_days=auth.expiry_days)
            if raw:  # ends the login on the server: a copy of the cookie stops working too
                auth.sessions.end(raw.decode("utf-8", "replace"))
            self.clear_cookie(USER_COOKIE, path="/")
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.set_header("Cache-Control", "no-store")
            self.finish(render_logout_page(auth.login_url))

    return LoginHandler, LogoutHandler


class DashboardAuth:
    """Login with a users file: the hooks bokeh's server needs (an ``AuthProvider``).

    Parameters
    ----------
    users : UserFile
        Who may log in, with which role.
    throttle : LoginThrottle, optional
        Lockout of one user name from one client address (5 failures in 5 minutes lock that
        pair for 5 minutes by default): a stranger's wrong passwords do not lock the real user
        out from their own machine.
    ip_throttle : LoginThrottle, optional
        Lockout of a client address, for guessing across many names (20 failures by default).
    user_throttle : LoginThrottle, optional
        Lockout of a user name from everywhere, for guessing from many addresses (100 failures
        by default); an admin can lift it (:meth:`unlock`, the dashboard's admin tab).
    expiry_days : float, default 1
        Lifetime of a login.
    sessions : LoginSessions, optional
        Where live logins are kept (default: ``<users file>.sessions``, beside the users file).
    """

    login_url = "/login"
    logout_url = "/logout"

    def __init__(
        self,
        users: UserFile,
        throttle: LoginThrottle | None = None,
        ip_throttle: LoginThrottle | None = None,
        user_throttle: LoginThrottle | None = None,
        expiry_days: float = 1.0,
        sessions: LoginSessions | None = None,
    ):
        self.users = users
        self.throttle = throttle or LoginThrottle()
        n = self.throttle.max_failures
        self.ip_throttle = ip_throttle or LoginThrottle(
            max_failures=4 * n, lockout_s=self.throttle.lockout_s
        )
        self.user_throttle = user_throttle or LoginThrottle(
            max_failures=20 * n, lockout_s=self.throttle.lockout_s
        )
        self.expiry_days = expiry_days
        self.sessions = sessions or LoginSessions(
            users.path.with_name(users.path.name + ".sessions"), lifetime_s=expiry_days * 86400
        )

    # lockouts ----------------------------------------------------------------------------------
    @staticmethod
    def _keys(name: str, ip: str) -> tuple[str, str, str]:
        return f"pair:{name}@{ip}", f"ip:{ip}", f"user:{name}"

    def locked_for(self, name: str, ip: str) -> float:
        """Seconds before ``name`` may try again from ``ip`` (0: now)."""
        pair, ikey, ukey = self._keys(name, ip)
        return max(
            self.throttle.locked_for(pair),
            self.ip_throttle.locked_for(ikey),
            self.user_throttle.locked_for(ukey),
        )

    def failure(self, name: str, ip: str) -> None:
        pair, ikey, ukey = self._keys(name, ip)
        self.throttle.failure(pair)
        self.ip_throttle.failure(ikey)
        self.user_throttle.failure(ukey)

    def success(self, name: str, ip: str) -> None:
        pair, ikey, _ = self._keys(name, ip)
        self.throttle.success(pair)
        self.ip_throttle.success(ikey)

    def unlock(self, name: str) -> int:
        """Lift every lockout of user ``name`` (from any address); how many were lifted."""
        return self.throttle.unlock(lambda k: k.startswith(f"pair:{name}@")) + (
            self.user_throttle.unlock(lambda k: k == f"user:{name}")
        )

    def locked_users(self) -> list[str]:
        """User names locked out now (from everywhere or from some address)."""
        names = {k.split(":", 1)[1] for k in self.user_throttle.locked_keys()}
        names |= {k.split(":", 1)[1].rsplit("@", 1)[0] for k in self.throttle.locked_keys()}
        return sorted(names)

    def provider(self):
        """A ``bokeh.server.auth_provider.AuthProvider`` wired to this object."""
        from bokeh.server.auth_provider import AuthProvider

        auth = self
        login_handler, logout_handler = _make_handlers(self)

        class _Provider(AuthProvider):
            @property
            def get_user(self):
                return auth.user_from_handler

            @property
            def login_url(self):
                # tornado's @authenticated appends ?next=<requested page>
                return auth.login_url

            @property
            def login_handler(self):
                return login_handler

            @property
            def logout_url(self):
                return auth.logout_url

            @property
            def logout_handler(self):
                return logout_handler

        return _Provider()

    def session_from_cookie(self, signed: str | bytes | None, secret: str) -> LoginSession | None:
        """The live login of a signed ``user`` cookie value, if its user still exists."""
        from tornado.web import decode_signed_value

        if not signed:
            return None
        token = decode_signed_value(secret, USER_COOKIE, signed, max_age_days=self.expiry_days)
        if token is None:
            return None
        session = self.sessions.lookup(token.decode("utf-8", "replace"))
        if session is None or self.users.get(session.user) is None:
            return None
        return session

    def session_payload(self, request, secret: str) -> dict:
        """What the server adds to a page's session token: user name and login id (or {})."""
        morsel = request.cookies.get(USER_COOKIE) if request.cookies else None
        session = self.session_from_cookie(morsel.value if morsel else None, secret)
        if session is None:
            return {}
        return {SESSION_USER_KEY: session.user, SESSION_LOGIN_KEY: session.public_id}

    def user_from_handler(self, handler) -> str | None:
        """The user name of a request's login (signed cookie of a live session), or None."""
        signed = handler.get_cookie(USER_COOKIE)
        session = self.session_from_cookie(signed, handler.application.settings["cookie_secret"])
        return session.user if session is not None else None
