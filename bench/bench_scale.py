"""DeepLesion's size end to end (issue 17): manifest, embed, mine, UMAP, label store, serve.

Usage::

    # once: synthetic slices for the real test split's 4,927 rows (about 15 min on 2 cores)
    .venv/bin/deeplesion-lab demo-data --like ../shared/deeplesion_real/DL_info_test.csv \\
        --out /tmp/dl_scale/like4927 --jobs 2 --seed 11
    # then, per size (rows of DL_info), each step in its own process under /usr/bin/time -v
    .venv/bin/python bench/bench_scale.py --like /tmp/dl_scale/like4927 --work /tmp/dl_scale \\
        --sizes 4927 9854 32735 [--epochs 1] [--steps manifest embed mine umap labels widgets serve]

A DL_info of N rows is the rendered split repeated with new patient ids (copy k adds
``k * 5000`` to ``Patient_index``, and so to ``File_name`` and the series folder), cut at N rows;
the copies' series folders are hard links to the rendered files, so the disk holds one copy of
the pixels (the table gives both the disk used and what N rows' slices take as files). The
slices of copies 2..7 are the same bytes as copy 1, so after the first copy they are read from
the page cache, as a warm disk would serve them; the first copy's reads are cold only once.

Per step: wall and CPU seconds, peak RSS (``/usr/bin/time -v``), the disk of what it wrote
(``du``), and its own summary lines. ``serve``: the dashboard (``python -m widgets.dashboard``,
loopback, no login) in headless chromium (``/usr/bin/chromium``): time from navigation to the
map's first draw with every point, the draw time per frame, a lasso over the left half (points
selected, time), and relabelling the selection until the map's legend shows the new count (the
recolour reached the page). ``widgets``: ``LesionLab(run)`` built in a fresh process (the lab
widget of notebook 3), time and peak RSS.

Appends one JSON line per (size, step) to ``bench/results/scale.jsonl`` and rewrites
``bench/results/scale.md`` from all lines of that file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

PY = str(REPO / ".venv" / "bin" / "python")
CLI = [PY, "-m", "deeplesion_lab.cli"]
RESULTS = HERE / "results"
PATIENT_OFFSET = 5000
STEPS = ("manifest", "embed", "embed-repeat", "mine", "umap", "labels", "widgets", "serve")


# data ------------------------------------------------------------------------------------------
def scaled_dl_info(like: Path, out: Path, n_rows: int) -> dict:
    """Write ``out/DL_info.csv`` with ``n_rows`` rows (the rendered split repeated with new
    patient ids) and ``out/Images_png`` (hard links to the rendered slices)."""
    src = pd.read_csv(like / "DL_info.csv", dtype=str, keep_default_na=False)
    copies = -(-n_rows // len(src))
    parts = []
    for k in range(copies):
        part = src.copy()
        pid = part["Patient_index"].astype(int) + k * PATIENT_OFFSET
        part["Patient_index"] = pid.astype(str)
        part["File_name"] = [f"{p:06d}{f[6:]}" for p, f in zip(pid, src["File_name"], strict=True)]
        parts.append(part)
    table = pd.concat(parts, ignore_index=True).iloc[:n_rows]
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "DL_info.csv", index=False)
    images = out / "Images_png"
    n_links = 0
    series = {f.rsplit("_", 1)[0] for f in table["File_name"]}
    for s in sorted(series):
        k, orig = divmod(int(s[:6]), PATIENT_OFFSET)
        src_dir = like / "Images_png" / f"{orig:06d}{s[6:]}"
        dst = images / s
        if dst.is_dir():
            continue
        dst.mkdir(parents=True)
        for f in src_dir.iterdir():
            os.link(f, dst / f.name)
            n_links += 1
    n_files = sum(len(os.listdir(images / s)) for s in series)
    return {"rows": len(table), "copies": copies, "patients": table["Patient_index"].nunique(),
            "studies": table["File_name"].str[:9].nunique(), "series": len(series),
            "slice_files": n_files, "new_links": n_links}


def du_bytes(*paths: Path) -> int:
    """Bytes on disk of ``paths`` together (hard links counted once)."""
    paths = [str(p) for p in paths if Path(p).exists()]
    if not paths:
        return 0
    out = subprocess.run(["du", "-s", "-B1", "-c", *paths], capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1].split()[0])


def apparent_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder``, every hard link counted (what a copy would take)."""
    return sum(f.stat().st_size for f in folder.rglob("*.png"))


# one timed process ------------------------------------------------------------------------------
def timed(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Run ``cmd`` under ``/usr/bin/time -v``: wall s, CPU s, peak RSS MB, its output."""
    t0 = time.perf_counter()
    res = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    log.write_text(res.stdout + res.stderr)
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}); see {log}\n"
                         f"{res.stderr[-2000:]}")
    err = res.stderr

    def field(name: str) -> float:
        m = re.search(rf"{re.escape(name)}: ([\d.:]+)", err)
        return float(m.group(1)) if m else float("nan")

    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    return {"wall_s": round(wall, 1),
            "cpu_s": round(field("User time (seconds)") + field("System time (seconds)"), 1),
            "peak_rss_mb": round(field("Maximum resident set size (kbytes)") / 1024, 0),
            "summary": lines[-4:]}


UMAP_SNIPPET = """
import time, sys
t0 = time.perf_counter()
from deeplesion_lab.maps import LesionMap
from deeplesion_lab.run import RunDir
ids, vecs = RunDir(sys.argv[1]).load_embeddings()
t1 = time.perf_counter()
LesionMap(seed=0).fit_transform(vecs)
print(f"UMAP of {len(ids)} x {vecs.shape[1]}: {time.perf_counter() - t1:.1f} s "
      f"(imports and reading {t1 - t0:.1f} s), no cache")
"""

WIDGETS_SNIPPET = """
import time, sys
t0 = time.perf_counter()
from widgets import LesionLab
t1 = time.perf_counter()
lab = LesionLab(sys.argv[1], user="bench")
t2 = time.perf_counter()
print(f"LesionLab of {len(lab.model.data)} lesions ({lab.model.data.n_points} on the map): "
      f"{t2 - t1:.1f} s (imports {t1 - t0:.1f} s)")
"""


# the served dashboard in chromium -----------------------------------------------------------------
DEEP = """const deepAll = (sel) => { const out = [];
  const walk = (root) => { out.push(...root.querySelectorAll(sel));
    for (const e of root.querySelectorAll('*')) if (e.shadowRoot) walk(e.shadowRoot) };
  walk(document); return out };"""


def _js(body: str) -> str:
    return f"(arg) => {{ {DEEP} {body} }}"


def bench_serve(run: Path, log: Path) -> dict:
    """Serve ``run`` and drive it in headless chromium (see the module docstring)."""
    from dashboard_fixtures import ServedDashboard
    from playwright.sync_api import sync_playwright

    t0 = time.perf_counter()
    srv = ServedDashboard(run, None, log, poll_ms=1000)
    ready = time.perf_counter() - t0
    out: dict = {"server_ready_s": round(ready, 1)}
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path="/usr/bin/chromium",
                                  args=["--no-sandbox", "--disable-gpu"])
            page = b.new_page(viewport={"width": 1720, "height": 1080})
            page.set_default_timeout(300_000)
            t0 = time.perf_counter()
            page.goto(srv.url + "/")
            page.wait_for_function(_js(
                "const m = deepAll('.dlm-stage')[0]; if (!m) return false;"
                " const el = m.closest('[data-renderer]');"
                " return !!el && Number(el.dataset.renders) > 0"))
            out["first_map_s"] = round(time.perf_counter() - t0, 2)
            out["page_server_rss_mb"] = _rss_mb(srv.proc.pid)
            info = page.evaluate(_js(
                "const el = deepAll('.dlm-stage')[0].closest('[data-renderer]');"
                " return {draw: el.dataset.lastDrawMs, renderer: el.dataset.renderer}"))
            out["draw_ms"] = float(info["draw"] or "nan")
            out["renderer"] = info["renderer"]
            out["map_header"] = " ".join(page.locator(".dlm-head").first.inner_text().split())
            # lasso the left half
            box = page.locator(".dlm-stage").bounding_box()
            x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
            pts = [(x0 + 4, y0 + 4), (x0 + w * 0.5, y0 + 4), (x0 + w * 0.5, y0 + h - 4),
                   (x0 + 4, y0 + h - 4), (x0 + 4, y0 + 6)]
            t0 = time.perf_counter()
            page.mouse.move(*pts[0])
            page.mouse.down()
            for q in pts[1:]:
                page.mouse.move(*q, steps=8)
            page.mouse.up()
            page.wait_for_function(_js(
                "const b = deepAll('.dlc-sel b')[0]; return !!b && Number(b.textContent"
                ".replace(/,/g, '')) > 0"))
            out["lasso_to_selection_s"] = round(time.perf_counter() - t0, 2)
            out["lasso_ms_in_page"] = float(page.evaluate(_js(
                "const el = deepAll('.dlm-stage')[0].closest('[data-renderer]');"
                " return el.dataset.lastLassoMs || 'nan'")))
            n_sel = int(page.locator(".dlc-sel b").inner_text().replace(",", ""))
            out["selected"] = n_sel
            before = _legend(page, "pelvis")
            page.locator(".dlc select").first.select_option("pelvis")
            t0 = time.perf_counter()
            page.get_by_role("button", name="Relabel selection").click()
            page.wait_for_selector(".dlc-status.ok")
            out["relabel_ack_s"] = round(time.perf_counter() - t0, 2)
            page.wait_for_function(_js(
                "return deepAll('.dlm-chip').some(c => { const t = c.textContent.trim();"
                " return t.startsWith('pelvis ') && Number(t.slice(7).replace(/,/g, '')) !="
                " arg })"), arg=before)
            out["relabel_to_recolour_s"] = round(time.perf_counter() - t0, 2)
            out["pelvis_before_after"] = [before, _legend(page, "pelvis")]
            out["server_rss_mb"] = _rss_mb(srv.proc.pid)
            page.screenshot(path=str(log.with_suffix(".png")))
            b.close()
    finally:
        srv.stop()
    return out


def _legend(page, label: str) -> int:
    for t in page.locator(".dlm-chip").all_inner_texts():
        name, _, n = t.strip().rpartition(" ")
        if name == label:
            return int(n.replace(",", ""))
    return 0


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 0)
    return float("nan")


# driver -----------------------------------------------------------------------------------------
def repeat_embeddings(manifest: Path, run: Path, source_run: Path) -> dict:
    """A run for ``manifest`` (a scaled DL_info's) whose embeddings are those of
    ``source_run`` (made on the rendered split itself) repeated for each copy, each copy with
    its own small Gaussian noise (sd 5 % of the vectors' spread per dimension), so that the steps
    after ``embed`` can be timed at N lesions while the patches of N lesions are still being
    built. Row ``i`` of the scaled table is a copy of row ``i mod n_source``."""
    import numpy as np

    from deeplesion_lab.manifest import read_manifest
    from deeplesion_lab.run import RunDir

    t0 = time.perf_counter()
    src = RunDir(source_run)
    src_ids, src_vec = src.load_embeddings()
    src_m = src.load_manifest()
    pos = {str(i): k for k, i in enumerate(src_ids)}
    order = np.array([pos[str(i)] for i in src_m["lesion_id"]])
    m = read_manifest(manifest)
    rows = np.arange(len(m)) % len(src_m)
    copy = np.arange(len(m)) // len(src_m)
    rng = np.random.default_rng(17)
    vec = src_vec[order[rows]] + (copy[:, None] > 0) * rng.normal(
        0, 0.05, (len(m), src_vec.shape[1])) * src_vec.std(0)
    out = RunDir(run)
    out.init(manifest)
    out.save_embeddings(m["lesion_id"].astype(str).to_numpy(), vec.astype(np.float32))
    return {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": float("nan"),
            "peak_rss_mb": float("nan"), "source_run": str(source_run),
            "summary": [f"{len(m)} embeddings: {source_run}'s {len(src_ids)} vectors repeated, "
                        "copies 2.. with noise (sd 0.05 of the spread)"]}


def run_size(like: Path, work: Path, n: int, steps: list[str], epochs: int,
             mine_rounds: int | None = None, repeat_from: Path | None = None,
             tag: str = "") -> list[dict]:
    base = work / f"n{n}"
    data = base / "data"
    man, run = base / "manifest.parquet", base / "run"
    logs = base / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows = []
    t0 = time.perf_counter()
    meta = scaled_dl_info(like, data, n)
    meta["prepare_s"] = round(time.perf_counter() - t0, 1)
    meta["images_disk_bytes"] = du_bytes(data / "Images_png")
    meta["images_file_bytes"] = apparent_bytes(data / "Images_png")
    print(f"[{n}] data: {meta}", flush=True)
    env = {"OMP_WAIT_POLICY": "PASSIVE"}
    for step in steps:
        load = os.getloadavg()[0]
        if step == "manifest":
            r = timed(CLI + ["manifest", str(data / "DL_info.csv"), "--out", str(man)],
                      logs / "manifest.log")
            r["disk_bytes"] = du_bytes(man)
        elif step == "embed":
            if run.exists():
                shutil.rmtree(run)
            r = timed(CLI + ["embed", str(man), "--run", str(run), "--channels", "context",
                             "--epochs", str(epochs), "--no-progress"], logs / "embed.log", env)
            r["disk_bytes"] = du_bytes(run)
            r["cache_bytes"] = du_bytes(run / "cache")
        elif step == "embed-repeat":
            if run.exists():
                shutil.rmtree(run)
            r = repeat_embeddings(man, run, repeat_from)
            r["disk_bytes"] = du_bytes(run)
        elif step == "mine":
            rounds = [] if mine_rounds is None else ["--rounds", str(mine_rounds)]
            r = timed(CLI + ["mine", "--run", str(run), "--no-progress", *rounds],
                      logs / "mine.log", env)
            r["disk_bytes"] = du_bytes(run / "pseudo_labels.parquet", run / "umap.parquet",
                                       run / "cache" / "umap")
        elif step == "umap":
            r = timed([PY, "-c", UMAP_SNIPPET, str(run)], logs / "umap.log", env)
        elif step == "labels":
            db = run / "labels.sqlite"
            for f in run.glob("labels.sqlite*"):
                f.unlink()
            r = timed(CLI + ["labels", "init", "--run", str(run)], logs / "labels.log")
            r["disk_bytes"] = du_bytes(db)
        elif step == "widgets":
            r = timed([PY, "-c", WIDGETS_SNIPPET, str(run)], logs / "widgets.log", env)
        elif step == "serve":
            t0 = time.perf_counter()
            r = bench_serve(run, logs / "serve.log")
            r["wall_s"] = round(time.perf_counter() - t0, 1)
        else:
            raise SystemExit(f"unknown step {step!r}; known: {', '.join(STEPS)}")
        r.update({"n": n, "step": step, "load_before": round(load, 2),
                  "date": time.strftime("%Y-%m-%d %H:%M"), "epochs": epochs,
                  "mine_rounds": mine_rounds, "tag": tag, "data": meta})
        print(f"[{n}] {step}: {json.dumps({k: v for k, v in r.items() if k != 'data'})}",
              flush=True)
        rows.append(r)
        with open(RESULTS / "scale.jsonl", "a") as fh:
            fh.write(json.dumps(r) + "\n")
    return rows


def epoch_growth(run: Path, fractions=(0.25, 0.5, 1.0)) -> list[dict]:
    """CPU seconds of one training epoch and of extraction on the first 25 / 50 / 100 % of a
    run's cached patches (``embed``'s own settings, 2 torch threads, in this process): the part
    of ``embed`` not run at every size."""
    from deeplesion_lab.embedding import LesionEmbedder, PatchConfig, build_patches
    from deeplesion_lab.run import RunDir

    rd = RunDir(run)
    m = rd.load_manifest()
    patches = build_patches(m, PatchConfig(channels="context"), cache_dir=rd.patch_cache)
    out = []
    for f in fractions:
        k = int(round(len(patches) * f))
        sub = patches.subset(np.arange(k))
        emb = LesionEmbedder(epochs=1, num_threads=2, progress=False, seed=0)
        c0, w0 = time.process_time(), time.perf_counter()
        emb.fit(sub)
        c1, w1 = time.process_time(), time.perf_counter()
        emb.transform(sub)
        c2, w2 = time.process_time(), time.perf_counter()
        out.append({"n": k, "step": "epoch", "tag": "training growth", "epoch_cpu_s":
                    round(c1 - c0, 1), "epoch_wall_s": round(w1 - w0, 1),
                    "extract_cpu_s": round(c2 - c1, 1), "extract_wall_s": round(w2 - w1, 1),
                    "load_before": round(os.getloadavg()[0], 2),
                    "date": time.strftime("%Y-%m-%d %H:%M"), "source_run": str(run)})
        print(out[-1], flush=True)
        with open(RESULTS / "scale.jsonl", "a") as fh:
            fh.write(json.dumps(out[-1]) + "\n")
    return out


def _mb(b: float) -> str:
    return f"{b / 2**20:,.0f} MB" if b < 2**30 else f"{b / 2**30:,.1f} GB"


def _setting(latest: dict, size: tuple, step: str, key: str):
    r = latest.get((*size, step))
    return r.get(key) if r is not None else "-"


def _rounds(latest: dict, size: tuple) -> str:
    r = latest.get((*size, "mine"))
    if r is None:
        return " (not run)"
    return "" if r.get("mine_rounds") is None else f" --rounds {r['mine_rounds']}"


def write_markdown(path: Path) -> None:
    """``scale.md`` from every line of ``scale.jsonl`` (the latest per size, tag and step)."""
    rows = [json.loads(x) for x in (RESULTS / "scale.jsonl").read_text().splitlines() if x]
    epochs = [r for r in rows if r["step"] == "epoch"]
    rows = [r for r in rows if r["step"] != "epoch"]
    latest = {(r["n"], r.get("tag", ""), r["step"]): r for r in rows}
    sizes = sorted({(n, t) for n, t, _ in latest})
    lines = [
        "# DeepLesion's size end to end (issue 17)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared with other "
        "engineers' work: the load average before each step is given), no GPU; Python "
        f"{platform.python_version()}. Command: `.venv/bin/python bench/bench_scale.py --like "
        "/tmp/dl_scale/like4927 --work DIR --sizes N ...` (module docstring: how the "
        "data is made). Every step is one fresh process, timed by `/usr/bin/time -v`, under "
        "`nice -n 10`; at load averages of 9-16 on 2 cores the wall times are several times "
        "the CPU times, which are the steadier figures.",
        "",
    ]
    for size in sizes:
        n, tag = size
        d = next(r["data"] for (m, t, _), r in latest.items() if (m, t) == size)
        lines += [f"## {n:,} lesions{f' ({tag})' if tag else ''}", "",
                  f"{d['patients']:,} patients, {d['studies']:,} studies, {d['series']:,} series, "
                  f"{d['slice_files']:,} slice files ({_mb(d['images_file_bytes'])} as files; "
                  f"{_mb(d['images_disk_bytes'])} on disk, the copies being hard links); "
                  f"made in {d['prepare_s']} s. Settings: `embed --channels context --epochs "
                  f"{_setting(latest, size, 'embed', 'epochs')}`, `mine"
                  f"{_rounds(latest, size)}`.", "",
                  "| step | wall | CPU | peak RSS | disk written | load before | output |",
                  "|---|---|---|---|---|---|---|"]
        for step in STEPS:
            r = latest.get((*size, step))
            if r is None:
                continue
            if step == "serve":
                out = (f"server ready {r['server_ready_s']} s; first map {r['first_map_s']} s "
                       f"({r['renderer']}, frame {r['draw_ms']} ms); lasso {r['selected']:,} "
                       f"points: {r['lasso_to_selection_s']} s ({r['lasso_ms_in_page']} ms in "
                       f"the page); relabel acknowledged {r['relabel_ack_s']} s, legend "
                       f"recoloured {r['relabel_to_recolour_s']} s; server peak RSS "
                       f"{r['server_rss_mb']:.0f} MB")
                lines.append(f"| serve | {r['wall_s']} s | | | | {r['load_before']} | {out} |")
                continue
            disk = _mb(r["disk_bytes"]) if "disk_bytes" in r else ""
            rss = f"{r['peak_rss_mb']:.0f} MB" if r["peak_rss_mb"] == r["peak_rss_mb"] else ""
            cpu = f"{r['cpu_s']} s" if r["cpu_s"] == r["cpu_s"] else ""
            out = "<br>".join(s.replace("|", "/") for s in r["summary"][-3:])
            lines.append(f"| {step} | {r['wall_s']} s | {cpu} | {rss} | {disk} | "
                         f"{r['load_before']} | {out} |")
        lines.append("")
    if epochs:
        lines += ["## One training epoch and extraction, by size", "",
                  f"`.venv/bin/python bench/bench_scale.py --like ... --epoch-growth RUN` on "
                  f"the cached patches of `{epochs[-1]['source_run']}` (the first N lesions; "
                  "LesionEmbedder defaults, 1 epoch = one 5-patch sequence per lesion, 2 torch "
                  "threads; CPU seconds of this process).", "",
                  "| lesions | epoch CPU | epoch wall | CPU per 1,000 | extraction CPU | "
                  "extraction wall | load |", "|---|---|---|---|---|---|---|"]
        for r in epochs:
            lines.append(f"| {r['n']:,} | {r['epoch_cpu_s']} s | {r['epoch_wall_s']} s | "
                         f"{1000 * r['epoch_cpu_s'] / r['n']:.1f} s | {r['extract_cpu_s']} s | "
                         f"{r['extract_wall_s']} s | {r['load_before']} |")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--like", type=Path, required=True, help="a demo-data --like output")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[4927, 9854, 32735])
    ap.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    ap.add_argument("--epochs", type=int, default=1,
                    help="embedding epochs (default 1; the lab's default is 10, which takes "
                         "10 times the training part)")
    ap.add_argument("--mine-rounds", type=int, default=None,
                    help="mine --rounds (default: mine's own default, one deep round)")
    ap.add_argument("--repeat-from", type=Path, default=None,
                    help="for step embed-repeat: a run on the rendered split whose embeddings "
                         "are repeated for the copies")
    ap.add_argument("--tag", default="", help="a label for these rows (a variant of a size)")
    ap.add_argument("--epoch-growth", type=Path, default=None, metavar="RUN",
                    help="time one training epoch and extraction on 25/50/100 %% of RUN's "
                         "cached patches instead")
    ap.add_argument("--markdown-only", action="store_true")
    args = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if args.epoch_growth is not None:
        epoch_growth(args.epoch_growth)
    elif not args.markdown_only:
        for n in args.sizes:
            run_size(args.like, args.work, n, args.steps, args.epochs, args.mine_rounds,
                     args.repeat_from, args.tag)
    write_markdown(RESULTS / "scale.md")
    print(f"wrote {RESULTS / 'scale.md'}")


if __name__ == "__main__":
    main()
