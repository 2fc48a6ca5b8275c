"""The embedding map beyond DeepLesion's size (issue 17): 32,735, 250,000 and 1,000,000 points.

For each size: synthetic lesions, a real SQLite label store and the real models
(``bench_widgets.build_big``), the real :class:`widgets.EmbeddingMap` and
:class:`widgets.CorrectionPanel`, and the map's real ES module in headless chromium. The page
talks to the widget through a small loopback HTTP bridge instead of a Jupyter kernel's
websocket: the state and binary buffers the widget would send (same bytes), and the messages
the front end writes (selection, relabel) applied to the widget as a kernel would
(``Widget._handle_msg``). Measured:

- **transfer**: bytes of the state and buffers, and the time to fetch them into the page;
- **first frame**: from the module's ``render`` to its first drawn frame;
- **frame time** while zooming (wheel) and panning (drag): the draw of one frame
  (``data-last-draw-ms``: the JavaScript of the draw; with WebGL the GPU's work comes later)
  and the interval between animation frames;
- **zoom step to screen**: one wheel step until the animation frame after its redraw, so
  until the page has put the frame on screen (with WebGL and a software compositor, the
  compositor reads the canvas back in its commit, on the main thread: the rasterisation is
  in this figure, not in the draw's);
- **lasso** of about a fifth of the points: the front end's part (point-in-polygon, flags,
  selection message) and the kernel's (the selection applied to the map model);
- **relabel-to-recolour**: a 5,000-lesion relabel from the correction panel (store commit,
  recolour) until the new colours are drawn in the page;
- **hover** meanwhile: the nearest-point search of a pointer move (what keeps the map usable).

Usage::

    .venv/bin/python bench/bench_map_scale.py [--sizes 32735,250000,1000000] [--renderer auto]
        [--esm FILE]   # another version of widgets/embedding_map.js (a before/after run)

Writes ``bench/results/map_scale.md``. Chromium runs headless with ``--disable-gpu`` (WebGL
through SwiftShader, on the CPU), so frame times are those of a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

RESULTS = REPO / "bench" / "results" / "map_scale.md"
BINARY = ("xy", "codes", "point_visible", "hover_thumb")

PAGE = """<!doctype html><html><head><meta charset="utf-8"><style>%CSS%</style></head><body style="background:#111">
<div id="host"></div>
<script type="module">
const T = { longTasks: [] };
globalThis.__T = T;
// main-thread tasks over 50 ms (what keeps the page from answering)
new PerformanceObserver((l) => { for (const e of l.getEntries()) T.longTasks.push([e.startTime, e.duration]); })
  .observe({ type: "longtask", buffered: true });
const state = {};
const listeners = {};
let pending = {};
const model = {
  get: (k) => state[k],
  set: (k, v) => { state[k] = v; pending[k] = v; },
  on: (ev, fn) => { (listeners[ev] ||= []).push(fn); },
  off: (ev, fn) => { listeners[ev] = (listeners[ev] || []).filter((f) => f !== fn); },
  save_changes: () => {
    const msg = pending; pending = {};
    if (!("selection" in msg)) return;
    const t0 = performance.now();
    T.selStart = t0;
    const body = msg.selection; // an ArrayBuffer of little-endian uint32 (the map's binary path)
    T.selBytes = body.byteLength; T.sel = body;
    fetch("/update", { method: "POST", body }).then((r) => r.json()).then((j) => {
      const t1 = performance.now();
      T.selAckMs = t1 - t0; T.selKernelMs = j.kernel_ms; T.selN = j.n;
      // where the time went (one clock: the page's epoch ms and the server's time.time())
      T.selToServerMs = j.arrive_ms - (performance.timeOrigin + t0);
      T.selServerMs = j.done_ms - j.arrive_ms;
      T.selBackMs = performance.timeOrigin + t1 - j.done_ms;
    });
  },
};
function fire(k) { for (const fn of listeners["change:" + k] || []) fn(); }
// a kernel message: every value set first, then a change event per key (as Backbone does)
globalThis.__fire = (kv) => { Object.assign(state, kv); for (const k of Object.keys(kv)) fire(k); };
globalThis.__recolour = async (label) => {
  const t0 = performance.now();
  const r = await fetch("/relabel", { method: "POST", body: JSON.stringify({ label }) });
  const buf = await r.arrayBuffer();
  const meta = JSON.parse(r.headers.get("X-Meta"));
  const n0 = Number(document.querySelector(".dlm").parentElement.dataset.renders);
  state.classes = meta.classes; state.codes = new DataView(buf);
  fire("codes");
  await new Promise((res) => { const f = () => {
    if (Number(document.querySelector(".dlm").parentElement.dataset.renders) > n0) res();
    else requestAnimationFrame(f); }; requestAnimationFrame(f); });
  await new Promise((res) => requestAnimationFrame(res)); // the recoloured frame on screen
  return { ms: performance.now() - t0, kernel_ms: meta.kernel_ms, bytes: buf.byteLength };
};
globalThis.__frames = [];
(function tick(t) { globalThis.__frames.push(t); requestAnimationFrame(tick); })(0);
const t0 = performance.now();
const st = await (await fetch("/state.json")).json();
Object.assign(state, st);
let bytes = JSON.stringify(st).length;
for (const k of %BINARY%) {
  const b = await (await fetch("/" + k + ".bin")).arrayBuffer();
  state[k] = new DataView(b); bytes += b.byteLength;
}
T.transferMs = performance.now() - t0; T.transferBytes = bytes;
const esm = await (await fetch("/esm.js")).text();
const mod = await import(URL.createObjectURL(new Blob([esm], { type: "text/javascript" })));
const el = document.getElementById("host");
const t1 = performance.now();
mod.default.render({ model, el });
await new Promise((res) => { const f = () => { if (Number(el.dataset.renders) > 0) res();
  else requestAnimationFrame(f); }; requestAnimationFrame(f); });
T.firstFrameMs = performance.now() - t1;
T.ready = true;
</script></body></html>
"""


ZOOM_TO_SCREEN = """async (dy) => {
  const el = document.querySelector('.dlm').parentElement;
  const st = document.querySelector('.dlm-stage');
  const r = st.getBoundingClientRect();
  const r0 = Number(el.dataset.renders); const t0 = performance.now();
  st.dispatchEvent(new WheelEvent('wheel', {deltaY: dy, clientX: r.left + r.width / 2,
    clientY: r.top + r.height / 2, bubbles: true, cancelable: true}));
  await new Promise((res) => { const f = () => Number(el.dataset.renders) > r0 ? res()
    : requestAnimationFrame(f); requestAnimationFrame(f); });
  await new Promise((res) => requestAnimationFrame(res));
  return performance.now() - t0; }"""


def _front_end(widget, **state) -> None:
    """A comm ``update`` as the kernel gets it: binary values as buffers of their own."""
    paths, buffers = [], []
    for k, v in list(state.items()):
        if isinstance(v, bytes | memoryview):
            paths.append([k])
            buffers.append(memoryview(v))
            state[k] = None
    widget._handle_msg({"content": {"data": {"method": "update", "state": state,
                                             "buffer_paths": paths}}, "buffers": buffers})


class _Bridge:
    """The widget's side of the page: state out, front-end messages in (as a kernel)."""

    def __init__(self, widget, panel):
        self.widget, self.panel = widget, panel
        self.nonce = 0
        self.lock = threading.Lock()

    def state(self) -> dict:
        s = self.widget.get_state()
        return {k: v for k, v in s.items() if k not in BINARY and not isinstance(v, bytes | memoryview)}

    def binary(self, name: str) -> bytes:
        return bytes(getattr(self.widget, name))

    def update(self, body: bytes, arrive_ms: float) -> dict:
        with self.lock:
            t0 = time.perf_counter()
            _front_end(self.widget, selection=body)
            return {"kernel_ms": (time.perf_counter() - t0) * 1000, "arrive_ms": arrive_ms,
                    "done_ms": time.time() * 1000,
                    "n": len(self.widget.model.selection)}

    def relabel(self, label: str, points: np.ndarray) -> tuple[bytes, dict]:
        with self.lock:
            _front_end(self.widget, selection=np.asarray(points, "<u4").tobytes())
            self.nonce += 1
            t0 = time.perf_counter()
            _front_end(self.panel, request={"op": "relabel", "label": label, "nonce": self.nonce})
            ms = (time.perf_counter() - t0) * 1000
            assert self.panel.status["ok"], self.panel.status
            return bytes(self.widget.codes), {"classes": list(self.widget.classes),
                                              "kernel_ms": ms}


def serve(bridge: _Bridge, esm: str, relabel_points: np.ndarray,
          css: str = "") -> ThreadingHTTPServer:
    page = PAGE.replace("%BINARY%", json.dumps([k for k in BINARY if k != "hover_thumb"]))
    page = page.replace("%CSS%", css)  # the widget's style sheet, as anywidget puts it in

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):  # quiet
            pass

        def _send(self, body: bytes, ctype: str, headers: dict | None = None) -> None:
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            p = self.path.split("?")[0]
            if p == "/":
                self._send(page.encode(), "text/html")
            elif p == "/esm.js":
                self._send(esm.encode(), "text/javascript")
            elif p == "/state.json":
                self._send(json.dumps(bridge.state()).encode(), "application/json")
            elif p.endswith(".bin"):
                self._send(bridge.binary(p[1:-4]), "application/octet-stream")
            else:
                self.send_error(404)

        def do_POST(self):
            arrive_ms = time.time() * 1000
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/update":  # the selection: the page's uint32 buffer as it is
                self._send(json.dumps(bridge.update(raw, arrive_ms)).encode(), "application/json")
                return
            body = json.loads(raw or b"{}")
            if self.path == "/relabel":
                codes, meta = bridge.relabel(body["label"], relabel_points)
                self._send(codes, "application/octet-stream", {"X-Meta": json.dumps(meta)})
            else:
                self.send_error(404)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _stats(xs) -> dict:
    xs = sorted(float(x) for x in xs)
    if not xs:
        return {}
    p90 = xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]
    return {"median": statistics.median(xs), "p90": p90, "max": xs[-1], "n": len(xs)}


def bench_size(browser, n: int, work: Path, renderer: str, size: int = 600,
               esm: str | None = None) -> dict:
    from bench_widgets import build_big

    from widgets import CorrectionPanel, EmbeddingMap

    out: dict = {"n": n}
    t0 = time.perf_counter()
    data, store, labels, mm, cm = build_big(work / f"store_{n}.sqlite", n=n)
    out["build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    w = EmbeddingMap(mm, canvas_size=size, renderer=renderer)
    out["widget_s"] = time.perf_counter() - t0
    panel = CorrectionPanel(cm)
    rng = np.random.default_rng(1)
    pts = rng.choice(n, 5000, replace=False)
    bridge = _Bridge(w, panel)
    srv = serve(bridge, str(EmbeddingMap._esm) if esm is None else esm, pts,
                css=EmbeddingMap._css)
    url = f"http://127.0.0.1:{srv.server_address[1]}/"
    page = browser.new_page(viewport={"width": 900, "height": 900})
    try:
        page.goto(url)
        page.wait_for_function("() => globalThis.__T && globalThis.__T.ready", timeout=600_000)
        T = page.evaluate("() => globalThis.__T")
        out.update(transfer_bytes=T["transferBytes"], transfer_ms=T["transferMs"],
                   first_frame_ms=T["firstFrameMs"])
        el = page.locator(".dlm").first.locator("xpath=..")
        out["renderer"] = el.get_attribute("data-renderer")
        box = page.locator(".dlm-stage").first.bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

        def wait_draw(r0: int) -> float:
            page.wait_for_function(
                "n => Number(document.querySelector('.dlm').parentElement.dataset.renders) > n",
                arg=r0, timeout=120_000)
            return float(el.get_attribute("data-last-draw-ms"))

        page.mouse.move(cx, cy)
        page.evaluate("() => { globalThis.__frames = []; return 1; }")
        zoom = []
        for i in range(20):
            r0 = int(el.get_attribute("data-renders"))
            page.mouse.wheel(0, -80 if i < 10 else 80)
            zoom.append(wait_draw(r0))
        page.locator(".dlm button", has_text="Pan").first.click()
        pan = []
        page.mouse.move(cx, cy)
        page.mouse.down()
        for i in range(20):
            r0 = int(el.get_attribute("data-renders"))
            page.mouse.move(cx + 6 * (i + 1), cy + 3 * (i + 1))
            pan.append(wait_draw(r0))
        page.mouse.up()
        frames = page.evaluate("() => globalThis.__frames")
        gaps = np.diff(np.asarray(frames[1:], dtype=float))
        out["zoom_draw_ms"], out["pan_draw_ms"] = _stats(zoom), _stats(pan)
        out["frame_interval_ms"] = _stats(gaps) if len(gaps) else {}
        # a wheel step until the frame after its redraw (the frame on screen)
        page.mouse.move(cx, cy)
        shown = [page.evaluate(ZOOM_TO_SCREEN, -80 if i < 3 else 80) for i in range(6)]
        out["zoom_to_screen_ms"] = _stats(shown)
        out["gl_renderer"] = el.get_attribute("data-gl-renderer")
        page.locator(".dlm button", has_text="Reset view").first.click()
        page.locator(".dlm button", has_text="Lasso").first.click()
        # hover: the nearest-point search of a pointer move (no kernel round trip counted)
        hov = page.evaluate(
            """() => new Promise((res) => {
                 const st = document.querySelector('.dlm-stage');
                 const r = st.getBoundingClientRect(); const ts = [];
                 for (let k = 0; k < 20; k++) {
                   const t0 = performance.now();
                   st.dispatchEvent(new PointerEvent('pointermove', {clientX: r.left + 100 + 15 * k,
                     clientY: r.top + 200 + 7 * k, bubbles: true}));
                   ts.push(performance.now() - t0);
                 }
                 res(ts); })""")
        out["hover_move_ms"] = _stats(hov)
        lassos, kernel, acks, counts, sel_bytes, parts = [], [], [], [], [], []
        busy, frame_draw = [], []
        for k in range(3):
            page.evaluate("() => { delete globalThis.__T.selAckMs; "
                          "delete document.querySelector('.dlm').parentElement.dataset.lastLassoMs;"
                          " return 1; }")
            rx, ry = (0.22 - 0.03 * k) * box["width"], 0.25 * box["height"]
            ox = cx - 0.12 * box["width"]
            page.mouse.move(ox + rx, cy)
            page.mouse.down()
            for t in np.linspace(0, 2 * np.pi, 40):
                page.mouse.move(ox + rx * np.cos(t), cy + ry * np.sin(t))
            page.mouse.up()
            page.wait_for_function(
                "() => document.querySelector('.dlm').parentElement.dataset.lastLassoMs",
                timeout=120_000)
            page.wait_for_function("() => globalThis.__T.selAckMs !== undefined",
                                   timeout=600_000)
            T = page.evaluate("() => globalThis.__T")
            lassos.append(float(el.get_attribute("data-last-lasso-ms")))
            counts.append(int(el.get_attribute("data-selected")))
            kernel.append(T["selKernelMs"])
            acks.append(T["selAckMs"])
            parts.append((T["selToServerMs"], T["selServerMs"], T["selBackMs"]))
            t_end = T["selStart"] + T["selAckMs"]
            busy.append(sum(min(a + d, t_end) - max(a, T["selStart"]) for a, d in T["longTasks"]
                            if a + d > T["selStart"] and a < t_end))
            frame_draw.append(float(el.get_attribute("data-last-draw-ms")))
            sel_bytes.append(T["selBytes"])
            assert T["selN"] == counts[-1], (T["selN"], counts[-1])
        out["lasso_page_busy_ms"] = _stats(busy)  # long tasks while the ack was on its way
        out["lasso_frame_draw_ms"] = _stats(frame_draw)  # the redraw with the selection
        out["lasso_ack_parts_ms"] = {k: _stats([p[i] for p in parts]) for i, k in
                                     enumerate(("to_server", "server", "back"))}
        out.update(lasso_front_ms=_stats(lassos), lasso_kernel_ms=_stats(kernel),
                   lasso_ack_ms=_stats(acks), lasso_points=counts,
                   lasso_message_bytes=int(statistics.median(sel_bytes)))
        rec = []
        for k, label in enumerate(["liver", "lung", "bone"]):
            rec.append(page.evaluate(f"() => globalThis.__recolour({json.dumps(label)})"))
            codes = np.frombuffer(w.codes, np.uint8)
            assert all(w.classes[codes[p]]["name"] == label for p in pts[:50]), k
        out["recolour_ms"] = _stats([r["ms"] for r in rec])
        out["recolour_kernel_ms"] = _stats([r["kernel_ms"] for r in rec])
        out["recolour_bytes"] = rec[0]["bytes"]
        page.screenshot(path=str(REPO / "test-artifacts" / f"map_scale_{n}.png"))
    finally:
        page.close()
        srv.shutdown()
        store.close()
    return out


def _m(d: dict, key: str = "median", fmt: str = "{:.1f}") -> str:
    return fmt.format(d[key]) if d else "-"


def write(rows: list[dict], args, path: Path) -> None:
    load = os.getloadavg()
    lines = [
        "# The embedding map at 32,735 to 1,000,000 points (issue 17)",
        "",
        f"Date {time.strftime('%Y-%m-%d')}. Command: `.venv/bin/python bench/bench_map_scale.py "
        f"--sizes {args.sizes} --renderer {args.renderer}"
        f"{' --esm ' + str(args.esm) if args.esm else ''}`. {platform.machine()}, "
        f"{os.cpu_count()} cores shared with other jobs (load average "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}); chromium headless with "
        "`--disable-gpu` (WebGL in software, SwiftShader). One run per size; medians over the "
        "repeated gestures (n in brackets).",
        "",
        "| Points | Transfer (state + buffers) | Fetch into the page | First frame | Frame while "
        "zooming, draw (p90) | Frame while panning, draw (p90) | Zoom step to screen (p90) | "
        "Lasso: points, front end / kernel / until acknowledged | Lasso message | Relabel "
        "5,000 to recoloured on screen (kernel part) | Recolour message | Hover search |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['transfer_bytes'] / 2**20:.2f} MiB | {r['transfer_ms']:.0f} ms | "
            f"{r['first_frame_ms']:.0f} ms | {_m(r['zoom_draw_ms'])} ms "
            f"({_m(r['zoom_draw_ms'], 'p90')}) | {_m(r['pan_draw_ms'])} ms "
            f"({_m(r['pan_draw_ms'], 'p90')}) | {_m(r.get('zoom_to_screen_ms', {}))} ms "
            f"({_m(r.get('zoom_to_screen_ms', {}), 'p90')}) | {min(r['lasso_points']):,}-"
            f"{max(r['lasso_points']):,}: {_m(r['lasso_front_ms'])} / "
            f"{_m(r['lasso_kernel_ms'])} / {_m(r['lasso_ack_ms'])} ms (n={len(r['lasso_points'])}) | "
            f"{r['lasso_message_bytes'] / 2**20:.2f} MiB | {_m(r['recolour_ms'])} ms "
            f"({_m(r['recolour_kernel_ms'])} ms) | {r['recolour_bytes'] / 1024:.0f} KiB | "
            f"{_m(r['hover_move_ms'], 'median', '{:.2f}')} ms |")
    lines += ["", "Python side per size: build of the synthetic lesions, label store and models / "
              "the widget: " + "; ".join(f"{r['n']:,}: {r['build_s']:.1f} s / "
                                         f"{r['widget_s'] * 1000:.0f} ms" for r in rows) + ".",
              "", "Renderer: " + ", ".join(f"{r['n']:,} {r['renderer']}" for r in rows)
              + f" (asked: {args.renderer}; WebGL here: {rows[0].get('gl_renderer') or '-'})"
              + ". Frame intervals while zooming and panning (animation frame to frame, "
              "waits for the test driver included): "
              + "; ".join(f"{r['n']:,}: median {_m(r['frame_interval_ms'])} ms"
                          for r in rows) + "."]
    path.write_text("\n".join(lines) + "\n")
    (path.with_suffix(".json")).write_text(json.dumps(rows, indent=1, default=float))


def main() -> None:
    from playwright.sync_api import sync_playwright
    from widgets_fixtures import CHROMIUM, CHROMIUM_ARGS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="32735,250000,1000000")
    ap.add_argument("--renderer", choices=["auto", "webgl", "canvas2d"], default="auto")
    ap.add_argument("--esm", type=Path, default=None,
                    help="another version of widgets/embedding_map.js (a before/after run)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    from widgets.lab_widget import esm_source

    esm = esm_source(args.esm) if args.esm else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for n in [int(s) for s in args.sizes.split(",")]:
            print(f"{n:,} points ...", flush=True)
            rows.append(bench_size(browser, n, Path(tmp), args.renderer, esm=esm))
            print(json.dumps(rows[-1], default=float), flush=True)
            write(rows, args, args.out)
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
