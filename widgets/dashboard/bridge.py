"""Panel twins of the lab's anywidgets, and the bridge that keeps a twin and its widget equal.

The widgets' ESM front ends run in the browser as Panel ``AnyWidgetComponent`` twins
(:func:`panel_twin`), and a :class:`TraitBridge` keeps each twin's parameters and its widget's
traits equal, so all the logic stays in the widgets and the models. Only what a front end's own
code writes is taken from the page (:func:`frontend_writes`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from deeplesion_lab.errors import LabError

__all__ = ["TraitBridge", "frontend_writes", "panel_twin", "synced_traits"]

log = logging.getLogger("deeplesion_lab.dashboard")

_TWINS: dict[tuple[type, tuple], type] = {}

def _twin_param(trait):
    import param
    import traitlets as t

    default = trait.default()
    if isinstance(trait, t.Bytes):
        return param.Bytes(default=default or b"")
    if isinstance(trait, t.Bool):
        return param.Boolean(default=bool(default))
    if isinstance(trait, t.Int):
        return param.Integer(default=default, allow_None=True)
    if isinstance(trait, t.Float):
        return param.Number(default=default, allow_None=True)
    if isinstance(trait, t.Unicode):
        return param.String(default=default or "")
    if isinstance(trait, t.List):
        return param.List(default=list(default or []))
    if isinstance(trait, t.Dict):
        return param.Dict(default=dict(default or {}))
    return param.Parameter(default=default)


def frontend_writes(esm: str) -> tuple[str, ...]:
    """The names an ESM front end writes (``model.set("name", ...)``); a template name such
    as ``show_${key}`` gives the prefix ``show_*``."""
    names = set()
    for _q, name in re.findall(r"model\.set\(\s*([\"'`])(.*?)\1", esm):
        if "${" in name:
            prefix = name.split("${", 1)[0]
            if prefix:
                names.add(prefix + "*")
        else:
            names.add(name)
    return tuple(sorted(names))


def _writable(name: str, allowed: tuple[str, ...]) -> bool:
    return any(name == a or (a.endswith("*") and name.startswith(a[:-1])) for a in allowed)


def synced_traits(widget_cls) -> dict:
    """The synced traits a widget class adds to ``anywidget.AnyWidget``."""
    import anywidget

    base = set(anywidget.AnyWidget.class_traits(sync=True))
    return {
        k: v
        for k, v in widget_cls.class_traits(sync=True).items()
        if k not in base and not k.startswith("_")
    }


def panel_twin(widget_cls) -> type:
    """A ``panel.custom.AnyWidgetComponent`` class with the same front end as ``widget_cls``.

    Every synced trait becomes a parameter of the same name and type, and the ESM file is the
    widget's own (``widget_cls._esm``), with its style sheet (``widget_cls._css``) as the
    twin's ``_stylesheets``.

    Raises
    ------
    LabError
        When a trait has the name of one of Panel's own parameters (``visible``, ``width``...):
        the twin could not tell the widget's value from Panel's layout setting.
    """
    import panel as pn

    traits = synced_traits(widget_cls)
    key = (widget_cls, tuple(sorted(traits)))
    if key in _TWINS:
        return _TWINS[key]
    clash = sorted(set(traits) & set(pn.custom.AnyWidgetComponent.param))
    if clash:
        raise LabError(
            f"{widget_cls.__name__}: trait(s) {', '.join(clash)} clash with Panel parameters "
            "of the same name; rename them in the widget and its ESM"
        )
    esm = widget_cls._esm
    source = Path(esm).read_text(encoding="utf-8") if isinstance(esm, Path) else str(esm)
    attrs: dict = {"__module__": __name__, "__doc__": f"Panel twin of {widget_cls.__name__}."}
    for name, trait in traits.items():
        attrs[name] = _twin_param(trait)
    attrs["_esm"] = source
    css = getattr(widget_cls, "_css", None)
    if isinstance(css, str) and css.strip():
        # raw CSS (not a file path), so no request for it reaches the component route
        attrs["_stylesheets"] = [css]
    attrs["_frontend_writes"] = frontend_writes(source)
    cls = type(f"Panel{widget_cls.__name__}", (pn.custom.AnyWidgetComponent,), attrs)
    _TWINS[key] = cls
    return cls


def _plain(value):
    """A JSON-friendly copy (lists/dicts copied so params and traits never share objects)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class TraitBridge:
    """Keep a Panel twin's parameters and an anywidget's traits equal, both ways.

    Parameters
    ----------
    widget : anywidget.AnyWidget
        The widget holding the logic (its observers react to front-end changes).
    component : panel.custom.AnyWidgetComponent
        Its twin from :func:`panel_twin`, shown in the page.
    guard : callable, optional
        ``guard(name, value) -> bool`` called before a front-end change reaches the widget;
        ``False`` drops it (used to refuse writes the user's role does not allow).

    Only the parameters the front end's own code writes (``component._frontend_writes``) are
    taken from the page; a change of any other (a forged one) is dropped and undone.
    """

    def __init__(self, widget, component, guard: Callable[[str, object], bool] | None = None):
        self.widget = widget
        self.component = component
        self.guard = guard
        self.names = list(synced_traits(type(widget)))
        component.param.update({n: _plain(getattr(widget, n)) for n in self.names})
        widget.observe(self._to_component, names=self.names)
        self._watcher = component.param.watch(self._to_widget, self.names)

    def _to_component(self, change) -> None:
        name = change["name"]
        new = _plain(change["new"])
        if getattr(self.component, name) != new:
            self.component.param.update({name: new})

    def _to_widget(self, *events) -> None:
        import panel as pn

        allowed = getattr(self.component, "_frontend_writes", None)
        with pn.io.hold():
            for ev in events:
                name = ev.name
                current = getattr(self.widget, name)
                if allowed is not None and not _writable(ev.name, allowed):
                    if ev.new != _plain(current):
                        log.warning(
                            "refused a front-end write of %r (not written by the page)", name
                        )
                        self.component.param.update({name: _plain(current)})
                    continue
                if self.guard is not None and not self.guard(name, ev.new):
                    continue
                try:
                    if getattr(self.widget, name) != ev.new:
                        setattr(self.widget, name, _plain(ev.new))
                except LabError as exc:  # a bad value from the page: report, do not crash
                    log.warning("front end set %s to a bad value: %s", name, exc)
                except Exception:  # keep the session alive, but say what broke
                    log.exception("front-end change of %s failed", name)

    def close(self) -> None:
        self.widget.unobserve(self._to_component, names=self.names)
        self.component.param.unwatch(self._watcher)
