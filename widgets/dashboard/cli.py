"""``deeplesion-lab serve``: the collaborators' dashboard (and its users file).

Registered through the ``deeplesion_lab.commands`` entry-point group
(``serve = "widgets.dashboard.cli:register"``); nothing heavy is imported until it runs.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from deeplesion_lab.errors import LabError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``serve`` (shared with ``python -m widgets.dashboard.server``)."""
    p.add_argument("--run", type=Path, help="run directory whose labels are corrected")
    p.add_argument("--port", type=int, default=5006, help="port (default 5006; 0 = any free port)")
    p.add_argument(
        "--address",
        default="127.0.0.1",
        help="listening address (default 127.0.0.1); anything but loopback requires --users",
    )
    p.add_argument(
        "--users",
        type=Path,
        default=None,
        help="users file (JSON, hashed passwords); with it every page needs a login",
    )
    p.add_argument(
        "--cookie-secret-file",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"file holding the secret that signs login cookies (or set {SECRET_ENV}); default: "
        "a random one, so logins end at restart. Never printed",
    )
    # a secret on the command line shows in `ps`: refused with a pointer to the safe ways
    p.add_argument("--cookie-secret", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--allow-websocket-origin",
        action="append",
        default=None,
        metavar="HOST:PORT",
        help="extra host:port browsers reach the server by (e.g. behind a proxy); repeatable",
    )
    p.add_argument(
        "--poll-ms", type=int, default=1000, help="how often sessions look for others' changes"
    )
    g = p.add_argument_group("users file")
    g.add_argument("--add-user", metavar="NAME", help="add or update a user in --users, then exit")
    g.add_argument(
        "--role", choices=("viewer", "annotator", "admin"), default="annotator",
        help="role of --add-user (default annotator)",
    )
    g.add_argument(
        "--password",
        default=None,
        help="password of --add-user (default: read from stdin; prefer that, it stays out of "
        "the shell history)",
    )


#: Environment variable that may hold the cookie secret.
SECRET_ENV = "DLLAB_COOKIE_SECRET"


def cookie_secret(args: argparse.Namespace) -> str | None:
    """The cookie secret from ``--cookie-secret-file`` or :data:`SECRET_ENV` (None: random)."""
    if args.cookie_secret is not None:
        raise LabError(
            "--cookie-secret: a secret on the command line is visible to every user of this "
            f"machine (ps); put it in a file readable only by you and pass --cookie-secret-file "
            f"FILE, or set {SECRET_ENV}"
        )
    if args.cookie_secret_file is not None:
        path = Path(args.cookie_secret_file)
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise LabError(f"{path}: cannot read the cookie secret ({exc.strerror})") from None
        if not secret:
            raise LabError(f"{path}: the cookie secret file is empty")
        return secret
    return os.environ.get(SECRET_ENV) or None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the Panel dashboard for collaborators (map, viewer, corrections)",
        description=(
            "Serve the correction dashboard of a run: embedding map, slice viewer, correction "
            "panel, history and metrics, for several collaborators at once. Loopback without "
            "login by default; on any other address a users file (--users) is required. "
            "Create users with --add-user NAME --role viewer|annotator|admin --users FILE."
        ),
    )
    add_arguments(p)
    p.set_defaults(func=run)


def _read_password(args: argparse.Namespace) -> str:
    if args.password is not None:
        return args.password
    if sys.stdin.isatty():
        pw = getpass.getpass(f"password for {args.add_user}: ")
        if pw != getpass.getpass("again: "):
            raise LabError("the two passwords differ")
        return pw
    return sys.stdin.readline().rstrip("\r\n")


def run(args: argparse.Namespace) -> int:
    if args.add_user:
        from .auth import add_user

        if args.users is None:
            raise LabError("--add-user needs --users FILE (the file to add the user to)")
        user = add_user(args.users, args.add_user, args.role, _read_password(args))
        print(f"{args.users}: user {user.name!r} is now {user.role}")
        return 0
    if args.run is None:
        raise LabError("--run RUN_DIR is required (the run whose labels are corrected)")
    from .server import serve

    secret = cookie_secret(args)
    serve(
        args.run,
        port=args.port,
        address=args.address,
        users=args.users,
        cookie_secret=secret,
        allow_websocket_origin=args.allow_websocket_origin,
        poll_ms=args.poll_ms,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m widgets.dashboard``: the same options as ``deeplesion-lab serve``."""
    parser = argparse.ArgumentParser(prog="python -m widgets.dashboard")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except LabError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 2
