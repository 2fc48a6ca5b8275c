"""Every route of the served dashboard behind the login, with safe response headers.

Bokeh and Panel register routes of their own next to the app page: static files, the favicon,
``/metadata``, ``/autoload.js``, the websocket, and Panel's component resources
(``/components/<module>/<class>/<attribute>/<file>``). Some of them check the login, some do
not, and Panel's component route *imports the module named in the URL* (an anonymous
``GET /components/venv.__main__/x/__css__/y`` stopped the server). :func:`guard_routes` wraps
the handler class of every route of a built server:

- with a users file, every route but ``/login`` and ``/logout`` requires the signed login of
  a live session (a page request is sent to the login page, anything else gets 403);
- the component route serves only modules that are already imported and belong to the
  packages the app is built from (:data:`COMPONENT_PACKAGES`): no request imports anything;
- every answer carries :data:`SECURITY_HEADERS` (no framing, no MIME sniffing).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from urllib.parse import urlencode

__all__ = ["COMPONENT_PACKAGES", "SECURITY_HEADERS", "guard_routes", "route_table"]

#: Top-level packages whose (already imported) components may serve their listed resources.
COMPONENT_PACKAGES: frozenset[str] = frozenset({"panel", "panel_material_ui", "bokeh", "widgets"})

#: Headers set on every answer of the server.
SECURITY_HEADERS: dict[str, str] = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def component_module_allowed(module: str) -> bool:
    """Whether ``/components/<module>/...`` may be answered (never imports ``module``)."""
    return module in sys.modules and module.split(".", 1)[0] in COMPONENT_PACKAGES


def _guarded(handler_cls: type, user_of: Callable | None, public: bool, login_url: str) -> type:
    """A subclass of ``handler_cls`` that adds the headers and (unless public) the login check."""
    from panel.io.server import ComponentResourceHandler
    from tornado.web import HTTPError

    class Guarded(handler_cls):  # type: ignore[misc, valid-type]
        def set_default_headers(self) -> None:
            super().set_default_headers()
            for name, value in SECURITY_HEADERS.items():
                self.set_header(name, value)

        def prepare(self):
            if user_of is not None and not public and user_of(self) is None:
                if self.request.method in ("GET", "HEAD"):
                    self.redirect(f"{login_url}?{urlencode({'next': self.request.uri or '/'})}")
                    return None
                raise HTTPError(403)
            return super().prepare()

        if issubclass(handler_cls, ComponentResourceHandler):

            def parse_url_path(self, path: str) -> str:
                if not component_module_allowed(path.split("/", 1)[0]):
                    raise HTTPError(404, "Module not found")
                return super().parse_url_path(path)

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{handler_cls.__name__}"
    Guarded.__module__ = __name__
    return Guarded


def _rules(router) -> list:
    out = []
    for rule in getattr(router, "rules", []):
        out.append(rule)
        if hasattr(rule.target, "rules"):
            out.extend(_rules(rule.target))
    return out


def route_table(tornado_app) -> list[tuple[str, type]]:
    """``(pattern, handler class)`` of every route of a tornado application."""
    table = []
    for rule in _rules(tornado_app.wildcard_router):
        if isinstance(rule.target, type):
            regex = getattr(rule.matcher, "regex", None)
            table.append((regex.pattern if regex is not None else str(rule.matcher), rule.target))
    return table


def guard_routes(tornado_app, auth=None) -> list[tuple[str, type]]:
    """Wrap the handler of every route of ``tornado_app`` (see the module docstring).

    Parameters
    ----------
    tornado_app : tornado.web.Application
        The built bokeh server's application (``server._tornado``).
    auth : widgets.dashboard.auth.DashboardAuth, optional
        The login in force; None (loopback without users) adds only the headers and the
        component allow-list.

    Returns
    -------
    list of (str, type)
        The route table after wrapping.
    """
    from tornado.web import RequestHandler

    user_of = auth.user_from_handler if auth is not None else None
    public = {auth.login_url, auth.logout_url} if auth is not None else set()
    login_url = auth.login_url if auth is not None else "/login"
    for rule in _rules(tornado_app.wildcard_router):
        target = rule.target
        if not (isinstance(target, type) and issubclass(target, RequestHandler)):
            continue
        if target.__module__ == __name__:
            continue  # already guarded
        regex = getattr(rule.matcher, "regex", None)
        path = regex.pattern.rstrip("$") if regex is not None else ""
        rule.target = _guarded(target, user_of, path in public, login_url)
    return route_table(tornado_app)
