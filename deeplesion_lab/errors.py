"""The lab's error base class: the CLI prints these as one clear line and exits non-zero."""

from __future__ import annotations


class LabError(Exception):
    """A user-facing error: bad input, missing file, inconsistent state.

    The message must name what is wrong (file, row, column, value) so that the user can fix it.
    Code that raises it must not have written anything half-way.
    """
