"""Start the dashboard: a Panel (bokeh) server on one port, loopback by default.

- On a loopback address (``127.0.0.1``, ``::1``, ``localhost``) and without a users file, the
  dashboard opens without login for the local user (role ``admin``).
- On any other address a users file is REQUIRED (:class:`LoginRequired` otherwise): every page
  and websocket needs the signed login cookie.
- A cookie secret is generated when none is given (logins then end when the server stops); a
  kept one comes from a file or the ``DLLAB_COOKIE_SECRET`` environment variable, never from
  the command line (where ``ps`` shows it), and is never printed.
- Every route needs the login when a users file is in force, and no route imports a module a
  request names (:mod:`widgets.dashboard.guard`).
- Bokeh session tokens are signed and carry the user's name and login id, never the login
  cookie (which stays HTTP-only).
- Panel and Bokeh resources are served by this server itself (``/static``); the pages load
  nothing from a CDN.

Run it with ``deeplesion-lab serve --run RUN_DIR`` or ``python -m widgets.dashboard``.
"""

from __future__ import annotations

import getpass
import hashlib
import ipaddress
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

from deeplesion_lab.errors import LabError

from .auth import (
    SESSION_LOGIN_KEY,
    SESSION_USER_KEY,
    DashboardAuth,
    LoginThrottle,
    User,
    UserFile,
    generate_cookie_secret,
)
from .guard import guard_routes
from .logs import quiet_websocket_errors

__all__ = [
    "LoginRequired",
    "DashboardServer",
    "is_loopback",
    "make_server",
    "serve",
    "free_port",
]


class LoginRequired(LabError, ValueError):
    """The dashboard would listen beyond loopback without a users file."""


def is_loopback(address: str) -> bool:
    """Whether ``address`` only accepts connections from this machine."""
    if address in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``address``."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


@dataclass
class DashboardServer:
    """A started (not yet running) dashboard server.

    Attributes
    ----------
    server : panel.io.server.Server
        The bokeh server; ``server.io_loop.start()`` runs it.
    url : str
        Where to open it.
    context : widgets.dashboard.app.DashboardContext
        Shared state of all sessions (data, label store, users).
    """

    server: object
    url: str
    context: object

    def run_forever(self) -> None:
        """Serve until interrupted (Ctrl-C)."""
        try:
            self.server.io_loop.start()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        try:
            self.server.stop()
        except Exception:  # stopping twice is fine
            pass
        self.context.close()


def make_server(
    run_dir: str | Path,
    *,
    port: int = 5006,
    address: str = "127.0.0.1",
    users: str | Path | None = None,
    cookie_secret: str | None = None,
    allow_websocket_origin: list[str] | None = None,
    poll_ms: int = 1000,
    max_failures: int = 5,
    lockout_s: float = 300.0,
    quiet: bool = False,
) -> DashboardServer:
    """Build the dashboard server (listening, but the IO loop not started).

    Parameters
    ----------
    run_dir : str or pathlib.Path
        The run directory whose labels are corrected (fixed for the server's life: no request
        can point it elsewhere).
    port : int, default 5006
        ``0`` picks a free port.
    address : str, default ``"127.0.0.1"``
        Listening address; anything but loopback requires ``users``.
    users : str or pathlib.Path, optional
        Users file (see :mod:`widgets.dashboard.auth`); with it, login is required.
    cookie_secret : str, optional
        Secret signing the login cookies; generated when absent.
    allow_websocket_origin : list of str, optional
        ``host:port`` values browsers may connect from (default: the listening address and, on
        loopback, ``localhost`` / ``127.0.0.1``).
    poll_ms : int, default 1000
        How often each session checks the label store for others' changes.
    max_failures, lockout_s
        Failed logins per user name before a lockout (per client address: 4 times as many),
        and the lockout's length in seconds.
    quiet : bool
        Do not print the URL.
    """
    from panel.io.server import get_server

    from .app import DashboardContext, make_app

    if users is None and not is_loopback(address):
        raise LoginRequired(
            f"refusing to listen on {address!r} without login: pass --users FILE "
            "(create it with `deeplesion-lab serve --users FILE --add-user NAME --role ROLE`) "
            "or listen on 127.0.0.1"
        )
    if port == 0:
        port = free_port(address if address not in ("", "0.0.0.0") else "127.0.0.1")
    if cookie_secret is not None and len(cookie_secret) < 16:
        raise LabError("--cookie-secret: use at least 16 characters (or leave it out)")
    secret = cookie_secret or generate_cookie_secret()
    auth = None
    local_user = None
    if users is not None:
        auth = DashboardAuth(
            UserFile(users), LoginThrottle(max_failures=max_failures, lockout_s=lockout_s)
        )
    else:
        local_user = User(getpass.getuser() or "local", "admin")
    context = DashboardContext(run_dir, auth=auth, local_user=local_user, poll_ms=poll_ms)
    host = "127.0.0.1" if address in ("", "0.0.0.0", "::") else address
    shown = f"[{host}]" if ":" in host else host
    origins = list(allow_websocket_origin or [])
    origins.append(f"{shown}:{port}")
    if is_loopback(address):
        origins += [f"localhost:{port}", f"127.0.0.1:{port}"]
    elif address in ("", "0.0.0.0", "::"):  # all interfaces: the names this machine goes by
        for name in {socket.gethostname(), socket.getfqdn()}:
            if name:
                origins.append(f"{name}:{port}")
    kwargs: dict = {
        "cookie_secret": secret,
        "websocket_origin": sorted(set(origins)),
        "title": "DeepLesion lab",
        "show": False,
        "start": False,
        "verbose": False,
        "location": False,
        # the session token is in the page, readable by its scripts: no cookie, no header
        # in it (the login cookie is HTTP-only); the user comes through process_request
        "include_cookies": [],
        "include_headers": [],
        # and it is signed, so a page cannot claim another user's name
        "sign_sessions": True,
        # a lesion's sub-volume travels in one message (512x512x60 int16 is 31 MiB)
        "websocket_max_message_size": 128 * 1024 * 1024,
        "secret_key": session_secret(secret),
    }
    if auth is not None:
        kwargs["auth_provider"] = auth.provider()
    server = get_server({"/": make_app(context)}, port=port, address=address, **kwargs)
    guard_routes(server._tornado, auth)
    _add_login_to_session_tokens(server, auth, secret)
    quiet_websocket_errors()
    context.start_polling(server.io_loop)
    url = f"http://{shown}:{port}/"
    if not quiet:
        mode = "login required" if auth else "no login (loopback, local user)"
        print(f"DeepLesion lab dashboard at {url} ({mode}); Ctrl-C stops it", flush=True)
        if not is_loopback(address):
            print(
                "browsers may connect from: " + ", ".join(sorted(set(origins)))
                + " (add others with --allow-websocket-origin HOST:PORT)",
                flush=True,
            )
    return DashboardServer(server=server, url=url, context=context)


def session_secret(cookie_secret: str) -> bytes:
    """The key that signs Bokeh session tokens: derived from, but not equal to, the cookie
    secret (a leaked token signature says nothing about the cookie key)."""
    salted = b"deeplesion-lab bokeh sessions\0" + cookie_secret.encode()
    return hashlib.sha256(salted).hexdigest().encode()


def _add_login_to_session_tokens(server, auth: DashboardAuth | None, secret: str) -> None:
    """Each app's ``process_request`` adds the user name and login id to new session tokens
    (whatever a request sends under those keys is dropped first)."""
    for app_context in server._tornado._applications.values():
        application = app_context.application
        base = application.process_request

        def process_request(request, base=base) -> dict:
            keys = (SESSION_USER_KEY, SESSION_LOGIN_KEY)
            data = {k: v for k, v in base(request).items() if k not in keys}
            if auth is not None:
                data.update(auth.session_payload(request, secret))
            return data

        application.process_request = process_request


def serve(run_dir: str | Path, **kwargs) -> None:
    """Build the server with :func:`make_server` and serve until interrupted."""
    root = logging.getLogger()
    if not root.handlers:  # errors of bokeh, tornado and Panel callbacks, and our own messages
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
        logging.getLogger("deeplesion_lab.dashboard").setLevel(logging.INFO)
    srv = make_server(run_dir, **kwargs)
    srv.server.start()
    srv.run_forever()
