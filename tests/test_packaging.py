"""The install files agree with each other, and the core stays free of UI imports."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UI_MODULES = {"ipywidgets", "anywidget", "panel", "bokeh", "jupyterlab", "IPython", "playwright",
              "widgets", "traitlets"}


def pins(text: str) -> dict[str, str]:
    out = {}
    for m in re.finditer(r"^\s*-?\s*([A-Za-z0-9_.\-\[\]]+)\s*(==|=)\s*([0-9][^\s#]*)", text, re.M):
        name = re.sub(r"\[.*\]", "", m.group(1)).lower().replace("_", "-")
        out[name] = m.group(3)
    return out


def test_environment_yml_pins_match_requirements() -> None:
    req = pins((REPO / "requirements.txt").read_text())
    env = pins((REPO / "environment.yml").read_text())
    assert req["torch"] == "2.14.1" and req["torchvision"] == "0.29.1"
    for name, version in env.items():
        if name == "python":
            continue
        assert name in req, f"{name} pinned in environment.yml but not in requirements.txt"
        assert req[name] == version, (name, req[name], version)
    missing = set(req) - set(env) - {"setuptools"}
    assert not missing, f"requirements.txt pins missing from environment.yml: {missing}"


def test_core_package_has_no_ui_imports() -> None:
    offenders = []
    for path in (REPO / "deeplesion_lab").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for n in names:
                if n.split(".")[0] in UI_MODULES:
                    offenders.append(f"{path.relative_to(REPO)}: {n}")
    assert not offenders, offenders


def test_ci_calls_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make test" in ci
    assert "make test" in readme and "make lab" in readme
