"""Widget timings (issue 7): a 512x512 slice change, and the embedding map at DeepLesion's scale.

Measured:

- **slice change, server side**: a front-end ``slice_index`` message handled by
  :class:`widgets.SliceViewer` (PNG read and HU conversion when not cached, overlays, state
  serialization of the binary message), on 512x512 demo slices and on the real DeepLesion slices
  in ``../shared/deeplesion_real`` (cold: every slice read from disk);
- **slice change, round trip** in JupyterLab + chromium: key press in the viewer -> request to
  the kernel -> new slice windowed and drawn -> next animation frame (measured by the front end,
  ``performance.now()``);
- **embedding map, 32,735 points** (synthetic lesions and a real SQLite label store): bytes
  sent, a 5,000-lesion relabel from the correction panel until the recoloured codes are sent,
  the "suggest next" ranking, and in the browser the draw time per frame while zooming and the
  time of a lasso over thousands of points.

Usage::

    .venv/bin/python bench/bench_widgets.py                # everything, writes bench/results/widgets.md
    .venv/bin/python bench/bench_widgets.py --no-browser   # the Python side only

Wall-clock medians (``time.perf_counter`` / ``performance.now``) on a shared 2-core machine;
the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

N_BIG = 32_735
RESULTS = REPO / "bench" / "results" / "widgets.md"


def _stats(xs: list[float]) -> str:
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]
    return f"median {statistics.median(xs):.1f} ms, p90 {p90:.1f} ms, max {xs[-1]:.1f} ms (n={len(xs)})"


class _Recorder:
    kernel = "bench"

    def __init__(self, comm_id):
        self.comm_id = comm_id
        self.bytes = 0

    def send(self, data=None, buffers=None, **_):
        # what the kernel would put on the wire: JSON of the state + the raw buffers
        self.bytes += len(json.dumps(data)) + sum(memoryview(b).nbytes for b in buffers or [])

    def close(self, *a, **k):
        pass

    def on_msg(self, *a, **k):
        pass


def _front_end(widget, **state):
    widget._handle_msg({"content": {"data": {"method": "update", "state": state,
                                             "buffer_paths": []}}, "buffers": []})


# slice viewer, server side -----------------------------------------------------------------------
def bench_viewer_server(run_dir: Path, real_manifest: Path | None, repeats: int) -> dict:
    from widgets import SliceViewer
    from widgets.data import LabData
    from widgets.models import ViewerModel

    out = {}
    data = LabData.from_run(run_dir)
    v = SliceViewer(ViewerModel(data))
    # the lesion with the longest series on disk
    lid = max(data.lesion_ids, key=lambda i: len(data.series_slices(data.row(i)["file_name"])))
    v.show_lesion(lid)
    rec = _Recorder(v.model_id)
    v.comm = rec
    slices = list(v.slices)
    assert v.image_shape == [512, 512], v.image_shape
    for cold in (True, False):
        times = []
        for k in range(repeats):
            if cold:
                data._slices.clear()
            target = slices[k % len(slices)] if slices[k % len(slices)] != v.image_slice else slices[
                (k + 1) % len(slices)]
            t0 = time.perf_counter()
            _front_end(v, slice_index=target)
            times.append((time.perf_counter() - t0) * 1000)
            assert v.image_slice == target
        out["demo_cold" if cold else "demo_cached"] = times
    out["message_bytes"] = rec.bytes / (2 * repeats)
    if real_manifest is not None:
        rdata = LabData.from_manifest(real_manifest)
        rv = SliceViewer(ViewerModel(rdata))
        rv.comm = _Recorder(rv.model_id)
        ids = rdata.lesions.loc[rdata.lesions["has_image"], "lesion_id"].astype(str).tolist()
        times = []
        for lid in ids:
            rdata._slices.clear()
            t0 = time.perf_counter()
            rv.show_lesion(lid)
            times.append((time.perf_counter() - t0) * 1000)
            assert rv.image_shape == [512, 512]
        out["real_lesion_cold"] = times
    return out


# the map at 32,735 points ------------------------------------------------------------------------
def build_big(store_path: Path, n: int = N_BIG, seed: int = 0):
    """Synthetic lesions at DeepLesion's scale (no images), their label store and models.

    8 Gaussian clusters in a 16-d embedding, UMAP-like 2-D coordinates, pseudo-labels with a few
    percent wrong. Deterministic for a seed; the store is created on first use.
    """
    from deeplesion_lab.labels import LabelStore
    from deeplesion_lab.lesion_types import COARSE_TYPES
    from widgets.data import LabData
    from widgets.models import CorrectionModel, LabelState, MapModel

    rng = np.random.default_rng(seed)
    names = list(COARSE_TYPES.values())
    k = rng.integers(0, 8, n)
    centres = rng.normal(0, 4, (8, 16))
    emb = (centres[k] + rng.normal(0, 1.0, (n, 16))).astype(np.float32)
    ang = k * (2 * np.pi / 8)
    xy = np.stack([6 * np.cos(ang), 6 * np.sin(ang)], 1) + rng.normal(0, 1.1, (n, 2))
    ids = [f"{i // 4 + 1:06d}_01_01_{i % 400:03d}-{i:08x}" for i in range(n)]
    label = np.array(names)[k].astype(object)
    wrong = rng.random(n) < 0.05
    label[wrong] = np.array(names)[(k[wrong] + 3) % 8]
    les = pd.DataFrame({
        "lesion_id": ids, "file_name": [i.split("-")[0] + ".png" for i in ids],
        "patient_index": np.arange(n) // 4 + 1, "study_index": 1,
        "split_name": np.array(["train", "val", "test"])[rng.integers(0, 3, n)],
        "coarse_type_name": np.where(rng.random(n) < 0.7, "unlabeled", np.array(names)[k]),
        "long_diameter_px": rng.lognormal(3.2, 0.5, n), "short_diameter_px": 10.0,
        "spacing_x": 0.8, "possibly_noisy": rng.random(n) < 0.01,
        "x": xy[:, 0], "y": xy[:, 1], "cluster": k, "pseudo_label": label,
        "confidence": np.where(wrong, 0.35, 0.9),
    })
    data = LabData(les, None, embeddings=emb)
    fresh = not Path(store_path).exists()
    store = LabelStore.open(store_path, dataset=les[["lesion_id"]])
    if fresh:
        store.init_pseudo_labels(
            pd.DataFrame({"lesion_id": ids, "cluster": k, "label": label,
                          "confidence": les["confidence"]}), "bench")
    labels = LabelState(data, store, user="bench")
    mm = MapModel(data, labels)
    return data, store, labels, mm, CorrectionModel(labels, mm)


def big_map_widget(store_path: str, size: int = 600, renderer: str = "auto"):
    """The map widget over :func:`build_big` (used by the browser part, in the kernel)."""
    from widgets import EmbeddingMap

    _, _, _, mm, _ = build_big(Path(store_path))
    return EmbeddingMap(mm, canvas_size=size, renderer=renderer)


def bench_map_server(store_path: Path, repeats: int) -> dict:
    from widgets import CorrectionPanel, EmbeddingMap

    out = {}
    t0 = time.perf_counter()
    data, store, labels, mm, cm = build_big(store_path)
    out["build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    w = EmbeddingMap(mm)
    out["widget_ms"] = (time.perf_counter() - t0) * 1000
    out["xy_bytes"], out["codes_bytes"] = len(w.xy), len(w.codes)
    panel = CorrectionPanel(cm)
    rec = _Recorder(w.model_id)
    w.comm = rec
    rng = np.random.default_rng(1)
    times, sizes = [], []
    for r in range(repeats):
        pts = rng.choice(data.n_points, 5000, replace=False)
        _front_end(w, selection=[int(p) for p in pts])  # the lasso arrives
        label = ["liver", "lung", "bone"][r % 3]
        before = rec.bytes
        t0 = time.perf_counter()
        _front_end(panel, request={"op": "relabel", "label": label, "nonce": r})
        times.append((time.perf_counter() - t0) * 1000)
        sizes.append(rec.bytes - before)
        assert panel.status["ok"], panel.status
        codes = np.frombuffer(w.codes, np.uint8)
        assert all(w.classes[codes[p]]["name"] == label for p in pts[:50])
    out["relabel_5000_ms"] = times
    out["recolour_bytes"] = statistics.median(sizes)
    t0 = time.perf_counter()
    cm.suggestions(top=20)
    out["suggest_first_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cm.suggestions(top=20)
    out["suggest_again_ms"] = (time.perf_counter() - t0) * 1000
    t = []
    for p in range(0, 2000, 100):
        t0 = time.perf_counter()
        _front_end(w, hover_point=p)
        t.append((time.perf_counter() - t0) * 1000)
    out["hover_ms"] = t
    store.close()
    return out


# in the browser -----------------------------------------------------------------------------------
def _bench_map_page(browser, url: str, name: str, shot: Path) -> dict:
    """Open a map notebook; time the first render, draws while zooming, and lassos."""
    from widgets_fixtures import open_notebook

    out: dict = {}
    page2 = browser.new_page(viewport={"width": 1300, "height": 1100})
    t0 = time.perf_counter()
    open_notebook(page2, url, name, wait_for=".dlm canvas", timeout=300)
    page2.wait_for_function(
        "() => Number(document.querySelector('.dlm').parentElement.dataset.renders) > 0",
        timeout=120_000,
    )
    out["map_first_render_s"] = time.perf_counter() - t0
    el = page2.locator(".dlm").first.locator("xpath=..")
    out["renderer"] = el.get_attribute("data-renderer")
    box = page2.locator(".dlm-stage").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page2.mouse.move(cx, cy)
    draws = []
    for i in range(30):
        r0 = int(el.get_attribute("data-renders"))
        page2.mouse.wheel(0, -60 if i < 15 else 60)
        page2.wait_for_function(
            "n => Number(document.querySelector('.dlm').parentElement.dataset.renders) > n", arg=r0
        )
        draws.append(float(el.get_attribute("data-last-draw-ms")))
    out["map_draw_ms"] = draws
    page2.locator(".dlm button", has_text="Reset view").first.click()
    lassos, counts = [], []
    for k in range(5):
        # a lasso: an ellipse around about half of the plot, drawn with 60 mouse moves
        page2.mouse.move(cx + 0.4 * box["width"], cy)
        page2.mouse.down()
        for t in np.linspace(0, 2 * np.pi, 60):
            page2.mouse.move(cx + (0.4 - 0.05 * k) * box["width"] * np.cos(t),
                             cy + 0.3 * box["height"] * np.sin(t))
        page2.mouse.up()
        page2.wait_for_function(
            "() => document.querySelector('.dlm').parentElement.dataset.lastLassoMs")
        lassos.append(float(el.get_attribute("data-last-lasso-ms")))
        counts.append(int(el.get_attribute("data-selected")))
        page2.evaluate("() => { delete document.querySelector('.dlm').parentElement.dataset.lastLassoMs; return 1; }")
    out["lasso_ms"], out["lasso_points"] = lassos, counts
    page2.screenshot(path=str(shot))
    page2.evaluate("() => { window.jupyterapp.commands.execute('notebook:close-and-shutdown'); return 1; }")
    page2.close()
    return out


def bench_browser(run_dir: Path, store_path: Path, root: Path, n_steps: int) -> dict:
    from playwright.sync_api import sync_playwright
    from widgets_fixtures import CHROMIUM, CHROMIUM_ARGS, jupyterlab, notebook, open_notebook

    out: dict = {}
    viewer_src = (
        "from widgets import SliceViewer\n"
        "from widgets.data import LabData\n"
        "from widgets.models import ViewerModel\n"
        f"data = LabData.from_run(r'{run_dir}')\n"
        "lid = max(data.lesion_ids, key=lambda i: len(data.series_slices(data.row(i)['file_name'])))\n"
        "v = SliceViewer(ViewerModel(data), lid, canvas_size=512)\n"
        "v"
    )
    for renderer in ("auto", "canvas2d"):
        map_src = (
            f"import sys; sys.path.insert(0, r'{REPO / 'bench'}')\n"
            "from bench_widgets import big_map_widget\n"
            f"m = big_map_widget(r'{store_path}', renderer={renderer!r})\n"
            "m"
        )
        (root / f"map_{renderer}.ipynb").write_text(json.dumps(notebook(map_src)))
    (root / "viewer.ipynb").write_text(json.dumps(notebook(viewer_src)))
    with jupyterlab(root) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1100})
        open_notebook(page, url, "viewer.ipynb", wait_for=".dlv canvas")
        page.wait_for_function("() => document.querySelector('.dlv').parentElement.dataset.imageSlice")
        stage = page.locator(".dlv-stage").first
        stage.focus()
        n_slices = page.locator(".dlv-slider input").first.evaluate("e => Number(e.max) + 1")
        key = "ArrowDown"
        for i in range(n_steps):
            at = page.locator(".dlv-slider input").first.evaluate("e => Number(e.value)")
            if at == n_slices - 1:
                key = "ArrowUp"
            elif at == 0:
                key = "ArrowDown"
            n0 = page.evaluate("() => (globalThis.__dlViewerLatencies || []).length")
            page.keyboard.press(key)
            page.wait_for_function("n => (globalThis.__dlViewerLatencies || []).length > n", arg=n0)
            if i == 0:
                page.evaluate("() => { globalThis.__dlViewerLatencies = []; return 1; }")  # warm-up
        out["viewer_round_trip_ms"] = page.evaluate("() => globalThis.__dlViewerLatencies")
        out["n_slices"] = n_slices
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:close-and-shutdown'); return 1; }")

        out["map"] = {}
        for renderer in ("auto", "canvas2d"):
            out["map"][renderer] = _bench_map_page(browser, url, f"map_{renderer}.ipynb",
                                                   root / f"map_{renderer}.png")
        browser.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--steps", type=int, default=40, help="slice changes in the browser")
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".cache" / "numba"))
    from widgets_fixtures import REPO as _  # noqa: F401 - the fixtures module must import
    from widgets_fixtures import make_tiny_run

    real = REPO.parent / "shared" / "deeplesion_real"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print("making a 512x512 demo run ...", flush=True)
        tiny = make_tiny_run(tmp / "demo", source="demo", n_patients=2, size=512)
        real_manifest = None
        if (real / "DL_info_test.csv").is_file():
            from deeplesion_lab.manifest import write_manifest

            real_manifest = write_manifest(real / "DL_info_test.csv", tmp / "real.parquet",
                                           images_root=real / "Images_png").manifest_path
        print("slice viewer, server side ...", flush=True)
        vs = bench_viewer_server(tiny.run_dir, real_manifest, args.repeats)
        print("map at 32,735 points, server side ...", flush=True)
        store_path = tmp / "big_labels.sqlite"
        ms = bench_map_server(store_path, max(5, args.repeats // 4))
        br = None
        if not args.no_browser:
            print("in JupyterLab + chromium ...", flush=True)
            root = tmp / "lab_root"
            root.mkdir()
            br = bench_browser(tiny.run_dir, store_path, root, args.steps)
            (REPO / "test-artifacts").mkdir(exist_ok=True)
            (REPO / "test-artifacts" / "bench_map_32735.png").write_bytes(
                (root / "map_auto.png").read_bytes())

    load = os.getloadavg()
    lines = [
        "# Widgets (issue 7)",
        "",
        f"Date 2026-11-22. Command: `.venv/bin/python bench/bench_widgets.py`. "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other "
        f"jobs (load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}); Python "
        f"{platform.python_version()}; chromium headless with `--disable-gpu`.",
        "",
        "| What | Result | Aim |",
        "|---|---|---|",
        f"| Slice change 512x512, server side, PNG read from disk (demo series) | {_stats(vs['demo_cold'])} | |",
        f"| Slice change 512x512, server side, slice cached | {_stats(vs['demo_cached'])} | |",
        f"| Message per slice change (binary int16 + JSON) | {vs['message_bytes'] / 1024:.0f} KiB | binary, not base64 |",
    ]
    if "real_lesion_cold" in vs:
        lines.append(f"| Show a real DeepLesion lesion (512x512, cold read, {len(vs['real_lesion_cold'])} lesions) | {_stats(vs['real_lesion_cold'])} | |")
    if br is not None:
        lines.append(f"| **Slice change round trip in JupyterLab** (key press -> drawn, next frame; {br['n_slices']}-slice series) | **{_stats(br['viewer_round_trip_ms'])}** | < 50 ms |")
    lines += [
        f"| Map widget over {N_BIG:,} points: build models + widget | {ms['build_s']:.2f} s + {ms['widget_ms']:.0f} ms | |",
        f"| Map data sent once: xy float32 / codes uint8 | {ms['xy_bytes'] / 1024:.0f} KiB / {ms['codes_bytes'] / 1024:.0f} KiB | float32 bytes |",
        f"| Relabel 5,000 lassoed lesions from the panel (store commit + refresh + recolour sent) | {_stats(ms['relabel_5000_ms'])} | map recolours at once |",
        f"| Recolour message after a relabel | {ms['recolour_bytes'] / 1024:.0f} KiB | |",
        f"| Hover answer (text; no image for synthetic lesions) | {_stats(ms['hover_ms'])} | |",
        f"| Suggest next over {N_BIG:,} lesions: first (kNN fit) / again | {ms['suggest_first_s']:.2f} s / {ms['suggest_again_ms']:.0f} ms | |",
    ]
    if br is not None:
        for m in br["map"].values():
            lines += [
                f"| Map first render in JupyterLab ({N_BIG:,} points: page load, kernel start, models, first frame; {m['renderer']}) | {m['map_first_render_s']:.1f} s | |",
                f"| Map draw per frame while zooming ({m['renderer']}) | {_stats(m['map_draw_ms'])} | smooth (< 16 ms) |",
                f"| Lasso in the browser ({m['renderer']}; {min(m['lasso_points']):,}-{max(m['lasso_points']):,} points selected) | {_stats(m['lasso_ms'])} | thousands of points |",
            ]
    lines += [
        "",
        "Server side: the Python handling of the front end's message (`Widget._handle_msg`), PNG "
        "decode and HU conversion included when not cached, plus serialization; the kernel's "
        "websocket hop is in the round trip only. Round trip: measured in the page from the key "
        "press to the animation frame after the new slice was windowed and drawn. Draw: one "
        "WebGL frame (`gl.finish()` included) or one 2-D canvas frame. Lasso: point-in-polygon "
        "over every visible point in screen space, then the selection sent to Python.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
