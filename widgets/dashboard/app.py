"""The dashboard page: the lab's widget front ends served by Panel, one session per browser tab.

Each session (:class:`Dashboard`) gets the headless models of :class:`widgets.models.LabModel`
(for the logged-in user) and the same anywidget classes the notebooks use
(:class:`~widgets.EmbeddingMap`, :class:`~widgets.SliceViewer`, :class:`~widgets.CorrectionPanel`,
:class:`~widgets.SimilarGallery`, :class:`~widgets.VolumeView`), shown as Panel twins kept equal
to them (:mod:`.bridge`). All sessions share one :class:`~.context.DashboardContext` (the run's
data, the label store, who is online); fine-tuning runs as the run's job (:mod:`.finetune_job`).

The server checks every write: the correction panel's requests pass the role check of
:meth:`Dashboard.require` before they reach the widget; snapshots and fine-tuning check it too.
A viewer's page does not show the correction controls, and a request forged in the browser is
refused.

User-provided text (class names, comments, user names, metric keys) reaches the page only as
text: the widget front ends set ``textContent``, and the HTML built here goes through
:func:`html.escape`.
"""

from __future__ import annotations

import datetime as _dt
import html
import logging
import math
import time
from collections.abc import Callable

import pandas as pd

from deeplesion_lab.errors import LabError
from deeplesion_lab.jobs import format_duration

from .auth import SIGNED_OUT, User
from .bridge import TraitBridge, frontend_writes, panel_twin, synced_traits
from .context import DashboardContext, store_version
from .finetune_job import FinetuneJob

__all__ = [
    "DashboardContext",
    "Dashboard",
    "FinetuneJob",
    "PermissionDenied",
    "TraitBridge",
    "frontend_writes",
    "panel_twin",
    "synced_traits",
    "store_version",
    "make_app",
    "OP_PERMISSIONS",
    "REVIEW_PERMISSIONS",
]

log = logging.getLogger("deeplesion_lab.dashboard")

#: Permission each review-panel request needs (unknown requests need ``relabel``).
REVIEW_PERMISSIONS: dict[str, str] = {
    "accept": "relabel",
    "reject": "relabel",
    "undo": "undo",
    **{op: "view" for op in ("next", "prev", "go", "go_to", "start", "pending_only", "refresh")},
}

#: Permission each correction-panel request needs (unknown requests need ``relabel``).
OP_PERMISSIONS: dict[str, str] = {
    "relabel": "relabel",
    "relabel_cluster": "relabel",
    "merge": "relabel",
    "split": "relabel",
    "add_class": "add_class",
    "undo": "undo",
    "redo": "undo",
    "suggest": "view",
    "select_cluster": "view",
    "clear_selection": "view",
    "show": "view",
    "refresh": "view",
}

_ROLE_TEXT = {
    "viewer": "can look (map, slices, history, metrics) but not change labels",
    "annotator": "can correct labels; undo/redo undoes only your own changes",
    "admin": "can correct labels, take snapshots and start fine-tuning",
}


class PermissionDenied(LabError, PermissionError):
    """The logged-in user's role does not allow this action (nothing was changed)."""


def esc(value) -> str:
    """``html.escape`` of ``str(value)`` (quotes too)."""
    return html.escape("" if value is None else str(value), quote=True)


_NONCES = iter(range(1, 1 << 30))


def _nonce() -> int:
    """A request id that stays exact in JavaScript (below 2**53)."""
    return int(time.time() * 1000) * 1000 + next(_NONCES) % 1000


# the per-session app -----------------------------------------------------------------------------
_CSS = """
:host { --dl-accent: #0072B2; }
.dl-header { display: flex; align-items: center; gap: 14px; padding: 10px 18px;
  background: linear-gradient(90deg, #10202b, #1d3a4f); color: #eef3f7; border-radius: 10px;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
.dl-header .brand { font-size: 18px; font-weight: 700; letter-spacing: .2px; }
.dl-header .run { color: #9fb6c8; font-size: 13px; }
.dl-header .grow { flex: 1; }
.dl-header .live { font-size: 12px; color: #b9cad8; }
.dl-header .dot { display: inline-block; width: 8px; height: 8px; border-radius: 50%;
  background: #3ddc84; margin-right: 5px; box-shadow: 0 0 6px #3ddc84; }
.dl-badge { padding: 3px 10px; border-radius: 999px; font-size: 12px; font-weight: 600;
  background: #2c5364; color: #fff; }
.dl-badge.viewer { background: #6b7280; } .dl-badge.annotator { background: #0072B2; }
.dl-badge.admin { background: #b45309; }
.dl-header a { color: #cfe3f3; font-size: 13px; }
.dl-note { font: 13px system-ui, sans-serif; color: #374151; background: #eef2f7;
  border-left: 4px solid #6b7280; padding: 8px 12px; border-radius: 6px; }
.dl-note.refused { border-left-color: #b91c1c; background: #fdecec; color: #7f1d1d; }
table.dl-table { border-collapse: collapse; font: 12.5px system-ui, sans-serif; width: 100%; }
table.dl-table th { text-align: left; background: #f1f5f9; color: #334155; font-weight: 600;
  padding: 6px 8px; border-bottom: 1px solid #cbd5e1; position: sticky; top: 0; }
table.dl-table td { padding: 5px 8px; border-bottom: 1px solid #e2e8f0; color: #1e293b;
  vertical-align: top; }
table.dl-table tr:hover td { background: #f8fafc; }
.dl-sw { display: inline-block; width: 11px; height: 11px; border-radius: 3px; margin-right: 6px;
  vertical-align: -1px; }
.dl-h2 { font: 600 15px system-ui, sans-serif; color: #0f172a; margin: 4px 0 6px 0; }
.dl-muted { color: #64748b; font: 12px system-ui, sans-serif; }
pre.dl-log { background: #0f172a; color: #e2e8f0; padding: 10px; border-radius: 6px;
  font-size: 11.5px; max-height: 240px; overflow: auto; }
"""


def lesion_count_text(n_lesions: int, n_points: int, present_only: bool) -> str:
    """The header's lesion count, as the map shows them: ``4,927 lesions``, or on a partial
    download ``18 of 4,927 lesions have images`` (the run was embedded ``--present-only``),
    else ``30 of 32 lesions on the map`` (the others have no map coordinates)."""
    if n_points >= n_lesions:
        return f"{n_lesions:,} lesions"
    what = "have images" if present_only else "on the map"
    return f"{n_points:,} of {n_lesions:,} lesions {what}"


def _table(columns: list[str], rows: list[list], empty: str = "nothing yet") -> str:
    """An HTML table; every cell is escaped (cells given as ``("raw", html)`` are not)."""
    if not rows:
        return f"<div class='dl-muted'>{esc(empty)}</div>"
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for v in r:
            if isinstance(v, tuple) and len(v) == 2 and v[0] == "raw":
                cells.append(f"<td>{v[1]}</td>")
            else:
                cells.append(f"<td>{esc(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class='dl-table'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _swatch(color: str) -> str:
    c = str(color)
    if not (c.startswith("#") and len(c) in (4, 7) and all(ch in "0123456789abcdefABCDEF" for ch in c[1:])):
        c = "#bbbbbb"
    return f"<span class='dl-sw' style='background:{c}'></span>"


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _flatten(v, key + ".")
        elif isinstance(v, list) and len(v) > 8:
            out.append((key, f"[{len(v)} values]"))
        else:
            out.append((key, v))
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _html(obj: str = "", **kwargs):
    """An HTML pane styled with the dashboard's CSS (each pane has its own shadow root)."""
    import panel as pn

    kwargs.setdefault("stylesheets", [_CSS])
    return pn.pane.HTML(obj, **kwargs)


class Dashboard:
    """One collaborator's session: map, viewer, corrections, history, metrics (and admin).

    Parameters
    ----------
    context : DashboardContext
        Shared state of the server.
    user : User
        The logged-in user (every correction is recorded with ``user.name``).
    """

    def __init__(self, context: DashboardContext, user: User, login_id: str | None = None):
        import panel as pn

        from ..correction_panel import CorrectionPanel
        from ..embedding_map import EmbeddingMap
        from ..models import LabModel
        from ..proposal_review import ProposalReviewPanel
        from ..similar_gallery import SimilarGallery
        from ..slice_viewer import SliceViewer
        from ..volume_view import VolumeView

        self.ctx = context
        self.user = user
        self.login_id = login_id
        self.store = context.session_store()
        self.lab = LabModel(context.run.path, user=user.name, store=self.store, data=context.data)
        self.map_widget = EmbeddingMap(self.lab.map, canvas_size=460)
        self.viewer_widget = SliceViewer(self.lab.viewer, canvas_size=440)
        self.panel_widget = CorrectionPanel(self.lab.corrections)
        self.panel_widget.lesion_requested.connect(self.lab.show_lesion)
        self.gallery_widget = SimilarGallery(self.lab.gallery)
        # the lesion in 3-D, following the viewer; loaded only while its tab is open
        self.volume_widget = VolumeView(self.lab.viewer, canvas_size=300, active=False)
        self.gallery_widget.lesion_requested.connect(self.lab.show_lesion)
        # reviewing mined lesions: the panel and a second view of the same viewer model
        self.review_widget = ProposalReviewPanel(self.lab.review)
        self.review_viewer_widget = SliceViewer(self.lab.viewer, canvas_size=440)
        self.map = panel_twin(EmbeddingMap)()
        self.viewer = panel_twin(SliceViewer)()
        self.gallery = panel_twin(SimilarGallery)()
        self.volume = panel_twin(VolumeView)()
        self.corrections = panel_twin(CorrectionPanel)(
            visible=user.can("relabel"), min_width=320
        )
        self.review = panel_twin(ProposalReviewPanel)(min_width=340)
        self.review_viewer = panel_twin(SliceViewer)()
        self.bridges = [
            TraitBridge(self.review_widget, self.review, guard=self._guard_review),
            TraitBridge(self.review_viewer_widget, self.review_viewer),
            TraitBridge(self.map_widget, self.map),
            TraitBridge(self.viewer_widget, self.viewer),
            TraitBridge(self.panel_widget, self.corrections, guard=self._guard_request),
            TraitBridge(self.gallery_widget, self.gallery),
            TraitBridge(self.volume_widget, self.volume),
        ]
        self.message = _html("", margin=(4, 0), sizing_mode="stretch_width")
        self.header = _html(self._header_html(), sizing_mode="stretch_width", margin=(0, 0, 8, 0))
        self.history = _html("", sizing_mode="stretch_width", max_height=560, styles={"overflow": "auto"})
        self.metrics = _html("", sizing_mode="stretch_width")
        self.history_user = pn.widgets.Select(label="user", options=["everyone"], width=180)
        self.history_user.param.watch(lambda e: self._refresh_history(), "value")
        self._build_admin()
        self._refresh_history()
        self._refresh_metrics()
        self.last_refresh_s = float("nan")
        self.n_polls = 0
        self.scheduled = 0.0  # when a server refresh was queued (0: none queued)
        self._stale: set[str] = set()
        self.tabs = None  # built by view()
        self.lab.labels.changed.connect(self._on_labels_changed)

    # permissions -------------------------------------------------------------------------------
    def allowed(self, action: str) -> bool:
        return self.current_user().can(action)

    def current_user(self) -> User:
        """The session's user as the users file says now (a removed user, or a login that
        ended with ``/logout``, gets no role, so every write is refused; a changed role
        applies at once)."""
        auth = self.ctx.auth
        if auth is None:
            return self.user
        if self.login_id is not None and not auth.sessions.is_live(self.login_id):
            return User(self.user.name, SIGNED_OUT)
        try:
            now = auth.users.get(self.user.name)
        except LabError:  # the users file became unreadable: refuse writes, keep the session
            now = None
        return now if now is not None else User(self.user.name, "none")

    def require(self, action: str) -> None:
        """Raise :class:`PermissionDenied` unless the user's role allows ``action``.

        Checked by the server on every write, with the role from the users file at that time.
        """
        user = self.current_user()
        if not user.can(action):
            with self.ctx.lock:
                self.ctx.refused += 1
            log.warning("refused %s for %s (%s)", action, user.name, user.role)
            what = {
                "none": "is no longer a user of this dashboard",
                SIGNED_OUT: "has signed out (sign in again)",
            }.get(user.role, f"is a {user.role}")
            raise PermissionDenied(
                f"{user.name} {what}: not allowed to {action.replace('_', ' ')}"
            )

    def _guard_request(self, name: str, value) -> bool:
        """Let a correction-panel request through only if the role allows it."""
        if name != "request" or not value:
            return True
        req = dict(value)
        op = str(req.get("op", ""))
        try:
            self.require(OP_PERMISSIONS.get(op, "relabel"))
        except PermissionDenied as exc:
            self.panel_widget.status = {"nonce": req.get("nonce"), "ok": False, "message": str(exc)}
            self._say(str(exc), refused=True)
            return False
        return True

    def _guard_review(self, name: str, value) -> bool:
        """Let a review-panel request through only if the role allows it (moving through the
        proposals needs ``view``, a decision ``relabel``, undo ``undo``)."""
        if name != "request" or not value:
            return True
        req = dict(value)
        try:
            self.require(REVIEW_PERMISSIONS.get(str(req.get("op", "")), "relabel"))
        except PermissionDenied as exc:
            self.review_widget.status = {"nonce": req.get("nonce"), "ok": False,
                                         "message": str(exc)}
            self._say(str(exc), refused=True)
            return False
        return True

    # actions (the API the UI and the tests use) ------------------------------------------------
    def review_request(self, op: str, **args) -> dict:
        """Send a review-panel request as the browser does; returns the panel's status."""
        self.review.request = {"op": op, **args, "nonce": _nonce()}
        return dict(self.review_widget.status)

    def request(self, op: str, **args) -> dict:
        """Send a correction-panel request as the browser does; returns the panel's status."""
        self.corrections.request = {"op": op, **args, "nonce": _nonce()}
        return dict(self.panel_widget.status)

    def select(self, points) -> list[int]:
        """Select map points (as a lasso in the browser would)."""
        from ..embedding_map import point_bytes

        self.map.selection = point_bytes(list(points))  # one uint32 buffer, as the page sends
        return self.map_widget.selected.tolist()

    def snapshot(self, name: str) -> object:
        """Freeze the current labels under ``name`` (admins)."""
        self.require("snapshot")
        name = str(name).strip()
        if not name:
            raise LabError("give the snapshot a name")
        if self.ctx.store is None:
            raise LabError("this run has no label store yet (run `deeplesion-lab mine`)")
        sid = self.store.snapshot(name, self.user.name)
        self._say(f"snapshot {name!r} saved (id {sid})")
        return sid

    def unlock_user(self, name: str) -> int:
        """Lift the login lockouts of user ``name`` (admins); how many were lifted."""
        self.require("unlock_users")
        if self.ctx.auth is None:
            raise LabError("this dashboard has no logins (loopback without a users file)")
        n = self.ctx.auth.unlock(str(name))
        log.info("%s lifted %d lockout(s) of %r", self.user.name, n, str(name)[:64])
        plural = "s" if n != 1 else ""
        self._say(f"{name}: {n} lockout{plural} lifted" if n else f"{name} was not locked out")
        return n

    def start_finetune(self) -> str:
        """Start ``deeplesion-lab finetune`` on this run (admins)."""
        self.require("finetune")
        msg = self.ctx.job.start(self.user.name)
        self._say(msg)
        return msg

    # live updates ------------------------------------------------------------------------------
    def poll(self) -> bool:
        """Re-read the labels if the store changed since this session last looked.

        Scheduled by :meth:`DashboardContext.tick` when the store moved on; returns whether
        anything changed. Only the lesions changed since the last look are read
        (:meth:`widgets.models.LabelState.poll`).
        """
        import panel as pn

        t0 = time.perf_counter()
        self.n_polls += 1
        with pn.io.hold():
            changed = self.lab.labels.poll()  # re-read if the store moved on: the map recolours
        if changed:
            self.last_refresh_s = time.perf_counter() - t0
        self.header.object = self._header_html()
        if self.user.can("finetune"):
            self._refresh_admin()
        return changed

    def seen_version(self) -> int | None:
        """The store version this session's labels are up to date with."""
        return getattr(self.lab.labels, "_version", None)

    def scheduled_poll(self) -> None:
        """:meth:`poll` as run by the server (see :meth:`DashboardContext.tick`)."""
        try:
            self.poll()
        except Exception:  # keep the session; the next tick tries again
            log.exception("refreshing the session of %s failed", self.user.name)
        finally:
            self.scheduled = 0.0

    def _on_labels_changed(self) -> None:
        """Re-render the tables of the tab in view; the others when they come into view."""
        self._stale = {"History", "Metrics"}
        self._refresh_visible()
        self.header.object = self._header_html()

    def _refresh_visible(self, *_events) -> None:
        name = self.tabs.objects[self.tabs.active].name if self.tabs is not None else None
        self.volume_widget.active = name == "3-D"  # a closed tab loads no volume
        if name in self._stale:
            self._stale.discard(name)
            (self._refresh_history if name == "History" else self._refresh_metrics)()

    # rendering ---------------------------------------------------------------------------------
    def _say(self, text: str, refused: bool = False) -> None:
        cls = "dl-note refused" if refused else "dl-note"
        self.message.object = f"<div class='{cls}' id='dl-message'>{esc(text)}</div>"

    def _header_html(self) -> str:
        online = self.ctx.online()
        logout = (
            f"<a href='{esc(self.ctx.auth.logout_url.lstrip('/'))}' id='dl-logout'>Sign out</a>"
            if self.ctx.auth is not None
            else ""
        )
        count = lesion_count_text(len(self.ctx.data), self.ctx.data.n_points,
                                  self.ctx.present_only)
        running = [r for r in self.ctx.jobs() if r.state in ("starting", "running")]
        jobs = ""
        if running:
            what = ", ".join(f"{r.name} {100 * (r.progress or 0):.0f} %" for r in running)
            jobs = (f"<span class='live' id='dl-jobs-running' title='{esc(what)}'>"
                    f"{len(running)} job{'s' if len(running) > 1 else ''} running</span>")
        return (
            "<div class='dl-header'>"
            "<span class='brand'>DeepLesion lab</span>"
            f"<span class='run' id='dl-run'>run {esc(self.ctx.run.path.name)} · "
            f"{esc(count)}</span>"
            "<span class='grow'></span>"
            f"<span class='live' title='{esc(', '.join(online))}'><span class='dot'></span>"
            f"{len(online)} online · labels v{esc(self.seen_version())}</span>{jobs}"
            f"<span class='dl-badge {esc(self.user.role)}' id='dl-user'>{esc(self.user.name)} · "
            f"{esc(self.user.role)}</span>{logout}</div>"
        )

    def events(self, user: str | None = None, limit: int = 100) -> pd.DataFrame:
        """The store's event log (one row per change batch, newest first)."""
        if self.store is None:
            return pd.DataFrame()
        return self.store.events(user=user, limit=limit)

    def _refresh_history(self) -> None:
        who = self.history_user.value
        who = None if who in (None, "everyone") else str(who)
        self.history.object = self.ctx.cached(("history", who), lambda: self._history_html(who))
        users = self.ctx.cached(("users",), lambda: "\n".join(self._users()))
        opts = ["everyone", *[u for u in users.split("\n") if u]]
        if list(self.history_user.options) != opts:
            self.history_user.options = opts

    def _users(self) -> list[str]:
        """Who appears in the recent log (the history filter's choices)."""
        return sorted({str(u) for u in self.events(limit=5000).get("user", [])})

    def _history_html(self, who: str | None) -> str:
        ev = self.events(who)
        rows = []
        def txt(v) -> str:
            return "" if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v)

        for r in ev.to_dict("records"):
            undone = txt(r.get("undone_by"))
            rows.append([
                r.get("event_id"), txt(r.get("created_at"))[:19].replace("T", " "),
                txt(r.get("user")), txt(r.get("op")), txt(r.get("detail")),
                txt(r.get("n_changes")), txt(r.get("comment")),
                f"undone by event {undone}" if undone else "",
            ])
        return _table(
            ["event", "time (UTC)", "user", "op", "what", "lesions", "comment", ""], rows,
            empty="no corrections yet",
        )

    def _refresh_metrics(self) -> None:
        self.metrics.object = self.ctx.cached(("metrics",), self._metrics_html)

    def _metrics_html(self) -> str:
        """Label counts and corrections per user, read from the store (not this session)."""
        rows, per_user = [], []
        if self.store is not None:
            colors = dict(zip(*(self.store.classes()[c] for c in ("name", "color")), strict=True))
            for r in self.store.correction_counts().to_dict("records"):
                rows.append([
                    ("raw", _swatch(colors.get(r["label"], "")) + esc(r["label"])),
                    r["n_current"], r["n_corrected"], r["n_pseudo"],
                ])
            ev = self.events(limit=100_000)
            if len(ev):
                ev = ev[ev["op"] != "init"]
                for u, g in ev.groupby("user"):
                    per_user.append([u, len(g), int(g["n_changes"].sum())])
        flat = _flatten(self.ctx.metrics())
        return (
            "<div class='dl-h2'>Current labels</div>"
            + _table(["label", "lesions", "set by people", "still pseudo-labels"], rows,
                     empty="no label store yet")
            + "<div class='dl-h2' style='margin-top:14px'>Corrections per collaborator</div>"
            + _table(["user", "events", "lesion changes"], per_user, empty="no corrections yet")
            + "<div class='dl-h2' style='margin-top:14px'>Run metrics (metrics.json)</div>"
            + _table(["metric", "value"], [[k, _fmt(v)] for k, v in flat], empty="no metrics.json yet")
        )

    def _build_admin(self) -> None:
        import panel as pn

        self.snapshot_name = pn.widgets.TextInput(
            label="snapshot name", placeholder=f"e.g. review-{_dt.date.today()}", width=260
        )
        self.snapshot_button = pn.widgets.Button(
            label="Take snapshot", color="primary", width=160, css_classes=["dl-snapshot"]
        )
        self.finetune_button = pn.widgets.Button(
            label="Start fine-tuning", color="warning", width=160, css_classes=["dl-finetune"]
        )
        self.job_status = _html("", sizing_mode="stretch_width")
        self.locked_user = pn.widgets.Select(label="locked-out user", options=[], width=260)
        self.unlock_button = pn.widgets.Button(
            label="Unlock", color="primary", width=160, css_classes=["dl-unlock"]
        )

        def _run(fn):
            def cb(_event):
                try:
                    fn()
                except LabError as exc:
                    self._say(str(exc), refused=isinstance(exc, PermissionDenied))
                except Exception as exc:  # show it, keep the session
                    log.exception("admin action failed")
                    self._say(f"failed: {exc}", refused=True)
                self._refresh_admin()

            return cb

        self.snapshot_button.on_click(_run(lambda: self.snapshot(self.snapshot_name.value)))
        self.finetune_button.on_click(_run(self.start_finetune))
        self.unlock_button.on_click(
            _run(lambda: self.locked_user.value and self.unlock_user(self.locked_user.value))
        )
        self._refresh_admin()

    def _refresh_admin(self) -> None:
        if self.ctx.auth is not None:
            self.locked_user.options = self.ctx.auth.locked_users()
        job = self.ctx.job
        tail = job.log_tail()
        frac = job.progress()
        bar = (f"<progress id='dl-finetune-progress' max='1' value='{frac:.3f}' "
               f"style='width:320px'></progress>" if frac is not None else "")
        rows = []
        for r in self.ctx.jobs():
            pct = (f"<progress max='1' value='{r.progress:.3f}'></progress> "
                   f"{100 * r.progress:.0f} %" if r.progress is not None else "")
            eta = format_duration(r.eta_s) if r.state == "running" and r.eta_s else ""
            rows.append([r.name, r.state, ("raw", pct), eta, r.user, r.message[-60:]])
        table = _table(["job", "state", "progress", "left", "by", "last output"], rows,
                       empty="no jobs in this run yet")
        self.job_status.object = (
            f"<div class='dl-muted'>fine-tuning: {esc(job.status())}</div>{bar}"
            f"<div class='dl-h2' style='margin-top:12px'>Jobs of this run</div>"
            f"<div id='dl-jobs'>{table}</div>"
            + (f"<pre class='dl-log'>{esc(tail)}</pre>" if tail else "")
        )

    # layout ------------------------------------------------------------------------------------
    def view(self):
        """The page: header, then tabs Annotate / Review / 3-D / History / Metrics (/ Admin)."""
        import panel as pn

        if self.user.can("relabel"):
            side = self.corrections
        else:
            side = pn.Column(
                self.corrections,  # hidden: a forged request is still answered (refused)
                _html(
                    f"<div class='dl-note' id='dl-viewer-note'>Signed in as <b>{esc(self.user.name)}"
                    f"</b> ({esc(self.user.role)}): you {esc(_ROLE_TEXT[self.user.role])}.</div>",
                    width=300,
                ),
            )
        annotate = pn.FlexBox(
            self.map, self.viewer, side, self.gallery, name="Annotate", gap="10px",
            flex_wrap="wrap", align_items="flex-start",
        )
        history = pn.Column(
            _html("<div class='dl-h2'>History of corrections</div>"),
            self.history_user,
            self.history,
            name="History",
        )
        volume = pn.Column(
            _html("<div class='dl-muted'>The selected lesion's series in three planes and 3-D "
                  "(the slices on disk around its key slice).</div>"),
            self.volume,
            name="3-D",
        )
        review = pn.FlexBox(
            self.review, self.review_viewer, name="Review", gap="10px", flex_wrap="wrap",
            align_items="flex-start",
        )
        tabs = [annotate, review, volume, history,
                pn.Column(self.metrics, name="Metrics", max_width=900)]
        if self.user.can("snapshot"):
            tabs.append(
                pn.Column(
                    _html("<div class='dl-h2'>Snapshots</div><div class='dl-muted'>Freeze "
                                 "the current labels under a name (for exports and fine-tuning)."
                                 "</div>"),
                    pn.Row(self.snapshot_name, self.snapshot_button),
                    _html("<div class='dl-h2' style='margin-top:16px'>Fine-tuning</div>"
                                 "<div class='dl-muted'>Runs <code>deeplesion-lab finetune</code> "
                                 "on this run with the current labels.</div>"),
                    self.finetune_button,
                    self.job_status,
                    _html("<div class='dl-h2' style='margin-top:16px'>Sign-in lockouts</div>"
                          "<div class='dl-muted'>Users locked out after repeated wrong "
                          "passwords (from one address, or from many).</div>"),
                    pn.Row(self.locked_user, self.unlock_button),
                    name="Admin",
                )
            )
        self.tabs = pn.Tabs(*tabs, dynamic=False)
        self.tabs.param.watch(self._refresh_visible, "active")
        return pn.Column(
            self.header,
            self.message,
            self.tabs,
            stylesheets=[_CSS],
            sizing_mode="stretch_width",
            margin=(10, 14),
        )

    def close(self) -> None:
        for b in self.bridges:
            b.close()
        unsubscribe = getattr(self.lab.labels, "_unsubscribe", None)
        if callable(unsubscribe):
            unsubscribe()
        # the session's store shares the server's connection: nothing to close here


def _denied_page(reason: str):

    return _html(f"<div class='dl-note refused' id='dl-denied'>{esc(reason)}</div>")


def make_app(context: DashboardContext) -> Callable:
    """The Panel app function: one :class:`Dashboard` per session, for the session's user."""

    def app():
        import panel as pn

        doc = pn.state.curdoc
        ctx = doc.session_context if doc is not None else None
        payload = ctx.token_payload if ctx is not None and getattr(ctx, "_token", None) else {}
        user, login_id = context.user_for(payload)
        if user is None:
            # the server already requires the login cookie; this is a second line of defence
            return _denied_page("Not signed in (or your account was removed). Sign in again.")
        dash = Dashboard(context, user, login_id)
        if doc is not None and doc.session_context:
            sid = doc.session_context.id
            context.register(sid, doc, dash)

            def _closed(session_context):
                context.unregister(session_context.id)
                dash.close()

            doc.on_session_destroyed(_closed)
        return dash.view()

    return app
