"""A tiny event (``connect``, ``disconnect``, ``emit``) and the error of the lab's models."""

from __future__ import annotations

from collections.abc import Callable

from deeplesion_lab.errors import LabError


class CorrectionError(LabError, ValueError):
    """A correction cannot be made (empty selection, unknown class or cluster, no store)."""


class Signal:
    """A minimal event: callbacks connected to it are called, in order, by :meth:`emit`."""

    def __init__(self) -> None:
        self._callbacks: list[Callable] = []

    def connect(self, callback: Callable) -> Callable:
        """Call ``callback(*args)`` on every :meth:`emit`; returns it (usable as a decorator)."""
        if callback not in self._callbacks:
            self._callbacks.append(callback)
        return callback

    def disconnect(self, callback: Callable) -> None:
        """Stop calling ``callback`` (no error if it was not connected)."""
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def emit(self, *args) -> None:
        for cb in list(self._callbacks):
            cb(*args)


