"""Tiny runs for the widget tests (engineer E's fixtures).

:func:`make_tiny_run` writes a small DeepLesion-format dataset (official ``DL_info.csv`` columns,
``Images_png`` 16-bit slices with the +32768 offset), builds its manifest with the real
:func:`deeplesion_lab.manifest.write_manifest`, starts a run directory with :class:`RunDir`, and
then writes ``embeddings.parquet``, ``pseudo_labels.parquet`` and ``umap.parquet`` **itself from
simple features** (a noisy one-hot of the lesion's true type plus its location), not with the
embedding network: the widgets only read those files, and this keeps the tests fast. A few
lesions get a deliberately wrong pseudo-label with low confidence (``RUN.planted_wrong``), so
"suggest next" has something real to find. Detector predictions of two models (the ``detect``
command's columns, where the run layout puts them: ``pseudo`` on every key image, ``single`` on
the test split) and mined candidates (``graph/proposals.parquet``) are written too, so the
viewer's overlays have content.

With ``source="demo"`` (or ``"auto"`` when :mod:`deeplesion_lab.demo` is importable) the images
and CSV come from the demo generator instead of the hand-made slices.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from factory import free_port, write_dl_info

from deeplesion_lab.images import write_png16
from deeplesion_lab.lesion_types import COARSE_TYPES
from deeplesion_lab.manifest import write_manifest
from deeplesion_lab.run import RunDir

TYPES = list(COARSE_TYPES.values())
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the checkout's widgets/ package, even without an editable install
    sys.path.insert(0, str(REPO))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]


ARTIFACTS = REPO / "test-artifacts"


def need_chromium() -> str:
    """Debian's chromium, or skip the test with the reason."""
    import pytest

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    return CHROMIUM


@contextlib.contextmanager
def chromium_page(playwright, name: str, *, width: int = 1300, height: int = 1000,
                  args: list[str] | None = None):
    """A new chromium page; a screenshot of it goes to ``test-artifacts/NAME.png`` at the end.

    The page's uncaught script errors collect in ``page.page_errors``. When the block raises,
    the screenshot is ``NAME_failed.png`` and the error is raised on with them appended.
    """
    browser = playwright.chromium.launch(executable_path=need_chromium(),
                                         args=CHROMIUM_ARGS if args is None else args)
    page = browser.new_page(viewport={"width": width, "height": height})
    page.page_errors = []
    page.on("pageerror", lambda e: page.page_errors.append(str(e)))
    shot = name
    try:
        yield page
    except Exception as exc:
        shot = f"{name}_failed"
        if page.page_errors:
            raise AssertionError(f"{exc}\npage errors: {page.page_errors}") from exc
        raise
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        try:
            page.screenshot(path=str(ARTIFACTS / f"{shot}.png"), full_page=True)
        finally:
            browser.close()


def wait_until(fn, timeout: float = 20.0, what: str = "condition"):
    """Poll ``fn`` until it returns something true (returned), or fail naming ``what``."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = fn()
        if v:
            return v
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")



@dataclass
class TinyRun:
    run_dir: Path
    manifest: Path
    images_root: Path
    lesion_ids: list[str]
    true_label: dict[str, str]
    planted_wrong: list[str] = field(default_factory=list)


def _fmt(vals) -> str:
    return ", ".join(f"{float(v):.4f}".rstrip("0").rstrip(".") for v in vals)


def _hand_made(out: Path, n_patients: int = 4, size: int = 128, seed: int = 0) -> tuple[Path, Path]:
    """A hand-written DL_info.csv + slices: 3 lesions per study, 2 studies per patient."""
    rng = np.random.default_rng(seed)
    root = out / "Images_png"
    rows = []
    t = 0
    yy, xx = np.mgrid[0:size, 0:size]
    for p in range(1, n_patients + 1):
        split = 1 if p <= max(1, n_patients // 2) else (2 if p == n_patients // 2 + 1 else 3)
        for s in (1, 2):
            key = 10 + s
            series = f"{p:06d}_{s:02d}_01"
            body = ((xx - size / 2) / (0.45 * size)) ** 2 + ((yy - size / 2) / (0.36 * size)) ** 2 <= 1
            lesions = []
            for j in range(3):
                typ = (t % 8) + 1
                t += 1
                r = 5 + 3 * j + int(rng.integers(0, 4))
                cx = int(size * (0.3 + 0.2 * j)) + int(rng.integers(-3, 4))
                cy = int(size * 0.5) + int(rng.integers(-8, 9))
                lesions.append((typ, cx, cy, r))
            for z in range(key - 2, key + 3):
                hu = np.where(body, 40, -1000).astype(np.float64) + rng.normal(0, 12, (size, size))
                for typ, cx, cy, r in lesions:
                    rz = max(r - 2 * abs(z - key), 1)
                    m = (xx - cx) ** 2 + (yy - cy) ** 2 <= rz**2
                    hu[m] = -200 + 60 * typ + rng.normal(0, 8, int(m.sum()))
                write_png16(root / series / f"{z:03d}.png", hu.astype(np.int16))
            for j, (typ, cx, cy, r) in enumerate(lesions):
                # lesion j of a study sits on slice key (two of them share the key image)
                kz = key if j < 2 else key + 1
                recist = [cx - r, cy, cx + r, cy, cx, cy - 0.7 * r, cx, cy + 0.7 * r]
                box = [cx - r - 5, cy - r - 5, cx + r + 5, cy + r + 5]
                rows.append(
                    {
                        "File_name": f"{series}_{kz:03d}.png",
                        "Patient_index": p,
                        "Study_index": s,
                        "Series_ID": 1,
                        "Key_slice_index": kz,
                        "Measurement_coordinates": _fmt(recist),
                        "Bounding_boxes": _fmt(box),
                        "Lesion_diameters_Pixel_": _fmt([2 * r, 1.4 * r]),
                        "Normalized_lesion_location": _fmt([cx / size, cy / size, 0.2 + 0.1 * typ]),
                        "Coarse_lesion_type": -1 if split == 1 else typ,
                        "Possibly_noisy": 1 if (p, s, j) == (n_patients, 2, 2) else 0,
                        "Slice_range": _fmt([key - 2, key + 2]),
                        "Spacing_mm_px_": _fmt([0.8, 0.8, 2.0]),
                        "Image_size": _fmt([size, size]),
                        "DICOM_windows": _fmt([-160, 240]),
                        "Patient_gender": "F" if p % 2 else "M",
                        "Patient_age": 40 + p,
                        "Train_Val_Test": split,
                        "_true_type": typ,
                    }
                )
    df = pd.DataFrame(rows)
    csv_path = write_dl_info(df.drop(columns="_true_type"), out / "DL_info.csv")
    truth = df[["File_name", "_true_type"]].rename(columns={"_true_type": "coarse_type"})
    truth_path = out / "hand_truth.csv"
    truth.to_csv(truth_path, index=False)
    return csv_path, truth_path


def make_tiny_run(tmp: Path, source: str = "hand", n_patients: int = 4, seed: int = 0,
                  size: int = 256) -> TinyRun:
    """Write a tiny dataset + manifest + run directory with synthetic features (see module doc).

    Parameters
    ----------
    tmp : pathlib.Path
        Folder to write into (``data/``, ``manifest.parquet``, ``run/``).
    source : {"hand", "demo"}
        Hand-made slices or the demo generator (an error of the generator fails the test).
    size : int, default 256
        Slice size of the demo data (the hand-made slices are 128 px).
    """
    tmp = Path(tmp)
    data = tmp / "data"
    data.mkdir(parents=True, exist_ok=True)
    if source not in ("hand", "demo"):
        raise ValueError(f"source must be 'hand' or 'demo', got {source!r}")
    if source == "demo":
        from deeplesion_lab.demo import generate_demo

        res = generate_demo(data, n_patients=n_patients, seed=seed, size=size, progress=False)
        csv_path, truth_path = Path(res.csv_path), Path(res.truth_path)
    else:
        csv_path, truth_path = _hand_made(data, n_patients=n_patients, seed=seed)
    manifest = tmp / "manifest.parquet"
    res = write_manifest(csv_path, manifest)
    les = res.lesions.reset_index(drop=True)
    run = RunDir(tmp / "run").init(manifest)

    # the true type of each lesion: from the truth file, else the CSV's type
    true_code = les["coarse_type"].to_numpy().astype(int)
    if truth_path.suffix == ".csv":
        t = pd.read_csv(truth_path)
        true_code = np.array(t["coarse_type"].to_numpy()[: len(les)], dtype=int)
        # hand-made: rows are in CSV order, same as the manifest's
    else:
        t = pd.read_parquet(truth_path)
        if "lesion_id" in t.columns:
            m = t.dropna(subset=["lesion_id"]).set_index("lesion_id")["coarse_type"]
            mapped = les["lesion_id"].map(m)
            true_code = np.where(mapped.notna(), mapped.fillna(-1), true_code).astype(int)
    true_code = np.where(true_code < 1, 1, true_code)
    labels = np.array([COARSE_TYPES[c] for c in true_code], dtype=object)

    rng = np.random.default_rng(seed)
    n = len(les)
    onehot = np.eye(8, dtype=np.float32)[true_code - 1]
    loc = les[["location_x", "location_y", "location_z"]].to_numpy(np.float32)
    emb = np.hstack([onehot * 2.0, loc]) + rng.normal(0, 0.15, (n, 11)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    run.save_embeddings(les["lesion_id"], emb)

    pseudo = labels.copy()
    conf = rng.uniform(0.7, 0.99, n)
    wrong = rng.choice(n, size=max(2, n // 12), replace=False)
    for i in wrong:
        pseudo[i] = TYPES[(TYPES.index(labels[i]) + 3) % 8]
        conf[i] = rng.uniform(0.2, 0.4)
    cluster = true_code - 1  # clusters follow the embedding; the label of a few is wrong
    pl = pd.DataFrame(
        {
            "lesion_id": les["lesion_id"].astype("string"),
            "cluster": cluster.astype(np.int64),
            "label": pd.array(pseudo, dtype="string"),
            "confidence": conf,
        }
    )
    pl.to_parquet(run.pseudo_labels, index=False)
    ang = (true_code - 1) * (2 * np.pi / 8)
    um = pd.DataFrame(
        {
            "lesion_id": les["lesion_id"].astype("string"),
            "x": (5 * np.cos(ang) + rng.normal(0, 0.6, n)).astype(np.float32),
            "y": (5 * np.sin(ang) + rng.normal(0, 0.6, n)).astype(np.float32),
        }
    )
    um.to_parquet(run.umap, index=False)

    # detector predictions (detect's CSV columns) and mined candidates, on the key images
    pred_rows, cand_rows, single_rows = [], [], []
    for r in les.itertuples(index=False):
        if r.split_name == "test":
            single_rows.append([r.file_name, r.bbox_x1 - 3, r.bbox_y1 - 3, r.bbox_x2 + 3,
                                r.bbox_y2 + 3, 0.6, "lesion"])
        b = [r.bbox_x1, r.bbox_y1, r.bbox_x2, r.bbox_y2]
        pred_rows.append([r.file_name, b[0] + 2, b[1] + 1, b[2] + 1, b[3] - 2, 0.9,
                          labels[les.index[les.lesion_id == r.lesion_id][0]]])
        pred_rows.append([r.file_name, 5, 5, 25, 25, 0.2, "lung"])
        cand_rows.append([r.file_name, b[0] + 40, b[1] + 10, b[2] + 30, b[3] + 10, 0.7])
    run.detector_dir.mkdir(exist_ok=True)
    cols = ["file_name", "x1", "y1", "x2", "y2", "score", "label"]
    pd.DataFrame(pred_rows, columns=cols).to_csv(run.predictions_file("pseudo", "all"), index=False)
    pd.DataFrame(single_rows, columns=cols).to_csv(run.predictions_file("single", "test"),
                                                   index=False)
    run.graph_dir.mkdir(exist_ok=True)
    pd.DataFrame(cand_rows, columns=["file_name", "x1", "y1", "x2", "y2", "score"]).to_parquet(
        run.graph_dir / "proposals.parquet", index=False
    )
    return TinyRun(
        run_dir=run.path,
        manifest=manifest,
        images_root=csv_path.parent / "Images_png",
        lesion_ids=[str(x) for x in les["lesion_id"]],
        true_label=dict(zip(les["lesion_id"].astype(str), labels, strict=True)),
        planted_wrong=[str(les["lesion_id"].iat[i]) for i in wrong],
    )


# JupyterLab + chromium, for the browser tests and the widget benchmark ---------------------------
def notebook(*sources: str) -> dict:
    """A notebook (nbformat 4 dict) with one code cell per source."""
    return {
        "cells": [
            {"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {},
             "outputs": [], "source": src}
            for i, src in enumerate(sources)
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


@contextlib.contextmanager
def jupyterlab(root: Path, token: str = "widgets-test-token", timeout: float = 120):
    """JupyterLab serving ``root`` on 127.0.0.1 (free port, token, ``--allow-root`` as root).

    Its user settings and workspaces live in a temporary folder beside ``root`` (no news, no
    update checks); the kernel sees the checkout on ``PYTHONPATH``. Yields the base URL.
    """
    root = Path(root)
    side = root.parent / (root.name + "_jupyter")
    settings = side / "settings"
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True, exist_ok=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    port = free_port()
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(side / "workspaces"),
        JUPYTER_RUNTIME_DIR=str(side / "runtime"),
        NUMBA_CACHE_DIR=str(REPO / ".cache" / "numba"),
        OMP_NUM_THREADS="1",
    )
    cmd = [
        str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser",
        "--ip=127.0.0.1", f"--port={port}", f"--ServerApp.token={token}",
        f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=None",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = side / "jupyter.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited early:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() - t0 > timeout:
                raise RuntimeError(f"JupyterLab did not start in {timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(side / "settings", ignore_errors=True)


def open_notebook(page, url: str, name: str, token: str = "widgets-test-token",
                  wait_for: str = ".dlv canvas, .dlm canvas", timeout: float = 120) -> None:
    """Open a notebook in JupyterLab, wait for its kernel, run every cell, wait for a widget."""
    page.goto(f"{url}/lab/tree/{name}?reset&token={token}")  # reset: no restored tabs
    page.wait_for_selector(".jp-Notebook", timeout=timeout * 1000)
    page.wait_for_function(
        "name => window.jupyterapp && window.jupyterapp.shell.currentWidget && "
        "window.jupyterapp.shell.currentWidget.context && "
        "window.jupyterapp.shell.currentWidget.context.path === name",
        arg=name, timeout=timeout * 1000,
    )
    status = page.evaluate(
        """async () => {
            const w = window.jupyterapp.shell.currentWidget;
            await w.context.ready;
            await w.sessionContext.ready;
            for (let i = 0; i < 480; i++) {
                const k = w.sessionContext.session && w.sessionContext.session.kernel;
                if (k && k.status === "idle") return k.status;
                await new Promise((r) => setTimeout(r, 250));
            }
            return "not idle";
        }"""
    )
    if status != "idle":
        raise AssertionError(f"the notebook kernel did not start ({status})")
    page.evaluate("() => { window.jupyterapp.shell.collapseLeft(); return 1; }")
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); return 1; }")
    t0 = time.time()
    while time.time() - t0 < timeout:
        if page.locator(".jp-Dialog button.jp-mod-accept").count():
            page.locator(".jp-Dialog button.jp-mod-accept").first.click()
        if page.locator(wait_for).count():
            return
        time.sleep(0.5)
    raise AssertionError(f"the notebook showed no widget: {page.inner_text('.jp-Notebook')[-2000:]}")
