"""VolumeView timings (issue 18): a 512x512x30 sub-volume on screen after selection.

Writes two synthetic DeepLesion-format series of 30 slices of 512x512 (16-bit PNGs, HU + 32768;
a body ellipse with organs, bone, a lesion and CT-like noise, so the PNGs compress like real
ones) with one lesion each, then measures:

- **Python side**: :func:`deeplesion_lab.volume.load_subvolume` with 1 and with 4 decoding
  threads (the candidates for ``n_jobs``), and :meth:`VolumeView.show_lesion` in all (load,
  window presets, int16 bytes);
- **in JupyterLab + chromium, network blocked** (every non-loopback request aborted): the front
  end asks for the other lesion (``dvvRequest``) and times until the four panels are drawn and
  the next animation frame has come (``performance.now()``), alternating between the two
  lesions; once with WebGL2 (SwiftShader, the 3-D ray-cast MIP) and once without WebGL (the
  CPU coronal projection), the two 3-D candidates.

Usage::

    .venv/bin/python bench/bench_volume.py [--repeats 10] [--no-browser]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
OUT = REPO / "bench" / "results" / "volume.md"
NZ, SIZE = 30, 512


def _stats(xs) -> str:
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]
    return f"median {statistics.median(xs):.1f} ms, p90 {p90:.1f} ms, max {xs[-1]:.1f} ms (n={len(xs)})"


def make_series(root: Path, seed: int = 0) -> Path:
    """Two 30-slice 512x512 series and their DL_info.csv; returns the CSV path."""
    from deeplesion_lab.images import write_png16

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    rows = []
    for p in (1, 2):
        series = f"{p:06d}_01_01"
        key = 40 + NZ // 2
        cx, cy, r = 300.0 + 20 * p, 240.0, 18.0
        for k, z in enumerate(range(40, 40 + NZ)):
            body = ((xx - 256) / 220) ** 2 + ((yy - 260) / 170) ** 2 <= 1
            hu = np.where(body, 40.0, -1000.0)
            hu[((xx - 200) / 70) ** 2 + ((yy - 230) / 60) ** 2 <= 1] = 60.0  # liver-like organ
            hu[((xx - 256) / 22) ** 2 + ((yy - 360) / 22) ** 2 <= 1] = 700.0  # vertebra
            rz = max(r - 2.5 * abs(z - key), 0.0)
            hu[(xx - cx) ** 2 + (yy - cy) ** 2 <= rz**2] = 10.0  # the lesion, a sphere
            hu += rng.normal(0, 15, hu.shape) * body + 0 * k
            write_png16(root / "Images_png" / series / f"{z:03d}.png", hu.astype(np.int16))
        box = [cx - r - 5, cy - r - 5, cx + r + 5, cy + r + 5]
        rec = [cx - r, cy, cx + r, cy, cx, cy - r, cx, cy + r]
        rows.append({
            "File_name": f"{series}_{key:03d}.png", "Patient_index": p, "Study_index": 1,
            "Series_ID": 1, "Key_slice_index": key,
            "Measurement_coordinates": ", ".join(f"{v:g}" for v in rec),
            "Bounding_boxes": ", ".join(f"{v:g}" for v in box),
            "Lesion_diameters_Pixel_": f"{2 * r:g}, {2 * r:g}",
            "Normalized_lesion_location": "0.6, 0.45, 0.5", "Coarse_lesion_type": 4,
            "Possibly_noisy": 0, "Slice_range": f"40, {40 + NZ - 1}",
            "Spacing_mm_px_": "0.8, 0.8, 5", "Image_size": f"{SIZE}, {SIZE}",
            "DICOM_windows": "-175, 275", "Patient_gender": "F", "Patient_age": 60,
            "Train_Val_Test": 3,
        })
    path = root / "DL_info.csv"
    pd.DataFrame(rows).to_csv(path, index=False, quoting=csv.QUOTE_MINIMAL)
    return path


def python_side(manifest: Path, repeats: int) -> list[tuple[str, str]]:
    from deeplesion_lab.manifest import read_manifest
    from deeplesion_lab.volume import load_subvolume
    from widgets.volume_view import VolumeView

    m = read_manifest(manifest)
    root = m.attrs["images_root"]
    rows = [m.iloc[0], m.iloc[1]]
    res = []
    for n_jobs in (1, 4):
        ts = []
        for i in range(repeats):
            t = time.perf_counter()
            vol = load_subvolume(root, rows[i % 2], n_jobs=n_jobs)
            ts.append((time.perf_counter() - t) * 1000)
        res.append((f"load_subvolume 512x512x30, {n_jobs} thread(s) (files in the page cache)", _stats(ts)))
    t = time.perf_counter()
    b = np.ascontiguousarray(vol.hu, dtype="<i2").tobytes()
    res.append(("int16 bytes of the volume (tobytes)", f"{(time.perf_counter() - t) * 1000:.1f} ms, {len(b) / 2**20:.1f} MiB"))
    w = VolumeView(manifest, str(m.iloc[0]["lesion_id"]))
    ts = []
    for i in range(repeats):
        w.show_lesion(str(m.iloc[(i + 1) % 2]["lesion_id"]))
        ts.append(w.load_ms)
    res.append(("VolumeView.show_lesion (load + traits, without the websocket)", _stats(ts)))
    return res


def browser_side(manifest: Path, ids: list[str], repeats: int, tmp: Path) -> list[tuple[str, str]]:
    from playwright.sync_api import sync_playwright
    from widgets_fixtures import CHROMIUM, CHROMIUM_ARGS, jupyterlab, notebook, open_notebook

    root = tmp / "lab"
    root.mkdir()
    src = ("from widgets.volume_view import VolumeView\n"
           f"v = VolumeView(r'{manifest}', {ids[0]!r}, canvas_size=300)\nv")
    (root / "volume.ipynb").write_text(json.dumps(notebook(src)))
    res = []
    with jupyterlab(root) as url, sync_playwright() as p:
        for name, args in (
            ("WebGL2 MIP (SwiftShader)", [*CHROMIUM_ARGS, "--enable-unsafe-swiftshader", "--use-angle=swiftshader"]),
            ("CPU coronal projection (--disable-webgl)", [*CHROMIUM_ARGS, "--disable-webgl"]),
        ):
            browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
            pg = browser.new_page(viewport={"width": 1000, "height": 1000})
            blocked: list[str] = []

            def gate(route, blocked=blocked):
                if (urlparse(route.request.url).hostname or "") in ("127.0.0.1", "localhost"):
                    route.continue_()
                else:
                    blocked.append(route.request.url)
                    route.abort("internetdisconnected")

            pg.route("**/*", gate)
            open_notebook(pg, url, "volume.ipynb", wait_for=".dvv canvas")
            pg.wait_for_function("() => Number(document.querySelector('.dvv').parentElement.dataset.volumeSerial) >= 1",
                                 timeout=60_000)
            renderer = pg.evaluate("() => document.querySelector('.dvv').parentElement.dataset.renderer")
            lat, draw, load, arrived = [], [], [], []
            for i in range(repeats + 1):
                lid = ids[(i + 1) % 2]
                pg.evaluate("() => { delete document.querySelector('.dvv').parentElement.dataset.lastLatencyMs; }")
                pg.evaluate("id => document.querySelector('.dvv').parentElement.dvvRequest(id)", lid)
                pg.wait_for_function(
                    "id => { const e = document.querySelector('.dvv').parentElement; "
                    "return e.dataset.lesionId === id && e.dataset.lastLatencyMs !== undefined }",
                    arg=lid, timeout=30_000)
                d = pg.evaluate("() => ({...document.querySelector('.dvv').parentElement.dataset})")
                if i:  # the first request warms the page up
                    lat.append(float(d["lastLatencyMs"]))
                    draw.append(float(d["lastDrawMs"]))
                    load.append(float(d["loadMs"]))
                    arrived.append(float(d["lastArrivedMs"]))
            shot = REPO / "test-artifacts" / f"bench_volume_{renderer}.png"
            shot.parent.mkdir(exist_ok=True)
            pg.screenshot(path=str(shot), full_page=True)
            browser.close()
            res.append((f"**selection -> on screen, 512x512x30** ({name}; renderer {renderer})", f"**{_stats(lat)}**"))
            res.append((f"  request -> bytes arrived in the page ({name})", _stats(arrived)))
            res.append((f"  of which Python load + traits ({name})", _stats(load)))
            res.append((f"  of which drawing the four panels after the bytes arrived ({name})", _stats(draw)))
            res.append((f"  requests to other hosts aborted ({name})", str(len(blocked))))
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--no-browser", action="store_true")
    args = ap.parse_args()
    from deeplesion_lab.manifest import read_manifest, write_manifest

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        csv_path = make_series(tmp / "data")
        manifest = tmp / "manifest.parquet"
        write_manifest(csv_path, manifest)
        ids = [str(x) for x in read_manifest(manifest)["lesion_id"]]
        rows = python_side(manifest, args.repeats)
        if not args.no_browser:
            rows += browser_side(manifest, ids, args.repeats, tmp)
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    text = (
        "# Volume view (issue 18)\n\n"
        f"Date {time.strftime('%Y-%m-%d')}. Command: `.venv/bin/python bench/bench_volume.py "
        f"--repeats {args.repeats}`. {platform.machine()}, {os.cpu_count()} cores shared with "
        f"other jobs (load average {load}); Python {platform.python_version()}; chromium headless, "
        "every non-loopback request aborted.\n\n| What | Result |\n|---|---|\n"
        + "".join(f"| {a} | {b} |\n" for a, b in rows)
        + "\nSelection -> on screen: from the front end's request (`dvvRequest`, as a click in a "
        "linked widget would send it) through the kernel (30 PNGs decoded, 15 MiB of int16 sent "
        "as one binary buffer) to the animation frame after the three planes and the 3-D panel "
        "were drawn. Synthetic series (body, organ, bone, lesion, noise), 0.8 x 0.8 x 5 mm.\n"
    )
    OUT.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
