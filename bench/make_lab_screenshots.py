"""Screenshots of LesionLab's grid in JupyterLab: tags, saved views, per-class FROC, fine-tuning.

Usage: .venv/bin/python bench/make_lab_screenshots.py --run runs/demo [--out docs/img]

Copies the run (its label store is written to: tags, a saved view, a fine-tuning job), opens a
notebook with ``LesionLab`` in JupyterLab and headless chromium (``/usr/bin/chromium``), then:

- tags three lesions ``follow-up`` from the grid, filters by the tag, saves the view and starts
  fine-tuning with the button: ``lesion_grid.png`` (the grid and the fine-tune panel's progress);
- switches the grid to a model's false positives, clicks a class's count in the per-class table
  and a case: ``lesion_grid_froc.png`` (the table, the cases, the viewer with the boxes).

The fine-tuning job is stopped once the pictures are taken; the copy is left in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

from widgets_fixtures import CHROMIUM, CHROMIUM_ARGS, jupyterlab, notebook, open_notebook  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True, help="a run made by the pipeline")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--user", default="alice")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="dl_shots_"))
    run = work / "run"
    shutil.copytree(args.run, run, ignore=shutil.ignore_patterns("jobs"))
    root = work / "nb"
    root.mkdir(parents=True, exist_ok=True)
    src = ("from widgets import LesionLab\n"
           f"lab = LesionLab(r'{run}', user={args.user!r}, size=440)\nlab")
    # as notebook 4 shows them: the grid beside a viewer (second views of the same models)
    src2 = ("import ipywidgets as ipw\nfrom widgets import LesionGrid, SliceViewer\n"
            "g = LesionGrid(lab.model.grid, views=lab.model.views, "
            "layout=ipw.Layout(width='560px', margin='0 10px 0 0'))\n"
            "ipw.HBox([g, SliceViewer(lab.model.viewer, canvas_size=440)])")
    (root / "lab.ipynb").write_text(json.dumps(notebook(src, src2)))
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        shots(root, run, args.out)
    finally:
        stop_finetune(run)
    print("work folder:", work)


def stop_finetune(run: Path) -> None:
    """Stop the fine-tuning job this script started (and its command), if it still runs."""
    from deeplesion_lab.jobs import read_job

    rec = read_job(run, "finetune")
    if rec is not None and rec.state == "running" and rec.pid:
        os.killpg(rec.pid, signal.SIGTERM)
        time.sleep(1)


def shots(root: Path, run: Path, out: Path) -> None:
    """Drive JupyterLab and take the pictures."""
    from playwright.sync_api import sync_playwright

    args = argparse.Namespace(out=out)
    with jupyterlab(root) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1180, "height": 1100})
        open_notebook(page, url, "lab.ipynb", wait_for=".dlgr-cell canvas")
        grid = page.locator(".dlgr").first
        cells = page.locator(".dlgr-cell")
        cells.nth(0).click()
        for i in (2, 5):
            cells.nth(i).click(modifiers=["Shift"])
        grid.locator("input[placeholder='tag']").fill("follow-up")
        grid.get_by_role("button", name="Tag", exact=True).click()
        page.wait_for_function("() => document.querySelectorAll('.dlgr-tag').length === 3")
        grid.locator("input[placeholder='view name']").fill("follow-ups")
        grid.get_by_role("button", name="Save view").click()
        page.wait_for_timeout(500)
        grid.locator("select[title='show only the lesions with this tag']").select_option(
            "follow-up")
        page.wait_for_function(
            "() => document.querySelector('.dlgr').parentElement.dataset.total === '3'")
        ft = page.locator(".dlft").first
        ft.get_by_role("button").click()
        page.wait_for_function(  # running, the bar moving
            "() => { const d = document.querySelector('.dlft').parentElement.dataset; "
            "const b = document.querySelector('.dlft-bar'); return d.state === 'running' && "
            "Number(b.getAttribute('aria-valuenow')) >= 5 }", timeout=180_000)
        page.wait_for_timeout(1500)  # the bar's width transition
        grid.evaluate("e => e.scrollIntoView()")
        box_g, box_f = grid.bounding_box(), ft.bounding_box()
        clip = {"x": box_g["x"] - 8, "y": box_g["y"] - 8, "width": box_g["width"] + 16,
                "height": box_f["y"] + box_f["height"] - box_g["y"] + 16}
        page.screenshot(path=str(args.out / "lesion_grid.png"), clip=clip)
        print("wrote", args.out / "lesion_grid.png")
        # per-class FROC on the second grid (beside its viewer): a class's false positives
        grid.locator("select[title='show only the lesions with this tag']").select_option("")
        page.wait_for_timeout(500)
        g2 = page.locator(".dlgr").nth(1)
        g2.evaluate("e => e.scrollIntoView()")
        g2.locator("select").first.select_option("false positives")
        models = g2.locator("select[title='whose detections'] option").all_inner_texts()
        pick = next((m for m in models if m == "pseudo"), models[0])
        g2.locator("select[title='whose detections']").select_option(pick)
        page.wait_for_selector(".dlgr-cls tr[data-cls]", timeout=60_000)
        page.wait_for_timeout(1000)
        button = g2.locator(".dlgr-cls button[data-kind='false positives']:not([disabled])")
        button.first.click()
        page.wait_for_timeout(1500)
        g2.locator(".dlgr-cell").first.click()
        page.wait_for_timeout(2000)
        box = g2.locator("xpath=ancestor::div[contains(@class,'widget-hbox')][1]").bounding_box()
        page.set_viewport_size({"width": 1180, "height": int(box["height"]) + 140})
        g2.evaluate("e => e.scrollIntoView()")
        page.wait_for_timeout(500)
        box = g2.locator("xpath=ancestor::div[contains(@class,'widget-hbox')][1]").bounding_box()
        clip = {"x": box["x"] - 8, "y": box["y"] - 8, "width": box["width"] + 16,
                "height": box["height"] + 16}
        page.screenshot(path=str(args.out / "lesion_grid_froc.png"), clip=clip)
        print("wrote", args.out / "lesion_grid_froc.png")
        browser.close()


if __name__ == "__main__":
    main()
