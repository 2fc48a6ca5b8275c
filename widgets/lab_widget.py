"""The base of the lab's anywidgets (:class:`LabWidget`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import anywidget

__all__ = ["LabWidget"]


class LabWidget(anywidget.AnyWidget):
    """An anywidget that mirrors a headless model (:mod:`widgets.models`) into synced traits.

    Its trait observers turn what the front end writes into model calls; when the model changes,
    the widget writes the new state into its traits inside :meth:`_quietly`, so those observers
    do not take the widget's own writes for the user's (``self._quiet`` is True meanwhile) and
    the front end gets the changes as one message.
    """

    def __init__(self, **kwargs):
        self._quiet = False  # before the traits are set: observers may run during __init__
        super().__init__(**kwargs)

    @contextlib.contextmanager
    def _quietly(self) -> Iterator[None]:
        """Write traits without running the front-end observers, in one sync message."""
        was = self._quiet
        self._quiet = True
        try:
            with self.hold_sync():
                yield
        finally:
            self._quiet = was
