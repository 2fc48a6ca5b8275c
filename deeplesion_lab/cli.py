"""``deeplesion-lab``: the command line. Each subcommand lives in ``deeplesion_lab.commands``.

A module there defines ``register(subparsers)``, which adds its parser and sets ``func`` (a
callable taking the parsed arguments and returning an exit code). Modules are found
automatically, so adding a command touches no shared file.

Other installed packages add commands through the entry-point group ``deeplesion_lab.commands``
(each entry point names a ``register`` function); that is how the dashboard's ``serve`` command,
which lives in the ``widgets`` layer, joins the CLI without the core importing it.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from . import __version__, commands
from .errors import LabError, describe_os_error


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="deeplesion-lab",
        description=(
            "Mine, explore and correct DeepLesion-style lesion annotations. "
            "Run `deeplesion-lab COMMAND --help` for each command."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    for ep in sorted(entry_points(group="deeplesion_lab.commands"), key=lambda e: e.name):
        if ep.name in sub.choices:
            continue
        try:
            register = ep.load()
        except ImportError as exc:  # an optional layer that is not installed
            sub.add_parser(ep.name, help=f"(unavailable: {exc})")
            continue
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deeplesion-lab`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except LabError as exc:
        print(f"deeplesion-lab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a missing file, a full or read-only disk, a file-size limit
        print(f"deeplesion-lab {args.command}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"deeplesion-lab {args.command}: interrupted; outputs already written are intact",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
