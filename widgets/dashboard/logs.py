"""Keep the server log readable when clients send garbage.

Bokeh logs every websocket message it cannot parse or handle with the whole message and a
traceback (about 5 KB), so a signed-in user could fill the disk by sending malformed frames.
:class:`OneLinePerMessage` turns each such record into one short line without the traceback,
and lets at most ``burst`` of them through per ``window_s``; the rest are counted and reported
in one line when the window ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["OneLinePerMessage", "quiet_websocket_errors", "WEBSOCKET_LOGGERS"]

#: Loggers of bokeh that report refused or failed client messages.
WEBSOCKET_LOGGERS = (
    "bokeh.server.views.ws",
    "bokeh.server.protocol_handler",
    "bokeh.server.session",
    "bokeh.server.connection",
)


class OneLinePerMessage(logging.Filter):
    """A log filter: warnings and errors as one short line, at most ``burst`` per window.

    Parameters
    ----------
    burst : int, default 10
        Records let through per window.
    window_s : float, default 60
        Length of the window in seconds.
    max_chars : int, default 240
        Longest line kept (the rest is cut, with the number of characters cut).
    clock : callable, optional
        Time source (``time.monotonic``).
    """

    def __init__(
        self,
        burst: int = 10,
        window_s: float = 60.0,
        max_chars: int = 240,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self.max_chars = max_chars
        self.clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._passed = 0
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        with self._lock:
            now = self.clock()
            note = ""
            if now - self._start >= self.window_s:
                if self.suppressed:
                    note = f" ({self.suppressed} similar messages suppressed before this one)"
                self._start, self._passed, self.suppressed = now, 0, 0
            if self._passed >= self.burst:
                self.suppressed += 1
                return False
            self._passed += 1
        text = " ".join(record.getMessage().split())
        if len(text) > self.max_chars:
            text = f"{text[: self.max_chars]}... ({len(text) - self.max_chars} more characters)"
        record.msg, record.args = text + note, None
        record.exc_info = record.exc_text = record.stack_info = None
        return True


_installed: OneLinePerMessage | None = None


def quiet_websocket_errors() -> OneLinePerMessage:
    """Install one :class:`OneLinePerMessage` on :data:`WEBSOCKET_LOGGERS` (once)."""
    global _installed
    if _installed is None:
        _installed = OneLinePerMessage()
        for name in WEBSOCKET_LOGGERS:
            logging.getLogger(name).addFilter(_installed)
    return _installed
