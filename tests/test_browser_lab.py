"""LesionLab in a real browser: JupyterLab on loopback, Playwright driving Debian's chromium.

A temporary root holds a notebook that shows ``LesionLab`` on a tiny run (see
``tests/widgets_fixtures.py``). The tests run its cells, check that the slice canvas and the map
render, click a map point and see the viewer switch to that lesion, box-select points and
relabel them from the correction panel, then read the label store from this process to see the
change. A screenshot goes to ``test-artifacts/lesion_lab.png``.

Issue 21 (what a newcomer met): the annotated box in the legend's colour, the predictions of each
model and the score threshold on candidates, a click that selects and drops its tooltip, the
1-9/u keys, the simulated annotator kept out of the history, and figures that appear.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from widgets_fixtures import (
    ARTIFACTS,
    chromium_page,
    jupyterlab,
    make_tiny_run,
    need_chromium,
    notebook,
    open_notebook,
)

pytestmark = pytest.mark.browser

USER = "browser-tester"
SIZE = 440  # map and viewer side in CSS px (the notebook below asks for it)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    need_chromium()
    return make_tiny_run(tmp_path_factory.mktemp("browser_run"), source="demo")


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    import json

    import pandas as pd

    from deeplesion_lab.lesion_types import COARSE_TYPES
    from deeplesion_lab.pipeline import simulate_corrections
    from widgets.models import LabModel

    # a demo run's pipeline corrects some labels as a simulated annotator (issue 21, bug 5)
    LabModel(tiny.run_dir, user="pipeline").labels.close()
    code = {v: k for k, v in COARSE_TYPES.items()}
    truth = tmp_path_factory.mktemp("truth") / "truth.parquet"
    pd.DataFrame({"lesion_id": list(tiny.true_label), "annotated": True,
                  "coarse_type": [code[v] for v in tiny.true_label.values()]}).to_parquet(truth)
    tiny.n_simulated = simulate_corrections(tiny.run_dir, truth, 0.5, "demo-annotator", 0)
    root = tmp_path_factory.mktemp("lab_root")
    src = (
        "from widgets import LesionLab\n"
        f"lab = LesionLab(r'{tiny.run_dir}', user={USER!r}, size={SIZE})\n"
        "lab"
    )
    # a second view of the same map model, drawn without WebGL (the 2-D canvas fallback)
    src2 = (
        "from widgets import EmbeddingMap\n"
        "EmbeddingMap(lab.model.map, renderer='canvas2d', canvas_size=260, title='2-D canvas view')"
    )
    # figures as a notebook draws them: matplotlib inline and plotly (offline extension)
    src3 = (
        "import matplotlib.pyplot as plt\nimport plotly.express as px\n"
        "plt.plot([0, 1], [0, 1])\npx.scatter(x=[0, 1], y=[1, 0]).show()"
    )
    (root / "lab.ipynb").write_text(json.dumps(notebook(src, src2, src3)))
    with jupyterlab(root) as url:
        yield url


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p, chromium_page(p, "lesion_lab", width=1360, height=1640) as pg:
        try:
            open_notebook(pg, server, "lab.ipynb", wait_for=".dlv canvas")
            pg.wait_for_selector(".dlm canvas", timeout=60_000)
            pg.wait_for_function(
                "() => { const v = document.querySelector('.dlv'); return v && "
                "v.parentElement.dataset.imageSlice !== undefined && "
                "Number(v.parentElement.dataset.renders) > 0 }",
                timeout=60_000,
            )
        except Exception as exc:
            raise AssertionError(f"LesionLab did not render ({exc})") from None
        yield pg


def _content_pixels(png: bytes, background=(0, 0, 0), tol: int = 24) -> float:
    """Fraction of pixels that differ from ``background`` by more than ``tol``."""
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return float((np.abs(a - np.array(background)).max(axis=2) > tol).mean())


def _map_points(tiny):
    """Screen position (CSS px, relative to the stage) of every map point, as the front end
    places them at zoom 1."""
    from widgets.data import LabData

    data = LabData.from_run(tiny.run_dir)
    xy = data.point_xy().astype(np.float64)
    lo, hi = xy.min(0), xy.max(0)
    pad = (hi - lo) * 0.04
    lo, hi = lo - pad, hi + pad
    s = min(SIZE / (hi[0] - lo[0]), SIZE / (hi[1] - lo[1]))
    c = (lo + hi) / 2
    sx = SIZE / 2 + (xy[:, 0] - c[0]) * s
    sy = SIZE / 2 - (xy[:, 1] - c[1]) * s
    ids = [str(x) for x in data.lesion_ids[data.point_rows]]
    return ids, np.stack([sx, sy], 1)


def test_slice_and_map_render(page):
    viewer = page.locator(".dlv-stage canvas").first
    assert _content_pixels(viewer.screenshot()) > 0.2, "the slice canvas is (nearly) blank"
    stage = page.locator(".dlm-stage").first
    assert _content_pixels(stage.screenshot(), background=(15, 16, 19)) > 0.002, "map is blank"
    renderer = page.locator(".dlm").first.evaluate("e => e.parentElement.dataset.renderer")
    assert renderer in ("webgl", "canvas2d")
    page.wait_for_selector(".dlm >> nth=1", timeout=60_000)
    second = page.locator(".dlm").nth(1)
    assert second.evaluate("e => e.parentElement.dataset.renderer") == "canvas2d"
    second.evaluate("e => e.scrollIntoView()")
    shot = second.locator(".dlm-stage").screenshot()
    assert _content_pixels(shot, background=(15, 16, 19)) > 0.002, "the 2-D canvas map is blank"
    assert not page.page_errors, page.page_errors


def test_wheel_scrolls_the_series(page):
    el = page.locator(".dlv").first.locator("xpath=..")
    before = int(el.get_attribute("data-image-slice"))
    n_slices = page.locator(".dlv-slider input").first.evaluate("e => Number(e.max) + 1")
    assert n_slices > 1
    stage = page.locator(".dlv-stage").first
    stage.hover()
    direction = -1 if before > 0 and page.locator(".dlv-slider input").first.evaluate(
        "e => Number(e.value) === Number(e.max)") else 1
    page.mouse.wheel(0, 120 * direction)
    page.wait_for_function(
        "([b]) => Number(document.querySelector('.dlv').parentElement.dataset.imageSlice) !== b",
        arg=[before], timeout=10_000,
    )
    after = int(el.get_attribute("data-image-slice"))
    assert after != before
    # the round trip (request -> new slice on screen) was measured by the front end
    page.wait_for_function(
        "() => document.querySelector('.dlv').parentElement.dataset.lastLatencyMs !== undefined",
        timeout=5_000,
    )
    assert float(el.get_attribute("data-last-latency-ms")) > 0
    stage.focus()
    page.keyboard.press("k")  # back to the key slice
    page.wait_for_function(
        "([b]) => Number(document.querySelector('.dlv').parentElement.dataset.imageSlice) === b",
        arg=[before], timeout=10_000,
    )


def test_click_point_shows_lesion(page, tiny):
    ids, pts = _map_points(tiny)
    title = page.locator(".dlv-title").first
    before = title.inner_text()
    # a point far (> 12 px) from all others, whose lesion is not the one shown
    d = np.linalg.norm(pts[:, None] - pts[None], axis=2) + np.eye(len(pts)) * 1e9
    cands = [i for i in np.argsort(-d.min(1)) if ids[i] not in before]
    i = int(cands[0])
    assert d[i].min() > 12
    box = page.locator(".dlm-stage").first.bounding_box()
    page.mouse.click(box["x"] + pts[i, 0], box["y"] + pts[i, 1])
    page.wait_for_function(
        "id => document.querySelector('.dlv-title').textContent.includes(id)", arg=ids[i],
        timeout=15_000,
    )
    assert ids[i] in title.inner_text()


def test_box_select_and_relabel_reaches_store(page, tiny):
    from deeplesion_lab.labels import LabelStore

    ids, pts = _map_points(tiny)
    # a box around the lower-left quarter of the points
    x0, y0 = np.percentile(pts[:, 0], 2) - 4, np.percentile(pts[:, 1], 50)
    x1, y1 = np.percentile(pts[:, 0], 50), np.percentile(pts[:, 1], 98) + 4
    inside = [ids[k] for k in range(len(ids))
              if x0 <= pts[k, 0] <= x1 and y0 <= pts[k, 1] <= y1]
    assert len(inside) >= 2
    page.locator(".dlm button", has_text="Box").first.click()
    box = page.locator(".dlm-stage").first.bounding_box()
    page.mouse.move(box["x"] + x0, box["y"] + y0)
    page.mouse.down()
    for f in np.linspace(0.2, 1.0, 6):
        page.mouse.move(box["x"] + x0 + (x1 - x0) * f, box["y"] + y0 + (y1 - y0) * f)
    page.mouse.up()
    page.wait_for_function(
        f"() => document.querySelector('.dlc b') && "
        f"document.querySelector('.dlc b').textContent === '{len(inside)}'",
        timeout=15_000,
    )
    target = "kidney"
    page.locator(".dlc select").first.select_option(target)
    page.locator(".dlc button", has_text="Relabel selection").first.click()
    page.wait_for_function(
        "() => (document.querySelector('.dlc-status') || {}).textContent?.startsWith('relabelled')",
        timeout=15_000,
    )
    store = LabelStore.open(Path(tiny.run_dir) / "labels.sqlite")
    cur = store.current_labels().set_index("lesion_id")["label"]
    assert all(cur[i] == target for i in inside)
    hist = store.history(user=USER)
    assert len(hist) >= 1
    # the map recoloured: the legend counts the new label
    page.wait_for_function(
        "n => [...document.querySelectorAll('.dlm-chip')].some(c => c.textContent.startsWith('kidney') "
        "&& Number(c.textContent.split(' ').pop().replace(/,/g, '')) >= n)",
        arg=len(inside), timeout=10_000,
    )


# issue 21 ------------------------------------------------------------------------------------------
def _viewer_state(page, key):
    return page.locator(".dlv").first.evaluate(f"e => e.parentElement.dataset.{key}")


def _show(page, tiny, lesion_id):
    """Click the lesion's map point (it is then shown and selected)."""
    ids, pts = _map_points(tiny)
    i = ids.index(lesion_id)
    box = page.locator(".dlm-stage").first.bounding_box()
    page.locator(".dlm").first.evaluate("e => e.scrollIntoView()")
    box = page.locator(".dlm-stage").first.bounding_box()
    page.mouse.click(box["x"] + pts[i, 0], box["y"] + pts[i, 1])
    page.wait_for_function(
        "id => document.querySelector('.dlv-title').textContent.includes(id)", arg=lesion_id,
        timeout=15_000,
    )


def _isolated_points(tiny, min_px=12):
    ids, pts = _map_points(tiny)
    d = np.linalg.norm(pts[:, None] - pts[None], axis=2) + np.eye(len(pts)) * 1e9
    return [ids[i] for i in np.argsort(-d.min(1)) if d[i].min() > min_px]


def test_click_selects_the_point_and_hides_its_tooltip(page, tiny):
    lid = _isolated_points(tiny)[1]
    ids, pts = _map_points(tiny)
    box = page.locator(".dlm-stage").first.bounding_box()
    i = ids.index(lid)
    page.mouse.move(box["x"] + pts[i, 0] + 1, box["y"] + pts[i, 1] + 1)
    page.wait_for_function("() => getComputedStyle(document.querySelector('.dlm-tip')).display "
                           "!== 'none'", timeout=10_000)
    page.mouse.click(box["x"] + pts[i, 0], box["y"] + pts[i, 1])
    page.wait_for_function(
        "() => document.querySelector('.dlc b') && document.querySelector('.dlc b').textContent "
        "=== '1'", timeout=15_000,
    )
    assert page.locator(".dlm").first.evaluate("e => e.parentElement.dataset.selected") == "1"
    assert page.locator(".dlm-tip").first.evaluate("e => getComputedStyle(e).display") == "none"


def test_annotated_box_is_drawn_in_the_legends_colour(page, tiny):
    from widgets.data import LabData

    lid = _isolated_points(tiny)[2]
    _show(page, tiny, lid)
    for key in ("predictions", "candidates"):  # only the annotations on the image
        cb = page.locator(".dlv-legend label", has_text={"predictions": "predicted",
                                                          "candidates": "mined"}[key]).first
        if cb.locator("input").is_checked():
            cb.locator("input").uncheck()
    page.wait_for_function("() => document.querySelector('.dlv').parentElement.dataset"
                           ".shownPredictions === '0'", timeout=10_000)
    legend = page.locator(".dlv-legend .dlv-sw").first.evaluate(
        "e => getComputedStyle(e).borderTopColor")
    want = np.array([int(v) for v in legend[legend.index("(") + 1:-1].split(",")[:3]])
    data = LabData.from_run(tiny.run_dir)
    row = data.row(lid)
    ih, iw = data.slice_hu(str(row["file_name"]), int(row["key_slice_index"])).shape
    shot = page.locator(".dlv-stage canvas").first.screenshot()
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(int)
    s = min(SIZE / iw, SIZE / ih)
    x = SIZE / 2 + ((row["bbox_x1"] + row["bbox_x2"]) / 2 - iw / 2) * s
    y = SIZE / 2 + (row["bbox_y2"] - ih / 2) * s  # the bottom edge (the tag sits on the top)
    patch = a[int(y) - 3:int(y) + 4, int(x) - 6:int(x) + 7]
    assert (np.abs(patch - want).max(axis=2) < 40).any(), (
        f"no pixel of the legend's colour {want} on the annotated box's edge")
    for key in ("predictions", "candidates"):
        cb = page.locator(".dlv-legend label", has_text={"predictions": "predicted",
                                                          "candidates": "mined"}[key]).first
        cb.locator("input").check()


def test_every_models_predictions_and_the_threshold_on_candidates(page, tiny):
    from widgets.data import LabData

    les = LabData.from_run(tiny.run_dir).lesions
    test_ids = set(les.loc[les["split_name"] == "test", "lesion_id"].astype(str))
    lid = next(i for i in _isolated_points(tiny, 6) if i in test_ids)
    _show(page, tiny, lid)
    sel = page.locator(".dlv select.dlv-model").first
    assert sorted(sel.locator("option").all_inner_texts()) == ["pseudo", "single"]
    sel.select_option("single")
    page.wait_for_function("() => document.querySelector('.dlv').parentElement.dataset"
                           ".shownPredictions === '1'", timeout=10_000)
    sel.select_option("pseudo")
    page.wait_for_function("() => document.querySelector('.dlv').parentElement.dataset"
                           ".shownPredictions === '1'", timeout=10_000)  # 0.9 shown, 0.2 not
    assert int(_viewer_state(page, "shownCandidates")) >= 1  # scores 0.7 >= 0.5
    thr = page.locator(".dlv-bar input[type=range]").first
    thr.evaluate("e => { e.value = '0.8'; e.dispatchEvent(new Event('input')); }")
    page.wait_for_function("() => document.querySelector('.dlv').parentElement.dataset"
                           ".shownCandidates === '0'", timeout=10_000)
    thr.evaluate("e => { e.value = '0.5'; e.dispatchEvent(new Event('input')); }")


def test_keys_relabel_the_selection_and_undo(page, tiny):
    from deeplesion_lab.labels import LabelStore

    lid = _isolated_points(tiny)[3]
    before = LabelStore.open(Path(tiny.run_dir) / "labels.sqlite").current_labels().set_index(
        "lesion_id")["label"][lid]
    _show(page, tiny, lid)  # shown and selected
    page.wait_for_function("() => document.querySelector('.dlc b').textContent === '1'",
                           timeout=15_000)
    help_text = page.locator(".dlc-keys").first.inner_text()
    assert "1" in help_text and "9" in help_text and "undo" in help_text
    options = page.locator(".dlc select").first.locator("option").all()
    second = next(o.get_attribute("value") for o in options[1:2])
    if second == before:  # relabel to a class it does not have yet: use key 3
        second, key = options[2].get_attribute("value"), "3"
    else:
        key = "2"
    assert options[1].inner_text().startswith("2 · ")
    n_cells = page.locator(".jp-CodeCell").count()
    page.keyboard.press(key)
    page.wait_for_function(
        "() => (document.querySelector('.dlc-status') || {}).textContent?.startsWith('relabelled 1')",
        timeout=15_000)
    store = LabelStore.open(Path(tiny.run_dir) / "labels.sqlite")
    assert store.current_labels().set_index("lesion_id")["label"][lid] == second
    page.keyboard.press("u")
    page.wait_for_function(
        "() => (document.querySelector('.dlc-status') || {}).textContent?.startsWith('undone')",
        timeout=15_000)
    assert store.current_labels().set_index("lesion_id")["label"][lid] == before
    # JupyterLab's own command-mode keys did not fire (1-9 would turn the cell into a heading)
    assert page.locator(".jp-CodeCell").count() == n_cells


def test_history_leaves_out_the_simulated_annotator(page, tiny):
    assert tiny.n_simulated >= 1
    page.locator(".dlc-tab", has_text="History").first.click()
    note = page.locator(".dlc-note").first
    page.wait_for_function("() => document.querySelector('.dlc-note').offsetParent !== null",
                           timeout=10_000)
    assert "demo-annotator" in note.inner_text() and "simulated" in note.inner_text()
    meta = page.locator(".dlc-page.on .dlc-h .meta").all_inner_texts()
    assert not any(m.startswith("demo-annotator") for m in meta), meta
    note.locator("input").check()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.dlc-page.on .dlc-h .meta')].some("
        "m => m.textContent.startsWith('demo-annotator'))", timeout=10_000)
    note.locator("input").uncheck()
    page.locator(".dlc-tab", has_text="Correct").first.click()


def test_figures_appear_in_jupyterlab(page):
    page.wait_for_selector(".jp-RenderedImage img", timeout=60_000)
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)


def test_grid_click_shows_and_selects_and_false_positives_open_in_the_viewer(page, tiny):
    grid = page.locator(".dlgr").first
    grid.evaluate("e => e.scrollIntoView()")
    page.wait_for_selector(".dlgr-cell canvas", timeout=30_000)
    cell = page.locator(".dlgr-cell").nth(2)
    lid = cell.get_attribute("data-lesion-id")
    cell.click()
    page.wait_for_function(
        "id => document.querySelector('.dlv-title').textContent.includes(id)", arg=lid,
        timeout=15_000)
    page.wait_for_function(
        "() => document.querySelector('.dlm').parentElement.dataset.selected === '1'",
        timeout=15_000)
    page.wait_for_function(
        "id => document.querySelector(`.dlgr-cell.sel[data-lesion-id='${id}']`) !== null",
        arg=lid, timeout=15_000)
    # click-through from the FROC: the pseudo-label model's false positives at 4 FP / image
    grid.locator("select").first.select_option("false positives")
    page.wait_for_function(
        "() => document.querySelector('.dlgr').parentElement.dataset.source === 'false positives'"
        " && document.querySelectorAll('.dlgr-cell').length > 0", timeout=30_000)
    grid.locator("select[title='whose detections']").select_option("pseudo")
    page.wait_for_timeout(500)
    fp = page.locator(".dlgr-cell").first
    fp_lesion = fp.get_attribute("data-lesion-id")
    fp.click()
    page.wait_for_function(
        "id => document.querySelector('.dlv-title').textContent.includes(id)", arg=fp_lesion,
        timeout=15_000)
    assert page.locator(".dlv select.dlv-model").first.input_value() == "pseudo"
    # the viewer draws the model's boxes down to the operating point (the 0.2 false positives)
    page.wait_for_function("() => Number(document.querySelector('.dlv').parentElement.dataset"
                           ".shownPredictions) >= 2", timeout=10_000)
    grid.evaluate("e => e.scrollIntoView()")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "lesion_lab_grid.png"), full_page=True)
    grid.locator("select").first.select_option("map")


def test_grid_tags_the_selection_filters_by_tag_and_keeps_views(page, tiny):
    """Issue 21: tags on the selected lesions (label-store events), the tag filter, saved views."""
    from deeplesion_lab.labels import LabelStore

    grid = page.locator(".dlgr").first
    grid.evaluate("e => e.scrollIntoView()")
    grid.locator("select").first.select_option("map")
    page.wait_for_function(  # the lesions (an earlier test may have left the FROC cases)
        "() => { const g = document.querySelector('.dlgr'); return g.parentElement.dataset.source"
        " === 'map' && g.querySelectorAll('.dlgr-cell canvas').length > 1 && "
        "!g.querySelector('.dlgr-cell .dlgr-cap').textContent.includes('false positive') }",
        timeout=30_000)
    cells = page.locator(".dlgr-cell")
    ids = [cells.nth(i).get_attribute("data-lesion-id") for i in (0, 1)]
    cells.nth(0).click()
    cells.nth(1).click(modifiers=["Shift"])
    page.wait_for_function(
        "() => document.querySelector('.dlm').parentElement.dataset.selected === '2'",
        timeout=15_000)
    grid.locator("input[placeholder='tag']").fill("follow-up")
    grid.get_by_role("button", name="Tag", exact=True).click()
    page.wait_for_function(
        "() => document.querySelectorAll('.dlgr-cell .dlgr-tag').length === 2", timeout=15_000)
    assert "tagged 2 lesion(s) follow-up" in grid.locator(".dlgr-ok").inner_text()
    with LabelStore.open(tiny.run_dir / "labels.sqlite") as store:
        tags = store.lesion_tags()
        assert sorted(tags["lesion_id"]) == sorted(ids) and set(tags["tagged_by"]) == {USER}
    grid.locator("select[title='show only the lesions with this tag']").select_option("follow-up")
    page.wait_for_function(
        "() => document.querySelector('.dlgr').parentElement.dataset.total === '2'",
        timeout=15_000)
    grid.locator("input[placeholder='view name']").fill("follow-ups")
    grid.get_by_role("button", name="Save view").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.dlgr select option')].some("
        "o => o.textContent.startsWith('follow-ups · yours (2 sel.)'))", timeout=15_000)
    ARTIFACTS.mkdir(exist_ok=True)
    grid.screenshot(path=str(ARTIFACTS / "lesion_grid_tags.png"))
    # back to every lesion, then the view brings the filter and the selection back
    grid.locator("select[title='show only the lesions with this tag']").select_option("")
    page.wait_for_function(
        "() => document.querySelector('.dlgr').parentElement.dataset.total !== '2'",
        timeout=15_000)
    page.locator(".dlm").first.evaluate("e => e.scrollIntoView()")
    grid.get_by_role("button", name="Load").click()
    page.wait_for_function(
        "() => document.querySelector('.dlgr').parentElement.dataset.total === '2' && "
        "document.querySelectorAll('.dlgr-cell.sel').length === 2", timeout=15_000)
    # Undo takes the tags back (one event), for everyone reading the store
    grid.get_by_role("button", name="Undo").click()
    page.wait_for_function(
        "() => document.querySelector('.dlgr').parentElement.dataset.total === '0'",
        timeout=15_000)
    with LabelStore.open(tiny.run_dir / "labels.sqlite") as store:
        assert store.lesion_tags().empty
        assert store.saved_views()["name"].tolist() == ["follow-ups"]
    grid.locator("select[title='show only the lesions with this tag']").select_option("")
    grid.get_by_role("button", name="Undo").evaluate("b => b.blur()")


def test_per_class_froc_rows_open_their_cases_in_the_viewer(page, tiny):
    """Issue 21: the per-class table of a model's FROC cases links to that class's cases."""
    grid = page.locator(".dlgr").first
    grid.evaluate("e => e.scrollIntoView()")
    grid.locator("select").first.select_option("false positives")
    grid.locator("select[title='whose detections']").select_option("pseudo")
    page.wait_for_selector(".dlgr-cls tr[data-cls]", timeout=30_000)
    button = grid.locator(".dlgr-cls button[data-kind='false positives']:not([disabled])").first
    cls = button.get_attribute("data-cls")
    n = int(button.inner_text())
    button.click()
    page.wait_for_function(
        "([c, n]) => { const g = document.querySelector('.dlgr'); return g.parentElement.dataset"
        ".total === String(n) && g.querySelector(`.dlgr-cls tr.cur[data-cls='${c}']`) !== null }",
        arg=[cls, n], timeout=15_000)
    labels = grid.locator(".dlgr-cell .dlgr-lab").all_inner_texts()
    assert labels and all(t.strip().startswith(cls) for t in labels)
    cell = grid.locator(".dlgr-cell").first
    lid = cell.get_attribute("data-lesion-id")
    cell.click()
    page.wait_for_function(
        "id => document.querySelector('.dlv-title').textContent.includes(id)", arg=lid,
        timeout=15_000)
    # predicted and true boxes: the model's false positive and the annotated lesion
    page.wait_for_function(
        "() => { const d = document.querySelector('.dlv').parentElement.dataset; "
        "return Number(d.shownPredictions) >= 1 && Number(d.shownAnnotations) >= 1 }",
        timeout=10_000)
    grid.evaluate("e => e.scrollIntoView()")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "lesion_grid_classes.png"), full_page=True)
    grid.get_by_role("button", name="all classes").click()
    grid.locator("select").first.select_option("map")


def test_lasso_polygon_selects_the_points_inside(page, tiny):
    """A freehand lasso (the rasterised-mask path of the map's front end) selects the points
    inside the polygon: all those clearly inside, none clearly outside."""
    ids, pts = _map_points(tiny)
    page.locator(".dlm button", has_text="Reset view").first.click()
    page.locator(".dlm button", has_text="Lasso").first.click()
    # the left part of the points, with a wavy right edge (not a box: the polygon path)
    x0, x1 = pts[:, 0].min() - 8, np.percentile(pts[:, 0], 55)
    y0, y1 = pts[:, 1].min() - 8, pts[:, 1].max() + 8
    ys = np.linspace(y0, y1, 30)
    right = np.stack([x1 + 12 * np.sin(ys / 9.0), ys], 1)
    poly = np.concatenate([[[x0, y0]], right, [[x0, y1]]])
    poly = np.clip(poly, 2, SIZE - 2)
    box = page.locator(".dlm-stage").first.bounding_box()
    el = page.locator(".dlm").first.locator("xpath=..")
    page.evaluate("() => { delete document.querySelector('.dlm').parentElement.dataset"
                  ".lastLassoMs; return 1; }")
    page.mouse.move(box["x"] + poly[0, 0], box["y"] + poly[0, 1])
    page.mouse.down()
    for x, y in poly[1:]:
        page.mouse.move(box["x"] + x, box["y"] + y)
    page.mouse.up()
    page.wait_for_function(
        "() => document.querySelector('.dlm').parentElement.dataset.lastLassoMs",
        timeout=15_000)
    a, b = poly, np.roll(poly, -1, axis=0)
    inside = np.zeros(len(pts), bool)
    for (xi, yi), (xj, yj) in zip(a, b, strict=True):  # ray casting
        cross = ((yi > pts[:, 1]) != (yj > pts[:, 1])) & (
            pts[:, 0] < (xj - xi) * (pts[:, 1] - yi) / (yj - yi + 1e-12) + xi)
        inside ^= cross
    ab = b - a
    t = np.clip(((pts[:, None] - a[None]) * ab[None]).sum(2) / (ab ** 2).sum(1)[None], 0, 1)
    edge = np.linalg.norm(pts[:, None] - (a[None] + t[..., None] * ab[None]), axis=2).min(1)
    inner, outer = inside & (edge > 2), inside | (edge <= 2)
    n_sel = int(el.get_attribute("data-selected"))
    assert inner.sum() >= 2, "the lasso should surround some points"
    assert int(inner.sum()) <= n_sel <= int(outer.sum()), (inner.sum(), n_sel, outer.sum())
    # the kernel got the same selection (one uint32 buffer, not a JSON list): its count is in
    # the correction panel, and relabelling it changes the lesions inside, none outside
    page.wait_for_function(
        "n => (document.querySelector('.dlc-sel b') || {}).textContent === String(n)",
        arg=n_sel, timeout=15_000)
    from deeplesion_lab.labels import LabelStore

    target = "bone"
    store = LabelStore.open(Path(tiny.run_dir) / "labels.sqlite")
    try:
        before = set(store.current_labels().query("label == @target")["lesion_id"])
    finally:
        store.close()
    page.locator(".dlc select").first.select_option(target)
    page.locator(".dlc button", has_text="Relabel selection").first.click()
    page.wait_for_function(
        "() => (document.querySelector('.dlc-status') || {}).textContent?.startsWith('relabelled')",
        timeout=15_000)
    store = LabelStore.open(Path(tiny.run_dir) / "labels.sqlite")
    try:
        after = set(store.current_labels().query("label == @target")["lesion_id"])
    finally:
        store.close()
    ids = np.asarray(ids)
    assert set(ids[inner]) <= after, "a lesion inside the lasso was not relabelled"
    assert after - before <= set(ids[outer]), "a lesion outside the lasso was relabelled"
    page.locator(".dlm button", has_text="Clear selection").first.click()


SOFTWARE_GL = r"/swiftshader|llvmpipe|softpipe|software|basic render driver/i"


@pytest.fixture(scope="module")
def bench_page(page):
    """The map's module on its own page of the same browser, fed by the map bench's loopback
    bridge (``bench/bench_map_scale.py``): 20,000 synthetic points, a real label store and
    models; ``globalThis.__fire`` delivers a kernel message, ``__T.sel`` is the last selection
    the page sent."""
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_map_scale import _Bridge, serve
    from bench_widgets import build_big

    from widgets import CorrectionPanel, EmbeddingMap

    def open_map(renderer: str):
        tmp = tempfile.mkdtemp()
        _, store, _, mm, cm = build_big(Path(tmp) / "s.sqlite", n=20_000)
        w = EmbeddingMap(mm, canvas_size=400, renderer=renderer)
        srv = serve(_Bridge(w, CorrectionPanel(cm)), str(EmbeddingMap._esm), np.arange(10),
                    css=EmbeddingMap._css)
        pg = page.context.browser.new_page()
        pg.page_errors = []
        pg.on("pageerror", lambda e: pg.page_errors.append(str(e)))
        pg.goto(f"http://127.0.0.1:{srv.server_address[1]}/")
        pg.wait_for_function("() => globalThis.__T && globalThis.__T.ready", timeout=60_000)
        opened.append((pg, srv, store))
        return pg

    opened: list = []
    yield open_map
    for pg, srv, store in opened:
        pg.close()
        srv.shutdown()
        store.close()


def _counts(pg) -> tuple[int, int]:
    """(full redraws of the points, flag rebuilds) after the next two animation frames."""
    return tuple(pg.evaluate(
        """() => new Promise((res) => requestAnimationFrame(() => requestAnimationFrame(() => {
             const d = document.querySelector('.dlm').parentElement.dataset;
             res([Number(d.renders), Number(d.flagBuilds)]); })))"""))


def test_map_draws_on_the_2d_canvas_when_webgl_is_in_software(bench_page):
    # issue 17: SwiftShader took about 2 s a frame at 1,000,000 points and the page's main
    # thread waited for it (the compositor reads the canvas back); "auto" draws on the 2-D
    # canvas there instead, and on a GPU with WebGL
    pg = bench_page("auto")
    name = pg.evaluate("""() => { const gl = document.createElement('canvas').getContext('webgl');
        if (!gl) return '';
        const e = gl.getExtension('WEBGL_debug_renderer_info');
        return String(gl.getParameter(e ? e.UNMASKED_RENDERER_WEBGL : gl.RENDERER)); }""")
    software = pg.evaluate(f"n => {SOFTWARE_GL}.test(n)", name)
    el = pg.locator(".dlm").first.locator("xpath=..")
    assert el.get_attribute("data-renderer") == ("canvas2d" if software or not name else "webgl"), name
    if software:
        assert el.get_attribute("data-renderer-why") == "software WebGL"
    assert not pg.page_errors, pg.page_errors


@pytest.mark.parametrize("renderer", ["auto", "webgl"])
def test_a_lasso_redraws_the_points_once_and_its_echo_not_at_all(bench_page, renderer):
    pg = bench_page(renderer)
    el = pg.locator(".dlm").first.locator("xpath=..")
    if renderer == "webgl":
        assert el.get_attribute("data-renderer") == "webgl"
    box = pg.locator(".dlm-stage").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    r0, f0 = _counts(pg)
    pg.mouse.move(cx + 120, cy)
    pg.mouse.down()
    for t in np.linspace(0, 2 * np.pi, 30):
        pg.mouse.move(cx + 120 * np.cos(t), cy + 120 * np.sin(t))
    pg.mouse.up()
    pg.wait_for_function("() => globalThis.__T.selAckMs !== undefined", timeout=60_000)
    n_sel = int(el.get_attribute("data-selected"))
    assert n_sel > 1000
    r1, f1 = _counts(pg)
    assert (r1 - r0, f1 - f0) == (1, 1), "a lasso: one flags rebuild and one redraw of the points"
    # the kernel sends the same selection back (an echo): nothing to rebuild or redraw
    pg.evaluate("() => __fire({selection: new DataView(globalThis.__T.sel.slice(0))})")
    assert _counts(pg) == (r1, f1), "the echoed selection redrew the points"
    # another selection from the kernel is drawn, once
    pg.evaluate("() => __fire({selection: new Uint32Array([1, 5, 9]).buffer})")
    assert _counts(pg) == (r1 + 1, f1 + 1)
    assert el.get_attribute("data-selected") == "3"
    # a recolour: classes and codes in one message, one rebuild
    pg.evaluate("""() => __fire({classes: [{name: 'a', color: '#ff0000'},
        {name: 'b', color: '#00ff00'}], codes: new Uint8Array(20000).fill(1).buffer})""")
    assert _counts(pg) == (r1 + 2, f1 + 2)
    assert pg.locator(".dlm-chip").all_inner_texts() == ["b 20,000"]
    assert not pg.page_errors, pg.page_errors
