"""The base of the lab's anywidgets (:class:`LabWidget`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import anywidget

from deeplesion_lab.errors import LabError

__all__ = ["LabWidget", "HELPERS_JS", "USES_HELPERS", "esm_source"]

#: The front-end helpers (``h``, ``bytesOf``, ``typed``) shared by the widgets' ESM files.
HELPERS_JS = Path(__file__).with_name("_helpers.js")
#: The line by which an ESM file asks for :data:`HELPERS_JS` in front of it.
USES_HELPERS = "// uses widgets/_helpers.js"


def esm_source(path: str | Path) -> str:
    """The ES module a widget's front end is, as the browser gets it: the file at ``path``,
    with :data:`HELPERS_JS` in front when the file asks for it (:data:`USES_HELPERS`).

    anywidget imports each ESM from a ``blob:`` URL, where a relative ``import`` of a sibling
    file cannot resolve, and nothing may come from a CDN; so the shared helpers are put in
    front of each module instead (one copy in the repository, one per module in the browser).
    """
    text = Path(path).read_text(encoding="utf-8")
    if USES_HELPERS not in text:
        return text
    return HELPERS_JS.read_text(encoding="utf-8") + "\n" + text


class LabWidget(anywidget.AnyWidget):
    """An anywidget that mirrors a headless model (:mod:`widgets.models`) into synced traits.

    Its trait observers turn what the front end writes into model calls; when the model changes,
    the widget writes the new state into its traits inside :meth:`_quietly`, so those observers
    do not take the widget's own writes for the user's (``self._quiet`` is True meanwhile) and
    the front end gets the changes as one message.

    A subclass's ``_esm`` file is turned into its module text by :func:`esm_source` when the
    class is defined (the shared helpers of ``widgets/_helpers.js`` in front of it), and its
    ``_css`` file (the styles, beside the ESM file) into the style sheet's text: anywidget
    loads both in JupyterLab, and the dashboard's Panel twin takes the same text as its
    ``_stylesheets`` (:func:`widgets.dashboard.bridge.panel_twin`).
    """

    def __init_subclass__(cls, **kwargs) -> None:
        esm = cls.__dict__.get("_esm")
        if isinstance(esm, Path):
            cls._esm = esm_source(esm)
        css = cls.__dict__.get("_css")
        if isinstance(css, Path):
            cls._css = css.read_text(encoding="utf-8")
        super().__init_subclass__(**kwargs)

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

    def _answer(self, req: dict) -> dict:
        """Carry out one front-end request with the subclass's ``handle(req)`` and return the
        status the front end gets: ``{nonce, ok, message}``. A :class:`LabError`, or a
        malformed request from a client, is a refusal with its message (nothing written)."""
        try:
            message, ok = self.handle(req), True
        except LabError as exc:
            message, ok = str(exc), False
        except (KeyError, ValueError, TypeError) as exc:  # a malformed request from a client
            message, ok = f"bad request {req.get('op')!r}: {exc!r}", False
        return {"nonce": req.get("nonce"), "ok": ok, "message": message}
