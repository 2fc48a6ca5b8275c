"""A screenshot of a run's detector on its test key slices, in the lab's slice viewer (issue 14).

Usage::

    .venv/bin/python bench/make_detection_screenshot.py --run runs/demo \\
        [--model single] [--threshold 0.5 | --fp 4] [--n 6] [--out docs/img/detections_test.png]

Opens a notebook in JupyterLab and headless chromium (``/usr/bin/chromium``) with ``--n``
slice viewers, each on one test key slice, showing ``--model``'s predicted boxes scoring at
least ``--threshold`` (default 0.5, the viewer's own default) or, with ``--fp``, at its ``--fp``
false positives per image operating point on the test split (the score of the last detection
kept there, as the lesion grid's FROC mode uses it), and the annotated boxes. The slices are
not picked by outcome: they are spread evenly over the test key slices in file-name order; each
viewer is zoomed ``--zoom`` times about its annotated lesion (ctrl+wheel at the lesion, as a
user zooms), since demo lesions span a few screen pixels at full view.
Prints, over every test key slice and for that threshold and the 0.5, 1, 2 and 4 FP operating
points, how many boxes sit on an annotated lesion, on an unannotated truth lesion (the demo's
``truth.parquet``, when the run records one) or on neither (IoU >= 0.5, the FROC's rule).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def model_predictions(run: Path, model: str) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The model's predictions, the run's lesions (as the widgets read them) and its
    images folder."""
    from deeplesion_lab.run import RunDir
    from widgets.data import LabData

    data = LabData.from_run(RunDir(run))
    preds = data.prediction_sets.get(model)
    if preds is None:
        raise SystemExit(f"{run}: no predictions of model {model!r} (models: "
                         f"{', '.join(data.prediction_sets) or 'none'})")
    return preds, data.lesions, str(data.images_root or "")


def operating_threshold(preds: pd.DataFrame, lesions: pd.DataFrame, fp: float) -> float:
    """The score of the last detection kept at ``fp`` FPs per image on the test split."""
    from widgets.models.grid import froc_cases

    return froc_cases(preds, lesions, "test", fp)[1]


def where_boxes_sit(preds: pd.DataFrame, lesions: pd.DataFrame, threshold: float,
                    truth: pd.DataFrame | None) -> dict[str, int]:
    """Boxes at or above ``threshold`` on the test key slices: on annotated lesions, on
    unannotated truth lesions, elsewhere (IoU >= 0.5)."""
    from deeplesion_lab.boxes import pairwise_iou
    from deeplesion_lab.detection.train import select_split

    test = select_split(lesions, "test")
    cols = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]
    out = {"boxes": 0, "on annotated lesion": 0, "on unannotated truth lesion": 0, "elsewhere": 0}
    for f, g in test.groupby("file_name"):
        p = preds[(preds["file_name"] == f) & (preds["score"] >= threshold)]
        if p.empty:
            continue
        pb = p[["x1", "y1", "x2", "y2"]].to_numpy(float)
        ann = pairwise_iou(pb, g[cols].to_numpy(float)).max(axis=1) >= 0.5
        hid = np.zeros(len(pb), bool)
        if truth is not None:
            u = truth[(truth["file_name"] == f) & ~truth["annotated"]]
            if len(u):
                hid = pairwise_iou(pb, u[cols].to_numpy(float)).max(axis=1) >= 0.5
        out["boxes"] += len(pb)
        out["on annotated lesion"] += int(ann.sum())
        out["on unannotated truth lesion"] += int((hid & ~ann).sum())
        out["elsewhere"] += int((~ann & ~hid).sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True, help="a run made by the pipeline")
    ap.add_argument("--model", default="single")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--threshold", type=float, default=0.5, help="lowest score shown")
    which.add_argument("--fp", type=float, default=None,
                    help="show the boxes of this operating point (FPs per image) instead")
    ap.add_argument("--n", type=int, default=6, help="viewers (test key slices)")
    ap.add_argument("--zoom", type=float, default=3.0,
                    help="zoom of each viewer about its lesion (ctrl+wheel, as a user zooms)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "detections_test.png")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    import tempfile

    from deeplesion_lab.run import RunDir

    run = args.run.resolve()
    truth_path = RunDir(run).truth_path()
    truth = pd.read_parquet(truth_path) if truth_path and truth_path.is_file() else None
    print(f"model {args.model}, test key slices: where the boxes sit (IoU >= 0.5)")
    print("| boxes scoring at least | boxes | on annotated lesion | on unannotated truth "
          "lesion | elsewhere |\n|---|---|---|---|---|")
    preds, lesions, root = model_predictions(run, args.model)
    for fp in (0.5, 1, 2, 4):
        thr = operating_threshold(preds, lesions, fp)
        c = where_boxes_sit(preds, lesions, thr, truth)
        print(f"| {thr:.3f} ({fp:g} FP per image) | " + " | ".join(str(v) for v in c.values())
              + " |")
    threshold = (args.threshold if args.fp is None
                 else operating_threshold(preds, lesions, args.fp))
    c = where_boxes_sit(preds, lesions, threshold, truth)
    print(f"| {threshold:.3f} (shown) | " + " | ".join(str(v) for v in c.values()) + " |")
    from deeplesion_lab.detection.train import select_split

    test = select_split(lesions, "test").drop_duplicates("file_name").sort_values("file_name")
    picks = test.iloc[np.linspace(0, len(test) - 1, min(args.n, len(test))).round().astype(int)]
    ids = [str(i) for i in picks["lesion_id"]]
    from deeplesion_lab.images import key_slice_path, read_png16

    shapes = [read_png16(key_slice_path(root, f)).shape if root else (512, 512)
              for f in picks["file_name"]]
    centres = [((r.bbox_x1 + r.bbox_x2) / 2, (r.bbox_y1 + r.bbox_y2) / 2)
               for r in picks.itertuples()]
    src = (
        "import ipywidgets as ipw\n"
        "from widgets import SliceViewer\n"
        "from widgets.data import LabData\n"
        "from widgets.models.viewer import ViewerModel\n"
        f"data = LabData.from_run(r'{run}')\n"
        "views = []\n"
        f"for lid in {ids!r}:\n"
        "    vm = ViewerModel(data)\n"
        f"    vm.set_prediction_model({args.model!r})\n"
        f"    vm.set_score_threshold({threshold!r})\n"
        "    vm.set_visible('candidates', False)\n"
        "    vm.show_lesion(lid)\n"
        "    views.append(SliceViewer(vm, canvas_size=300))\n"
        "ipw.GridBox(views, layout=ipw.Layout(grid_template_columns='repeat(3, max-content)', "
        "grid_gap='6px'), _dom_classes=['dl-detshot'])"
    )
    from widgets_fixtures import CHROMIUM, CHROMIUM_ARGS, jupyterlab, notebook, open_notebook

    work = args.work or Path(tempfile.mkdtemp(prefix="dl_detshot_"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "detections.ipynb").write_text(json.dumps(notebook(src)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    with jupyterlab(work) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        open_notebook(page, url, "detections.ipynb", wait_for=".dl-detshot .dlv canvas")
        page.wait_for_function(
            f"() => document.querySelectorAll('.dl-detshot .dlv canvas').length >= {len(ids)}")
        page.wait_for_timeout(3000)  # the slices' images
        canvases = page.locator(".dl-detshot .dlv canvas")
        for i, ((cx, cy), (ih, iw)) in enumerate(zip(centres, shapes, strict=True)):
            if args.zoom == 1:
                break
            b = canvases.nth(i).bounding_box()
            base = min(b["width"] / iw, b["height"] / ih)
            page.mouse.move(b["x"] + b["width"] / 2 + (cx - iw / 2) * base,
                            b["y"] + b["height"] / 2 + (cy - ih / 2) * base)
            page.keyboard.down("Control")
            page.mouse.wheel(0, -math.log(args.zoom) / 0.0015)
            page.keyboard.up("Control")
            page.wait_for_timeout(300)
        page.mouse.move(0, 0)
        page.wait_for_timeout(1000)
        grid = page.locator(".dl-detshot").first
        grid.evaluate("e => e.scrollIntoView()")
        box = grid.bounding_box()
        page.screenshot(path=str(args.out), clip={"x": box["x"] - 6, "y": box["y"] - 6,
                                                  "width": box["width"] + 12,
                                                  "height": box["height"] + 12})
        browser.close()
    print("wrote", args.out)


if __name__ == "__main__":
    main()
