"""VolumeView in a real browser with the network blocked: JupyterLab on loopback + chromium.

Every request the page makes to a host other than 127.0.0.1/localhost is aborted (Playwright
``page.route``) and recorded; the test asserts that the route really blocks (a probe fetch to a
CDN fails), that the four panels render, that the box is drawn on the key slice, that the wheel
moves the cursor, and times a new lesion from the front end's request to the screen. The
screenshot goes to ``test-artifacts/volume_view.png``.
"""

from __future__ import annotations

import contextlib
import io
import json
from urllib.parse import urlparse

import numpy as np
import pytest
from widgets_fixtures import (
    CHROMIUM_ARGS,
    chromium_page,
    jupyterlab,
    make_tiny_run,
    need_chromium,
    notebook,
    open_notebook,
)

pytestmark = pytest.mark.browser

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
# WebGL2 through SwiftShader where this chromium offers it; the view falls back to the CPU if not
ARGS = [*CHROMIUM_ARGS, "--enable-unsafe-swiftshader", "--use-angle=swiftshader"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    need_chromium()
    return make_tiny_run(tmp_path_factory.mktemp("volume_browser"), source="demo", n_patients=2,
                         size=512, seed=3)


def _pick(tiny):
    """Two lesions of different series, the first with the most slices."""
    from deeplesion_lab.manifest import read_manifest

    m = read_manifest(tiny.manifest)
    m = m.assign(n=m["slice_end"] - m["slice_start"]).sort_values("n", ascending=False)
    first = m.iloc[0]
    other = m[m["file_name"].str[:12] != first["file_name"][:12]].iloc[0]
    return str(first["lesion_id"]), str(other["lesion_id"])


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    first, _ = _pick(tiny)
    root = tmp_path_factory.mktemp("volume_lab_root")
    src = (
        "from widgets.volume_view import VolumeView\n"
        f"v = VolumeView(r'{tiny.run_dir}', {first!r}, canvas_size=300)\n"
        "v"
    )
    (root / "volume.ipynb").write_text(json.dumps(notebook(src)))
    _, other = _pick(tiny)
    lab = (
        "from widgets import LesionLab\n"
        f"lab = LesionLab(r'{tiny.run_dir}', user='volume-tester', size=360)\n"
        "lab",
        "lab.volume_panel.selected_index = 0  # open the 3-D panel",
        f"lab.show_lesion({other!r})  # a selection in the lab reaches the open panel",
    )
    (root / "lab.ipynb").write_text(json.dumps(notebook(*lab)))
    with jupyterlab(root) as url:
        yield url


@pytest.fixture(scope="module")
def pw():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@contextlib.contextmanager
def _offline_page(p, url: str, args: list[str], name: str, nb: str = "volume.ipynb"):
    """Chromium on a notebook with every non-loopback request aborted (and recorded)."""
    with chromium_page(p, name, width=1000, height=1000, args=args) as pg:
        blocked: list[str] = []

        def gate(route):
            host = urlparse(route.request.url).hostname or ""
            if host in LOOPBACK:
                route.continue_()
            else:
                blocked.append(route.request.url)
                route.abort("internetdisconnected")

        pg.route("**/*", gate)
        try:
            open_notebook(pg, url, nb, wait_for=".dvv canvas")
            pg.wait_for_function(
                "() => { const v = document.querySelector('.dvv'); return v && "
                "Number(v.parentElement.dataset.volumeSerial) >= 1 && "
                "Number(v.parentElement.dataset.renders) > 0 }",
                timeout=60_000,
            )
        except Exception as exc:
            raise AssertionError(f"VolumeView did not render ({exc})") from None
        pg.blocked = blocked
        yield pg


@pytest.fixture(scope="module")
def page(pw, server, tiny):
    with _offline_page(pw, server, ARGS, "volume_view") as pg:
        pg.lesions = _pick(tiny)
        yield pg


def _content(png: bytes, tol: int = 24) -> float:
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return float((a.max(axis=2) > tol).mean())


def test_network_is_really_blocked(page):
    res = page.evaluate(
        "() => fetch('https://cdn.jsdelivr.net/npm/itk-vtk-viewer/package.json')"
        ".then(() => 'loaded', (e) => 'failed: ' + e)"
    )
    assert res.startswith("failed"), res
    assert any("cdn.jsdelivr.net" in u for u in page.blocked)


def test_four_panels_render_offline(page):
    el = page.locator(".dvv").first.locator("xpath=..")
    for plane, least in (("axial", 0.2), ("coronal", 0.02), ("sagittal", 0.02), ("3d", 0.01)):
        shot = page.locator(f".dvv-panel[data-plane='{plane}']").first.screenshot()
        assert _content(shot) > least, f"the {plane} panel is (nearly) blank"
    assert el.get_attribute("data-renderer") in ("webgl2", "cpu")
    # the cursor starts on the key slice, where the box is drawn solid
    assert page.locator(".dvv-panel[data-plane='axial']").first.get_attribute("data-on-box") == "true"
    assert not page.page_errors, page.page_errors
    print("renderer:", el.get_attribute("data-renderer"), "draw ms:", el.get_attribute("data-last-draw-ms"))


def test_wheel_moves_the_axial_plane(page):
    axial = page.locator(".dvv-panel[data-plane='axial']").first
    before = axial.locator(".dvv-lab").inner_text()
    axial.hover()
    page.mouse.wheel(0, 120)
    page.wait_for_function(
        "b => document.querySelector(\".dvv-panel[data-plane='axial'] .dvv-lab\").textContent !== b",
        arg=before, timeout=5_000,
    )
    assert axial.get_attribute("data-on-box") == "false"  # off the key slice: box dashed
    page.mouse.wheel(0, -120)
    page.wait_for_function(
        "b => document.querySelector(\".dvv-panel[data-plane='axial'] .dvv-lab\").textContent === b",
        arg=before, timeout=5_000,
    )


def test_a_new_lesion_reaches_the_screen(page):
    _, other = page.lesions
    el = page.locator(".dvv").first.locator("xpath=..")
    page.evaluate("id => document.querySelector('.dvv').parentElement.dvvRequest(id)", other)
    page.wait_for_function(
        "id => { const e = document.querySelector('.dvv').parentElement; "
        "return e.dataset.lesionId === id && e.dataset.lastLatencyMs !== undefined }",
        arg=other, timeout=15_000,
    )
    assert other in page.locator(".dvv-title").first.inner_text()
    assert float(el.get_attribute("data-last-latency-ms")) > 0
    assert not page.page_errors, page.page_errors


def test_without_webgl_the_cpu_projection_renders(pw, server):
    with _offline_page(pw, server, [*CHROMIUM_ARGS, "--disable-webgl"], "volume_view_cpu") as pg:
        el = pg.locator(".dvv").first.locator("xpath=..")
        assert el.get_attribute("data-renderer") == "cpu"
        shot = pg.locator(".dvv-panel[data-plane='3d']").first.screenshot()
        assert _content(shot) > 0.01, "the CPU projection is (nearly) blank"
        assert not pg.page_errors, pg.page_errors


def test_lesion_lab_panel_follows_the_selection(pw, server, tiny):
    _, other = _pick(tiny)
    with _offline_page(pw, server, ARGS, "volume_in_lesion_lab", nb="lab.ipynb") as pg:
        pg.wait_for_function(
            "id => document.querySelector('.dvv').parentElement.dataset.lesionId === id",
            arg=other, timeout=60_000,
        )
        pg.locator(".dvv").first.scroll_into_view_if_needed()
        shot = pg.locator(".dvv-panel[data-plane='axial']").first.screenshot()
        assert _content(shot) > 0.2, "the axial panel in LesionLab is (nearly) blank"
        assert other in pg.locator(".dvv-title").first.inner_text()
        assert other in pg.locator(".dlv-title").first.inner_text()  # the 2-D viewer agrees
        el = pg.locator(".dvv").first.locator("xpath=..")
        # it was first drawn empty (closed panel): WebGL2 must still be used where the page has it
        webgl2 = pg.evaluate("() => !!document.createElement('canvas').getContext('webgl2')")
        assert el.get_attribute("data-renderer") == ("webgl2" if webgl2 else "cpu")
        assert not pg.page_errors, pg.page_errors
