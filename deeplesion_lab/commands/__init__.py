"""Subcommands of ``deeplesion-lab``; each module defines ``register(subparsers)``."""
