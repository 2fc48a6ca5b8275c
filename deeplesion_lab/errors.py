"""The lab's error base class: the CLI prints these as one clear line and exits non-zero."""

from __future__ import annotations

import errno


class LabError(Exception):
    """A user-facing error: bad input, missing file, inconsistent state.

    The message must name what is wrong (file, row, column, value) so that the user can fix it.
    Code that raises it must not have written anything half-way.
    """


#: errno values that mean "this output could not be written" (disk full, quota, file-size
#: limit, read-only file system, permission).
WRITE_ERRNOS = frozenset(
    getattr(errno, n)
    for n in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EACCES", "EPERM")
    if hasattr(errno, n)
)


def describe_os_error(exc: OSError) -> str:
    """One line for an :class:`OSError` a command met: what failed, on which file, and (for a
    write that could not complete) that no output was left half-written.

    Every output of the lab is written to a temporary file and renamed onto its name only when
    complete (:mod:`deeplesion_lab.atomic`), and label-store writes are transactions, so a
    failed write leaves the earlier files as they were.
    """
    what = exc.strerror or str(exc) or type(exc).__name__
    where = f"{exc.filename}: " if exc.filename else ""
    if exc.errno in WRITE_ERRNOS:
        return (
            f"{where}cannot write: {what}; nothing was written (outputs are replaced only once "
            "complete, earlier files are intact)"
        )
    return f"{where}{what}" if where else str(exc)
