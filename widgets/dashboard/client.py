"""A scripted collaborator: the browser's side of the dashboard protocol, without a browser.

:class:`DashboardClient` does what a browser tab does, over the same HTTP and websocket
endpoints: it signs in (``POST /login``), loads the page (``GET /``, which creates the
server-side session and returns its token), opens the session's websocket with the login
cookie, pulls the Bokeh document and then changes the same model properties the widget front
ends change (the map's ``selection``, the correction panel's ``request``). The server cannot
tell it from a browser, except that nothing is drawn.

It is used by the load test and benchmark (many sessions at once, in one asyncio loop) and by
tests that must speak to the server directly (a forged request from a viewer, for instance).

Only what is simulated: no JavaScript runs, so a click on the map is replaced by writing the
property the map's front end would write.
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["DashboardClient", "ClientError", "Ack", "LoadResult", "run_load", "propagation"]



_NONCES = iter(range(1, 1 << 30))


def _nonce() -> int:
    """A request id that stays exact in JavaScript (below 2**53)."""
    return int(time.time() * 1000) * 1000 + next(_NONCES) % 1000

class ClientError(RuntimeError):
    """The server refused or did not answer as a browser would expect."""


def _register_twin_models(content) -> None:
    """Make the page's ESM data models (``PanelEmbeddingMap1``...) known to this process.

    Bokeh's Python deserializer cannot build models from the document's ``defs``, so the twin
    classes are created here as the server creates them, and each ``Panel<Widget><n>`` name in
    the page is mapped to this process's data model of the same widget.
    """
    import json

    from bokeh.model import Model

    from ..correction_panel import CorrectionPanel
    from ..embedding_map import EmbeddingMap
    from ..proposal_review import ProposalReviewPanel
    from ..similar_gallery import SimilarGallery
    from ..slice_viewer import SliceViewer
    from ..volume_view import VolumeView
    from .bridge import panel_twin

    models = {}
    for w in (EmbeddingMap, SliceViewer, CorrectionPanel, SimilarGallery, VolumeView,
              ProposalReviewPanel):
        models[f"Panel{w.__name__}"] = panel_twin(w)._data_model
    text = json.dumps(content)
    for name, base in set(re.findall(r'"name": "((Panel[A-Za-z]+?)\d+)"', text)):
        if name not in Model.model_class_reverse_map and base in models:
            Model.model_class_reverse_map[name] = models[base]


class DashboardClient:
    """One collaborator's session, driven from Python (asyncio).

    Parameters
    ----------
    base_url : str
        ``http://127.0.0.1:PORT``.
    user, password : str, optional
        Sign in first (omit both for a loopback server without login).
    """

    def __init__(self, base_url: str, user: str | None = None, password: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.user = user
        self.password = password
        self.cookie: str | None = None
        self.document = None
        self.session_id: str | None = None
        self._ws = None
        self._reader: asyncio.Task | None = None
        self._pending: list = []
        self._changed = asyncio.Event()
        self.closed = False
        self.error: BaseException | None = None
        self.messages_in = 0

    # HTTP ----------------------------------------------------------------------------------------
    async def _http(self, method: str, path: str, body: dict | None = None):
        from tornado.httpclient import AsyncHTTPClient, HTTPClientError

        headers = {}
        if self.cookie:
            headers["Cookie"] = self.cookie
        data = None
        if body is not None:
            data = urllib.parse.urlencode(body)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        client = AsyncHTTPClient()
        try:
            return await client.fetch(
                self.base_url + path, method=method, body=data, headers=headers,
                follow_redirects=False, raise_error=False, request_timeout=60,
            )
        except HTTPClientError as exc:  # pragma: no cover - raise_error=False
            return exc.response

    async def login(self) -> None:
        """``POST /login``; keeps the signed cookie."""
        r = await self._http(
            "POST", "/login", {"username": self.user, "password": self.password, "next": "/"}
        )
        if r.code != 302:
            raise ClientError(f"login of {self.user!r} refused: HTTP {r.code}")
        cookies = r.headers.get_list("Set-Cookie")
        for c in cookies:
            name_value = c.split(";", 1)[0]
            if name_value.startswith("user="):
                self.cookie = name_value
        if not self.cookie:
            raise ClientError("the login answer set no 'user' cookie")

    # websocket -----------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Sign in (if a user was given), load the page and open its session's websocket."""
        import panel.models  # noqa: F401 - registers the model types of the page
        from bokeh.client.websocket import WebSocketClientConnectionWrapper
        from bokeh.document import Document
        from bokeh.protocol import Protocol
        from bokeh.protocol.receiver import Receiver
        from bokeh.util.token import get_session_id
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        if self.user is not None and self.cookie is None:
            await self.login()
        page = await self._http("GET", "/")
        if page.code != 200:
            raise ClientError(f"GET / answered HTTP {page.code} (not signed in?)")
        m = re.search(r'"token":"([^"]+)"', page.body.decode("utf-8", "replace"))
        if not m:
            raise ClientError("no session token in the page")
        token = m.group(1)
        self.session_id = get_session_id(token)
        ws_url = self.base_url.replace("http://", "ws://", 1) + "/ws"
        headers = {"Cookie": self.cookie} if self.cookie else {}
        req = HTTPRequest(ws_url, headers=headers, request_timeout=60)
        sock = await websocket_connect(req, subprotocols=["bokeh", token])
        self._ws = WebSocketClientConnectionWrapper(sock)
        self._protocol = Protocol()
        self._receiver = Receiver(self._protocol)
        ack = await self._read_message()
        if ack is None or ack.header["msgtype"] != "ACK":
            raise ClientError(f"expected ACK, got {ack and ack.header['msgtype']}")
        await self._send(self._protocol.create("PULL-DOC-REQ"))
        while True:  # patches sent before the reply are already in the document it carries
            reply = await self._read_message()
            if reply is None or reply.header["msgtype"] not in ("PATCH-DOC", "PULL-DOC-REPLY"):
                raise ClientError(
                    f"expected PULL-DOC-REPLY, got {reply and reply.header['msgtype']}"
                )
            if reply.header["msgtype"] == "PULL-DOC-REPLY":
                break
        _register_twin_models(reply.content)
        self.document = Document()
        reply.push_to_document(self.document)
        self.document.on_change(self._on_local_change)
        self._reader = asyncio.ensure_future(self._read_loop())
        # as BokehJS does once the page is drawn: Panel sends held updates only after this
        from bokeh.events import DocumentReady

        self.document.callbacks.send_event(DocumentReady())
        await self.flush()

    async def _read_message(self):
        while True:
            fragment = await self._ws.read_message()
            if fragment is None:
                return None
            msg = await self._receiver.consume(fragment)
            if msg is not None:
                return msg

    async def _send(self, msg) -> None:
        await msg.send(self._ws)

    async def _read_loop(self) -> None:
        try:
            while True:
                msg = await self._read_message()
                if msg is None:
                    break
                self.messages_in += 1
                if msg.header["msgtype"] == "PATCH-DOC":
                    msg.apply_to_document(self.document, self)
                    self._changed.set()
        except Exception as exc:  # recorded; the session counts as dropped
            self.error = exc
            raise
        finally:
            self.closed = True
            self._changed.set()

    def _on_local_change(self, event) -> None:
        if getattr(event, "setter", None) is self:
            return  # a change that came from the server
        self._pending.append(event)

    async def flush(self) -> None:
        """Send the local document changes to the server (one PATCH-DOC)."""
        if not self._pending:
            return
        events, self._pending = self._pending, []
        await self._send(self._protocol.create("PATCH-DOC", events))

    # the dashboard's models ------------------------------------------------------------------------
    def data_model(self, prop: str, widget: str | None = None):
        """The ESM data model that has property ``prop`` (e.g. ``selection``, ``request``);
        ``widget``: of that widget class only (the correction panel and the review panel both
        have a ``request``)."""
        for m in self.document.models:
            name = type(m).__name__
            if name.startswith("Panel") and prop in m.properties() and (
                    widget is None or name.startswith(f"Panel{widget}")):
                return m
        for m in self.document.models:
            try:
                if prop in m.properties() and type(m).__module__ != "bokeh.models" and (
                        widget is None or widget in type(m).__name__):
                    if hasattr(m, "esm_constants"):
                        return m
            except Exception:
                continue
        raise ClientError(f"no model with a {prop!r} property in the page")

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
        """Wait until ``predicate()`` holds after server updates (False on timeout)."""
        t_end = time.monotonic() + timeout
        while not predicate():
            if self.closed:
                return False
            left = t_end - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return bool(predicate())
        return True

    async def select(self, points: list[int]) -> None:
        """Select map points, as a lasso in the browser does."""
        from ..embedding_map import point_bytes

        self.data_model("selection").selection = point_bytes(list(points))  # uint32 bytes
        await self.flush()

    async def request(self, op: str, timeout: float = 30.0, **args) -> dict:
        """Send a correction-panel request and wait for its status (the acknowledgement)."""
        panel = self.data_model("request", widget="CorrectionPanel")
        nonce = _nonce()
        panel.request = {"op": op, **args, "nonce": nonce}
        await self.flush()
        ok = await self.wait_for(lambda: (panel.status or {}).get("nonce") == nonce, timeout)
        if not ok:
            raise ClientError(f"no answer to {op!r} within {timeout} s")
        return dict(panel.status)

    def codes(self) -> bytes:
        """The map's class index of each point, as this session currently shows it."""
        m = self.data_model("codes")
        return bytes(m.codes or b"")

    def classes(self) -> list[dict]:
        return list(self.data_model("codes").classes or [])

    async def close(self) -> None:
        if self._ws is not None:
            self._ws.close(1000, "done")
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 5)
            except (TimeoutError, asyncio.CancelledError):
                self._reader.cancel()


# load ------------------------------------------------------------------------------------------
@dataclass
class Ack:
    """One acknowledged change: what the server answered to one session's request."""

    user: str
    op: str
    label: str | None
    comment: str | None
    event_id: int | None
    n: int
    latency_s: float


@dataclass
class LoadResult:
    """What :func:`run_load` measured."""

    sessions: int
    held: int
    duration_s: float
    acks: list[Ack] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    connect_s: list[float] = field(default_factory=list)
    final_codes_agree: bool = False

    def latency_ms(self, q: float) -> float:
        lat = sorted(a.latency_s for a in self.acks)
        if not lat:
            return float("nan")
        return 1000.0 * lat[min(len(lat) - 1, int(round(q / 100.0 * (len(lat) - 1))))]


_EVENT = re.compile(r"\(event (\d+)\)")


async def _session(client: DashboardClient, labels: list[str], n_points: int, t_end: float,
                   rng, think_s: float, undo_every: int, out: LoadResult) -> None:
    j = 0
    while time.monotonic() < t_end and not client.closed:
        j += 1
        if undo_every and j % undo_every == 0:
            t0 = time.perf_counter()
            st = await client.request("undo")
            lat = time.perf_counter() - t0
            if st.get("ok"):
                out.acks.append(Ack(client.user or "", "undo", None, None, None, 0, lat))
            else:
                out.refused.append(f"{client.user}: {st.get('message')}")
        else:
            k = int(rng.integers(1, 6))
            points = sorted({int(p) for p in rng.integers(0, n_points, size=k)})
            label = str(labels[int(rng.integers(0, len(labels)))])
            comment = f"load {client.user} #{j}"
            await client.select(points)
            t0 = time.perf_counter()
            st = await client.request("relabel", label=label, comment=comment)
            lat = time.perf_counter() - t0
            if st.get("ok"):
                m = _EVENT.search(st.get("message", ""))
                out.acks.append(Ack(client.user or "", "relabel", label, comment,
                                    int(m.group(1)) if m else None, len(points), lat))
            else:
                out.refused.append(f"{client.user}: {st.get('message')}")
        if think_s:
            await asyncio.sleep(float(rng.uniform(0.5, 1.5)) * think_s)


async def run_load(base_url: str, users: list[tuple[str, str]], duration_s: float = 10.0, *,
                   think_s: float = 0.2, undo_every: int = 7, seed: int = 0,
                   settle_s: float = 5.0) -> LoadResult:
    """``len(users)`` sessions relabelling random map points at once for ``duration_s``.

    Each session signs in, opens the page's session over the websocket, then repeatedly selects
    1-5 random points and relabels them (every ``undo_every``-th action is an undo of its own
    last change), waiting for the server's acknowledgement each time. At the end every session
    must still be connected (``held``) and, after ``settle_s``, show the same map colours as a
    session opened afresh (``final_codes_agree``): everyone sees everyone's changes.
    """
    import numpy as np

    from deeplesion_lab.lesion_types import COARSE_TYPES

    rng = np.random.default_rng(seed)
    out = LoadResult(sessions=len(users), held=0, duration_s=duration_s)
    clients = [DashboardClient(base_url, u, p) for u, p in users]

    async def connect(c):
        t0 = time.perf_counter()
        await c.connect()
        out.connect_s.append(time.perf_counter() - t0)

    await asyncio.gather(*(connect(c) for c in clients))
    n_points = len(clients[0].codes())
    labels = list(COARSE_TYPES.values())
    t_end = time.monotonic() + duration_s
    t0 = time.monotonic()
    results = await asyncio.gather(
        *(_session(c, labels, n_points, t_end, np.random.default_rng(rng.integers(1 << 31)),
                   think_s, undo_every, out) for c in clients),
        return_exceptions=True,
    )
    out.duration_s = time.monotonic() - t0
    for c, r in zip(clients, results, strict=True):
        if isinstance(r, BaseException):
            out.errors.append(f"{c.user}: {r!r}")
    out.held = sum(1 for c in clients if not c.closed and c.error is None)
    fresh = DashboardClient(base_url, *users[0])
    await fresh.connect()

    def agree() -> bool:
        # the fresh session is read each time too: it is the store's state as a new page sees it
        truth, names = fresh.codes(), [x["name"] for x in fresh.classes()]
        return all(c.codes() == truth and [x["name"] for x in c.classes()] == names for c in clients)

    deadline = time.monotonic() + settle_s
    while not agree() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    out.final_codes_agree = agree()
    for c in [*clients, fresh]:
        await c.close()
    return out


async def propagation(base_url: str, writer: tuple[str, str], watcher: tuple[str, str],
                      n: int = 10, seed: int = 0, timeout: float = 30.0) -> list[float]:
    """Seconds from ``writer``'s acknowledged relabel to ``watcher``'s map showing it.

    ``n`` single-lesion relabels, one at a time; raises :class:`ClientError` if a change does
    not reach the watcher within ``timeout``.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    a = DashboardClient(base_url, *writer)
    b = DashboardClient(base_url, *watcher)
    await a.connect()
    await b.connect()
    out = []
    try:
        names = [c["name"] for c in b.classes()]
        n_points = len(b.codes())
        for _ in range(n):
            p = int(rng.integers(0, n_points))
            label = next(x for x in ("liver", "lung", "bone") if x != names[b.codes()[p]])
            idx = names.index(label)
            await a.select([p])
            st = await a.request("relabel", label=label)
            if not st.get("ok"):
                raise ClientError(f"relabel refused: {st}")
            t0 = time.perf_counter()
            if not await b.wait_for(lambda p=p, idx=idx: b.codes()[p] == idx, timeout=timeout):
                raise ClientError(f"the change of point {p} never reached the other session")
            out.append(time.perf_counter() - t0)
    finally:
        await a.close()
        await b.close()
    return out
