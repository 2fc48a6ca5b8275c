// deeplesion-lab embedding map: WebGL scatter (2-D canvas fallback), lasso / box select, hover,
// click, filters. Self-contained anywidget ESM (no imports, no CDN).
//
// Model protocol (also usable as Panel AnyWidgetComponent parameters):
//   xy          bytes  float32 little-endian, x0 y0 x1 y1 ... (n_points pairs)
//   codes       bytes  uint8 class index of each point (into `classes`)
//   classes     [{name, color}]
//   point_visible bytes uint8 1/0 per point (the filters, computed in Python)
//   selection   bytes  selected point indices, little-endian uint32 (written here after a
//                      lasso / box / click-select; one binary buffer, not a JSON list)
//   current     int    point shown in the viewer (ringed)
//   click       {point, nonce}   written here on a click
//   hover_point int    written here (debounced); hover {lesion_id, label, ...} + hover_thumb
//               bytes (uint8 gray, thumb_size^2) + hover_box [x1,y1,x2,y2] answer it
//   filters     {splits, labels, patients, size_mm, noisy}   written here; filter_options read
//   title       text; canvas_size css px; renderer "auto" | "webgl" | "canvas2d": auto draws
//               with WebGL on a GPU, and on the 2-D canvas when WebGL is there but in software
//               (SwiftShader, llvmpipe: a machine without a GPU) or missing; see pickRenderer
// uses widgets/_helpers.js (h, bytesOf, typed: put in front of this file by LabWidget)

function hexRgb(c) {
  let s = String(c || "#bbbbbb").trim().replace("#", "");
  if (s.length === 3) s = s.split("").map((x) => x + x).join("");
  const n = parseInt(s.slice(0, 6), 16);
  return Number.isFinite(n) ? [(n >> 16) & 255, (n >> 8) & 255, n & 255] : [187, 187, 187];
}

const VS = `
attribute vec2 a_pos; attribute float a_code; attribute float a_flag;
uniform vec2 u_scale; uniform vec2 u_offset; uniform float u_size; uniform float u_pass;
uniform sampler2D u_pal; varying vec4 v_col; varying float v_sel;
void main(){
  float vis = mod(a_flag, 2.0); float sel = floor(a_flag / 2.0);
  bool draw = vis > 0.5 && ((u_pass < 0.5 && sel < 0.5) || (u_pass > 0.5 && sel > 0.5));
  gl_Position = draw ? vec4(a_pos * u_scale + u_offset, 0.0, 1.0) : vec4(2.0, 2.0, 2.0, 1.0);
  gl_PointSize = draw ? (sel > 0.5 ? u_size * 1.6 : u_size) : 0.0;
  v_col = texture2D(u_pal, vec2((a_code + 0.5) / 256.0, 0.5)); v_sel = sel;
}`;
const FS = `
precision mediump float; varying vec4 v_col; varying float v_sel;
void main(){
  vec2 c = gl_PointCoord * 2.0 - 1.0; float r = dot(c, c);
  if (r > 1.0) discard;
  if (v_sel > 0.5) { gl_FragColor = r > 0.62 ? vec4(1.0, 1.0, 1.0, 0.9) : vec4(v_col.rgb, 1.0); }
  else { gl_FragColor = vec4(v_col.rgb, 0.82 * (1.0 - smoothstep(0.7, 1.0, r))); }
}`;

// The WebGL renderer's name ("" without WebGL), probed once per page on a throwaway canvas
// (a canvas that had a WebGL context can no longer give a 2-D one).
let glRendererName = null;
function probeGL() {
  if (glRendererName !== null) return glRendererName;
  glRendererName = "";
  try {
    const gl = document.createElement("canvas").getContext("webgl");
    if (gl) {
      const ext = gl.getExtension("WEBGL_debug_renderer_info");
      glRendererName = String(gl.getParameter(ext ? ext.UNMASKED_RENDERER_WEBGL : gl.RENDERER) || "webgl");
      const lose = gl.getExtension("WEBGL_lose_context");
      if (lose) lose.loseContext();
    }
  } catch (e) { glRendererName = ""; }
  return glRendererName;
}
const SOFTWARE_GL = /swiftshader|llvmpipe|softpipe|software|basic render driver/i;
// "auto": WebGL on a GPU; the 2-D canvas when WebGL runs in software. Measured in headless
// chromium without a GPU (bench/bench_map_scale.py): SwiftShader rasterises one full frame of
// 1,000,000 points in about 2 s, and the page's compositor reads the WebGL canvas back
// (ReadPixels in its commit) on the main thread, so every redraw (a zoom step, a lasso)
// froze the page that long; the 2-D canvas path (below) draws the same frame in JavaScript
// several times faster.
function pickRenderer(asked) {
  if (asked === "canvas2d") return { use: "canvas2d", why: "asked" };
  const name = probeGL();
  if (!name) return { use: "canvas2d", why: "no WebGL", name };
  if (asked !== "webgl" && SOFTWARE_GL.test(name)) return { use: "canvas2d", why: "software WebGL", name };
  return { use: "webgl", why: asked === "webgl" ? "asked" : "GPU", name };
}

function makeGL(canvas) {
  // no multisampling: the discs are antialiased in the fragment shader, so MSAA only added
  // work (in SwiftShader it doubled the time of a frame)
  const gl = canvas.getContext("webgl", { antialias: false, premultipliedAlpha: false, preserveDrawingBuffer: true });
  if (!gl) return null;
  const sh = (type, src) => {
    const s = gl.createShader(type); gl.shaderSource(s, src); gl.compileShader(s);
    if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
    return s;
  };
  try {
    const prog = gl.createProgram();
    gl.attachShader(prog, sh(gl.VERTEX_SHADER, VS));
    gl.attachShader(prog, sh(gl.FRAGMENT_SHADER, FS));
    gl.linkProgram(prog);
    if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) return null;
    gl.useProgram(prog);
    const loc = (n) => gl.getUniformLocation(prog, n);
    const att = (n) => gl.getAttribLocation(prog, n);
    const buf = { pos: gl.createBuffer(), code: gl.createBuffer(), flag: gl.createBuffer(), sel: gl.createBuffer() };
    // the selected points drawn from their indices: the second pass goes over them alone
    const uint = gl.getExtension("OES_element_index_uint");
    const tex = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, tex);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
    gl.enable(gl.BLEND);
    gl.blendFunc(gl.SRC_ALPHA, gl.ONE_MINUS_SRC_ALPHA);
    return { gl, prog, loc, att, buf, tex, uint };
  } catch (e) {
    console.warn("deeplesion-lab map: WebGL unavailable, using 2-D canvas", e);
    return null;
  }
}

function render({ model, el }) {
  const W = Math.max(240, model.get("canvas_size") || 520), H = W;
  const dpr = Math.max(1, window.devicePixelRatio || 1);
  const root = h("div", { class: "dlm", style: `width:${W + 18}px` });
  const titleEl = h("span", { class: "dlm-title" });
  const count = h("span", { class: "dlm-count" });
  root.append(h("div", { class: "dlm-head" }, titleEl, count));

  const modes = {};
  let mode = "lasso";
  const bar = h("div", { class: "dlm-bar" });
  for (const [m, label, tip] of [["lasso", "Lasso", "drag to lasso (shift: add, alt: remove)"],
    ["box", "Box", "drag a box (shift: add, alt: remove)"], ["pan", "Pan", "drag to pan"]]) {
    const b = h("button", { text: label, title: tip });
    b.addEventListener("click", () => setMode(m));
    modes[m] = b; bar.append(b);
  }
  const clearBtn = h("button", { text: "Clear selection" });
  const resetBtn = h("button", { text: "Reset view" });
  const filtBtn = h("button", { text: "Filters ▾" });
  bar.append(clearBtn, resetBtn, filtBtn);
  root.append(bar);

  // filters
  const filt = h("div", { class: "dlm-filters" });
  const splitBoxes = {};
  const splitWrap = h("span", {}, h("span", { class: "k", text: "split " }));
  const patientsIn = h("input", { type: "text", placeholder: "patients e.g. 3, 17", style: "width:120px" });
  const sizeLo = h("input", { type: "number", step: "1", min: "0", placeholder: "min" });
  const sizeHi = h("input", { type: "number", step: "1", min: "0", placeholder: "max" });
  const noisySel = h("select");
  for (const v of ["all", "only", "exclude"]) noisySel.append(h("option", { value: v, text: `noisy: ${v}` }));
  const applyBtn = h("button", { text: "Apply" });
  const resetF = h("button", { text: "Clear filters" });
  filt.append(splitWrap, patientsIn, h("span", {}, "size mm ", sizeLo, "–", sizeHi), noisySel, applyBtn, resetF);
  root.append(filt);

  const stage = h("div", { class: "dlm-stage", style: `width:${W}px;height:${H}px` });
  const glCanvas = h("canvas"), ov = h("canvas");
  for (const c of [glCanvas, ov]) {
    c.width = Math.round(W * dpr); c.height = Math.round(H * dpr);
    c.style.width = `${W}px`; c.style.height = `${H}px`;
  }
  stage.append(glCanvas, ov);
  root.append(stage);
  const legend = h("div", { class: "dlm-legend" });
  root.append(legend);
  root.append(h("div", { class: "dlm-help", text: "click a point: show and select it (shift: add) · drag: lasso/box · wheel: zoom · legend: show/hide a class" }));
  const tip = h("div", { class: "dlm-tip" });
  const tipCanvas = h("canvas", { width: "72", height: "72", style: "width:72px;height:72px" });
  const tipText = h("div");
  tip.append(tipCanvas, tipText);
  root.append(tip);
  el.append(root);

  const pick = pickRenderer(model.get("renderer"));
  const glx = pick.use === "webgl" ? makeGL(glCanvas) : null;
  let ctx2 = null;
  if (!glx) ctx2 = glCanvas.getContext("2d");
  const octx = ov.getContext("2d");
  el.dataset.renderer = glx ? "webgl" : "canvas2d";
  el.dataset.rendererWhy = glx || pick.use === "canvas2d" ? pick.why : "WebGL failed";
  el.dataset.glRenderer = pick.name || "";

  // ---- data ----------------------------------------------------------------------------------
  let n = 0, xy = new Float32Array(0), codes = new Uint8Array(0), vis = new Uint8Array(0);
  let sel = new Uint8Array(0), flags = new Uint8Array(0), pal = [];
  let selIdx = new Uint32Array(0), selAll = 0; // the selected shown points, ascending (what
  // is sent), and how many are selected, hidden ones included
  let batch = false; // loading several arrays: one flags rebuild at the end
  let bx0 = 0, bx1 = 1, by0 = 0, by1 = 1; // data bounds
  let zoom = 1, cx = 0.5, cy = 0.5; // view centre in data units
  let hidden = new Set();
  let frame = 0, hoverIdx = -1, hoverTimer = 0, nonce = 0;
  el.dataset.renders = "0"; // full redraws of the points (overlay-only frames not counted)
  el.dataset.flagBuilds = "0";

  // A frame redraws the points only when they changed (view, colours, flags); a hover, the
  // current ring or a lasso being drawn redraw the overlay canvas alone. With a software WebGL
  // (no GPU) every point redraw per pointer move queued seconds of rasterising at 1M points.
  let pointsDirty = true;
  function request() {
    if (!frame) frame = requestAnimationFrame(() => {
      frame = 0;
      if (pointsDirty) { pointsDirty = false; draw(); } else drawOverlay();
    });
  }
  function schedule() { pointsDirty = true; request(); }
  function scheduleOverlay() { request(); }
  // a per-point byte buffer: allocated when its size changes, else overwritten in place (a new
  // allocation per selection made a software WebGL wait for the draws still using the old one)
  const sizes = {};
  function upload(gl, buf, key, bytes) {
    gl.bindBuffer(gl.ARRAY_BUFFER, buf[key]);
    if (sizes[key] !== bytes.length) {
      gl.bufferData(gl.ARRAY_BUFFER, bytes, gl.DYNAMIC_DRAW);
      sizes[key] = bytes.length;
    } else {
      gl.bufferSubData(gl.ARRAY_BUFFER, 0, bytes);
    }
  }

  function loadPoints() {
    xy = typed(model.get("xy"), Float32Array);
    n = xy.length >> 1;
    bx0 = by0 = Infinity; bx1 = by1 = -Infinity;
    for (let i = 0; i < n; i++) {
      const x = xy[2 * i], y = xy[2 * i + 1];
      if (x < bx0) bx0 = x; if (x > bx1) bx1 = x;
      if (y < by0) by0 = y; if (y > by1) by1 = y;
    }
    if (!n) { bx0 = by0 = 0; bx1 = by1 = 1; }
    if (!(bx1 > bx0)) { bx0 -= 1; bx1 += 1; }
    if (!(by1 > by0)) { by0 -= 1; by1 += 1; }
    const px = (bx1 - bx0) * 0.04, py = (by1 - by0) * 0.04;
    bx0 -= px; bx1 += px; by0 -= py; by1 += py;
    cx = (bx0 + bx1) / 2; cy = (by0 + by1) / 2; zoom = 1;
    if (glx) {
      const { gl, buf } = glx;
      gl.bindBuffer(gl.ARRAY_BUFFER, buf.pos); gl.bufferData(gl.ARRAY_BUFFER, xy, gl.STATIC_DRAW);
    }
    buildGrid();
    batch = true;
    try { loadCodes(); loadVisible(); loadSelection(true); } finally { batch = false; }
    updateFlags();
  }
  // a uniform grid over the data bounds (points sorted by cell): hover and click look at the
  // few cells under the pointer instead of every point (a million points: a full scan per
  // pointer move would take tens of milliseconds)
  const G = 256;
  let cellStart = new Int32Array(G * G + 1), cellPts = new Int32Array(0);
  function cellOf(x, y) {
    const gx = Math.min(G - 1, Math.max(0, Math.floor(((x - bx0) / (bx1 - bx0)) * G)));
    const gy = Math.min(G - 1, Math.max(0, Math.floor(((y - by0) / (by1 - by0)) * G)));
    return gy * G + gx;
  }
  function buildGrid() {
    const cell = new Int32Array(n);
    cellStart = new Int32Array(G * G + 1);
    for (let i = 0; i < n; i++) { const c = cellOf(xy[2 * i], xy[2 * i + 1]); cell[i] = c; cellStart[c + 1]++; }
    for (let c = 0; c < G * G; c++) cellStart[c + 1] += cellStart[c];
    const fill = cellStart.slice(0, G * G);
    cellPts = new Int32Array(n);
    for (let i = 0; i < n; i++) cellPts[fill[cell[i]]++] = i;
  }
  function loadCodes() {
    codes = typed(model.get("codes"), Uint8Array);
    if (codes.length !== n) { const c = new Uint8Array(n); c.set(codes.subarray(0, n)); codes = c; }
    // a class colour too dark for the dark plot (e.g. "not a lesion") is drawn lighter
    pal = (model.get("classes") || []).map((c) => {
      const [r, g, b] = hexRgb(c.color);
      const lum = 0.2126 * r + 0.7152 * g + 0.0722 * b;
      return lum >= 70 ? [r, g, b] : [r, g, b].map((v) => Math.round(v * 0.5 + 140));
    });
    if (glx) {
      const { gl, buf, tex } = glx;
      upload(gl, buf, "code", codes);
      const t = new Uint8Array(256 * 4);
      pal.forEach((c, i) => { if (i < 256) t.set([c[0], c[1], c[2], 255], i * 4); });
      gl.bindTexture(gl.TEXTURE_2D, tex);
      gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, 256, 1, 0, gl.RGBA, gl.UNSIGNED_BYTE, t);
    }
    buildLegend();
    updateFlags();
  }
  function loadVisible() {
    const v = typed(model.get("point_visible"), Uint8Array);
    vis = new Uint8Array(n);
    if (v.length === n) vis.set(v); else vis.fill(1);
    updateFlags();
  }
  function loadSelection(force) {
    const s = model.get("selection");
    const idx = Array.isArray(s) ? s : typed(s, Uint32Array); // little-endian, as every browser
    // the kernel's answer to our own selection (an echo, or a model that sends it back): the
    // points already drawn, so no flags rebuild and no redraw of a million points
    if (force !== true && idx.length === selIdx.length && selAll === selIdx.length) {
      let same = true;
      for (let k = 0; k < idx.length; k++) if (idx[k] !== selIdx[k]) { same = false; break; }
      if (same) return;
    }
    sel = new Uint8Array(n);
    for (let k = 0; k < idx.length; k++) { const i = idx[k]; if (i >= 0 && i < n) sel[i] = 1; }
    updateFlags();
  }
  // codes and classes of one kernel message arrive as two change events: one rebuild for both
  let codesQueued = false;
  function queueCodes() {
    if (codesQueued) return;
    codesQueued = true;
    queueMicrotask(() => { codesQueued = false; loadCodes(); });
  }
  function updateFlags() {
    if (batch) return;
    el.dataset.flagBuilds = String(Number(el.dataset.flagBuilds) + 1);
    flags = new Uint8Array(n);
    const names = (model.get("classes") || []).map((c) => c.name);
    const hid = new Uint8Array(256);
    names.forEach((nm, k) => { if (k < 256 && hidden.has(nm)) hid[k] = 1; });
    let shown = 0, nsel = 0, all = 0;
    for (let i = 0; i < n; i++) {
      const v = vis[i] && !hid[codes[i]] ? 1 : 0;
      flags[i] = v | (sel[i] && v ? 2 : 0);
      shown += v; nsel += sel[i] && v ? 1 : 0; all += sel[i];
    }
    selAll = all;
    selIdx = new Uint32Array(nsel);
    for (let i = 0, k = 0; k < nsel; i++) if (flags[i] === 3) selIdx[k++] = i;
    if (glx) {
      const { gl, buf } = glx;
      upload(gl, buf, "flag", flags);
      if (glx.uint) {
        gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, buf.sel);
        gl.bufferData(gl.ELEMENT_ARRAY_BUFFER, selIdx, gl.DYNAMIC_DRAW);
      }
    }
    count.textContent = `${shown.toLocaleString()} of ${n.toLocaleString()} shown · ${nsel.toLocaleString()} selected`;
    el.dataset.selected = String(nsel);
    schedule();
  }

  // data <-> screen (css px)
  function scl() { return Math.min(W / (bx1 - bx0), H / (by1 - by0)) * zoom; }
  function sx(x) { return W / 2 + (x - cx) * scl(); }
  function sy(y) { return H / 2 - (y - cy) * scl(); }
  function dx(px) { return cx + (px - W / 2) / scl(); }
  function dy(py) { return cy - (py - H / 2) / scl(); }
  function ptSize() {
    const base = n > 20000 ? 3 : n > 3000 ? 3.6 : n > 500 ? 5 : 7.5;
    return Math.max(2.5, Math.min(14, base * Math.sqrt(zoom)));
  }

  function draw() {
    const t0 = performance.now();
    const s = scl();
    if (glx) {
      const { gl, loc, att, buf } = glx;
      gl.viewport(0, 0, glCanvas.width, glCanvas.height);
      gl.clearColor(0.059, 0.063, 0.075, 1); gl.clear(gl.COLOR_BUFFER_BIT);
      gl.uniform2f(loc("u_scale"), (2 * s) / W, (2 * s) / H);
      gl.uniform2f(loc("u_offset"), (-2 * s * cx) / W, (-2 * s * cy) / H);
      gl.uniform1f(loc("u_size"), ptSize() * dpr);
      gl.uniform1i(loc("u_pal"), 0);
      // positions as floats; class codes and flags as one byte a point (a quarter of the bytes)
      for (const [name, b, size, type] of [["a_pos", buf.pos, 2, gl.FLOAT],
        ["a_code", buf.code, 1, gl.UNSIGNED_BYTE], ["a_flag", buf.flag, 1, gl.UNSIGNED_BYTE]]) {
        const a = att(name);
        gl.bindBuffer(gl.ARRAY_BUFFER, b); gl.enableVertexAttribArray(a);
        gl.vertexAttribPointer(a, size, type, false, 0, 0);
      }
      gl.uniform1f(loc("u_pass"), 0); gl.drawArrays(gl.POINTS, 0, n);
      gl.uniform1f(loc("u_pass"), 1);
      if (glx.uint) {
        gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, buf.sel);
        if (selIdx.length) gl.drawElements(gl.POINTS, selIdx.length, gl.UNSIGNED_INT, 0);
      } else {
        gl.drawArrays(gl.POINTS, 0, n);
      }
    } else {
      draw2d();
    }
    drawOverlay();
    el.dataset.lastDrawMs = (performance.now() - t0).toFixed(2);
    el.dataset.renders = String(Number(el.dataset.renders) + 1);
  }

  // 2-D fallback: rasterize discs straight into an ImageData (fast for tens of thousands)
  let img2d = null;
  function draw2d() {
    const cw = glCanvas.width, ch = glCanvas.height;
    if (!img2d || img2d.width !== cw) img2d = ctx2.createImageData(cw, ch);
    const px = new Uint32Array(img2d.data.buffer);
    px.fill(0xff13100f);
    const s = scl() * dpr;
    const r = Math.max(1, Math.round((ptSize() * dpr) / 2));
    const palU = pal.map(([R, G, B]) => 0xff000000 | (B << 16) | (G << 8) | R);
    const grey = 0xffbbbbbb;
    const plot = (i, rad, col, ring) => {
      const x = Math.round(cw / 2 + (xy[2 * i] - cx) * s), y = Math.round(ch / 2 - (xy[2 * i + 1] - cy) * s);
      if (x < -rad || y < -rad || x >= cw + rad || y >= ch + rad) return;
      const r2 = rad * rad, ri2 = (rad - 1.2) * (rad - 1.2);
      for (let yy = -rad; yy <= rad; yy++) {
        const Y = y + yy; if (Y < 0 || Y >= ch) continue;
        for (let xx = -rad; xx <= rad; xx++) {
          const X = x + xx; if (X < 0 || X >= cw) continue;
          const d = xx * xx + yy * yy;
          if (d <= r2) px[Y * cw + X] = ring && d > ri2 ? 0xffffffff : col;
        }
      }
    };
    for (let i = 0; i < n; i++) if (flags[i] === 1) plot(i, r, palU[codes[i]] ?? grey, false);
    for (let i = 0; i < n; i++) if (flags[i] === 3) plot(i, Math.round(r * 1.6), palU[codes[i]] ?? grey, true);
    ctx2.putImageData(img2d, 0, 0);
  }

  let lasso = null; // {pts:[[x,y]...], box:bool, add, sub}
  function drawOverlay() {
    octx.setTransform(dpr, 0, 0, dpr, 0, 0);
    octx.clearRect(0, 0, W, H);
    const cur = model.get("current");
    if (cur >= 0 && cur < n) {
      const x = sx(xy[2 * cur]), y = sy(xy[2 * cur + 1]);
      octx.lineWidth = 2; octx.strokeStyle = "#ffffff";
      octx.beginPath(); octx.arc(x, y, 9, 0, 7); octx.stroke();
      octx.strokeStyle = "#000"; octx.lineWidth = 1;
      octx.beginPath(); octx.arc(x, y, 11, 0, 7); octx.stroke();
    }
    if (hoverIdx >= 0 && hoverIdx < n) {
      const x = sx(xy[2 * hoverIdx]), y = sy(xy[2 * hoverIdx + 1]);
      octx.strokeStyle = "#ffffffcc"; octx.lineWidth = 1.5;
      octx.beginPath(); octx.arc(x, y, 6, 0, 7); octx.stroke();
    }
    if (lasso && lasso.pts.length > 1) {
      octx.strokeStyle = lasso.sub ? "#ff7b7b" : "#4aa3ff"; octx.lineWidth = 1.5;
      octx.fillStyle = lasso.sub ? "rgba(255,123,123,.12)" : "rgba(74,163,255,.12)";
      octx.setLineDash([4, 3]);
      octx.beginPath();
      if (lasso.box) {
        const [a, b] = [lasso.pts[0], lasso.pts[lasso.pts.length - 1]];
        octx.rect(a[0], a[1], b[0] - a[0], b[1] - a[1]);
      } else {
        octx.moveTo(lasso.pts[0][0], lasso.pts[0][1]);
        for (const p of lasso.pts) octx.lineTo(p[0], p[1]);
        octx.closePath();
      }
      octx.fill(); octx.stroke(); octx.setLineDash([]);
    }
  }

  function buildLegend() {
    legend.replaceChildren();
    const classes = model.get("classes") || [];
    const counts = new Array(classes.length).fill(0);
    for (let i = 0; i < n; i++) if (vis[i] !== 0 || vis.length !== n) counts[codes[i]]++;
    classes.forEach((c, i) => {
      if (!counts[i] && !hidden.has(c.name)) return;
      const chip = h("span", { class: "dlm-chip" + (hidden.has(c.name) ? " off" : ""), title: "click: show/hide" },
        h("span", { class: "dlm-dot", style: `background:${c.color}` }), `${c.name} ${counts[i].toLocaleString()}`);
      chip.addEventListener("click", () => {
        if (hidden.has(c.name)) hidden.delete(c.name); else hidden.add(c.name);
        buildLegend(); updateFlags();
        model.set("filters", readFilters()); model.save_changes();
      });
      legend.append(chip);
    });
  }

  // ---- picking and selection -----------------------------------------------------------------
  function nearest(mx, my, maxPx = 8) {
    let best = -1, bd = maxPx * maxPx;
    const s = scl();
    const r = maxPx / s; // the search radius in data units
    const x = dx(mx), y = dy(my);
    const c0 = cellOf(x - r, y - r), c1 = cellOf(x + r, y + r);
    const gx0 = c0 % G, gy0 = Math.floor(c0 / G), gx1 = c1 % G, gy1 = Math.floor(c1 / G);
    for (let gy = gy0; gy <= gy1; gy++) {
      for (let c = gy * G + gx0; c <= gy * G + gx1; c++) {
        for (let k = cellStart[c]; k < cellStart[c + 1]; k++) {
          const i = cellPts[k];
          if (!(flags[i] & 1)) continue;
          const ddx = W / 2 + (xy[2 * i] - cx) * s - mx;
          if (ddx > maxPx || ddx < -maxPx) continue;
          const ddy = H / 2 - (xy[2 * i + 1] - cy) * s - my;
          const d = ddx * ddx + ddy * ddy;
          if (d < bd || (d === bd && i < best)) { bd = d; best = i; }
        }
      }
    }
    return best;
  }
  let maskCtx = null;
  function lassoMask(pts) {
    if (!maskCtx) {
      const c = document.createElement("canvas"); c.width = W; c.height = H;
      maskCtx = c.getContext("2d", { willReadFrequently: true });
    }
    maskCtx.clearRect(0, 0, W, H);
    maskCtx.fillStyle = "#fff";
    maskCtx.beginPath();
    maskCtx.moveTo(pts[0][0], pts[0][1]);
    for (const p of pts) maskCtx.lineTo(p[0], p[1]);
    maskCtx.closePath(); maskCtx.fill();
    const a = maskCtx.getImageData(0, 0, W, H).data;
    const out = new Uint8Array(W * H);
    for (let k = 0; k < W * H; k++) out[k] = a[4 * k + 3];
    return out;
  }
  function inPoly(x, y, pts) {
    let c = false;
    for (let i = 0, j = pts.length - 1; i < pts.length; j = i++) {
      const [xi, yi] = pts[i], [xj, yj] = pts[j];
      if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) c = !c;
    }
    return c;
  }
  function finishLasso() {
    const t0 = performance.now();
    const L = lasso; lasso = null;
    if (!L || L.pts.length < 2) { schedule(); return; }
    let minx = Infinity, miny = Infinity, maxx = -Infinity, maxy = -Infinity;
    for (const [x, y] of L.pts) { minx = Math.min(minx, x); maxx = Math.max(maxx, x); miny = Math.min(miny, y); maxy = Math.max(maxy, y); }
    const s = scl();
    // the lasso filled once into a pixel mask (a point is in it where its pixel is); the exact
    // polygon test only for points on the mask's edge pixels
    const mask = L.box ? null : lassoMask(L.pts);
    const next = new Uint8Array(n);
    if (L.add || L.sub) next.set(sel);
    const val = L.sub ? 0 : 1;
    for (let i = 0; i < n; i++) {
      if (!(flags[i] & 1)) continue;
      const x = W / 2 + (xy[2 * i] - cx) * s, y = H / 2 - (xy[2 * i + 1] - cy) * s;
      if (x < minx || x > maxx || y < miny || y > maxy) continue;
      if (mask) {
        const inside = x >= 0 && x < W && y >= 0 && y < H;
        const m = inside ? mask[Math.floor(y) * W + Math.floor(x)] : -1;
        if (m === 0 || (m !== 255 && !inPoly(x, y, L.pts))) continue;
      }
      next[i] = val;
    }
    sel = next;
    updateFlags();
    sendSelection();
    el.dataset.lastLassoMs = (performance.now() - t0).toFixed(2);
  }
  function sendSelection() {
    // the selected shown points (updateFlags made them): one binary buffer (an ArrayBuffer:
    // what Panel's Bytes takes); never written to afterwards, a new one comes per selection
    model.set("selection", selIdx.buffer);
    model.save_changes();
  }

  function setMode(m) {
    mode = m;
    for (const [k, b] of Object.entries(modes)) b.classList.toggle("on", k === m);
    stage.style.cursor = m === "pan" ? "grab" : "crosshair";
  }

  // ---- events --------------------------------------------------------------------------------
  let drag = null;
  stage.addEventListener("pointerdown", (ev) => {
    const r = stage.getBoundingClientRect();
    const mx = ev.clientX - r.left, my = ev.clientY - r.top;
    stage.setPointerCapture(ev.pointerId);
    const pan = mode === "pan" || ev.button === 1;
    drag = { mx, my, cx, cy, pan, moved: false };
    if (!pan) lasso = { pts: [[mx, my]], box: mode === "box", add: ev.shiftKey, sub: ev.altKey };
    hideTip();
  });
  stage.addEventListener("pointermove", (ev) => {
    const r = stage.getBoundingClientRect();
    const mx = ev.clientX - r.left, my = ev.clientY - r.top;
    if (drag) {
      if (Math.abs(mx - drag.mx) + Math.abs(my - drag.my) > 3) drag.moved = true;
      if (drag.pan) {
        cx = drag.cx - (mx - drag.mx) / scl(); cy = drag.cy + (my - drag.my) / scl();
        schedule();
      } else {
        if (lasso) {
          if (lasso.box) lasso.pts = [lasso.pts[0], [mx, my]];
          else lasso.pts.push([mx, my]);
        }
        scheduleOverlay();
      }
      return;
    }
    const i = nearest(mx, my);
    if (i !== hoverIdx) {
      hoverIdx = i; scheduleOverlay();
      clearTimeout(hoverTimer);
      if (i < 0) hideTip();
      else hoverTimer = setTimeout(() => { model.set("hover_point", i); model.save_changes(); }, 60);
    }
    if (i >= 0) placeTip(mx, my);
  });
  const up = (ev) => {
    if (!drag) return;
    const d = drag; drag = null;
    if (!d.moved) {
      lasso = null;
      const i = nearest(d.mx, d.my);
      if (i >= 0) {
        // a click shows the lesion and selects it (shift: add to the selection, alt: remove)
        const next = new Uint8Array(n);
        if (ev.shiftKey || ev.altKey) next.set(sel);
        next[i] = ev.altKey ? 0 : 1;
        sel = next;
        updateFlags();
        sendSelection();
        model.set("click", { point: i, nonce: ++nonce });
        model.save_changes();
      }
      hideTip();  // until the pointer moves to another point
      schedule();
      return;
    }
    if (!d.pan) finishLasso();
  };
  stage.addEventListener("pointerup", up);
  stage.addEventListener("pointercancel", () => { drag = null; lasso = null; scheduleOverlay(); });
  stage.addEventListener("pointerleave", () => { if (!drag) { hoverIdx = -1; hideTip(); scheduleOverlay(); } });
  stage.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const r = stage.getBoundingClientRect();
    const mx = ev.clientX - r.left, my = ev.clientY - r.top;
    const x0 = dx(mx), y0 = dy(my);
    zoom = Math.min(Math.max(zoom * Math.exp(-ev.deltaY * 0.0015), 0.5), 200);
    cx += x0 - dx(mx); cy += y0 - dy(my);
    schedule();
  }, { passive: false });
  clearBtn.addEventListener("click", () => { sel = new Uint8Array(n); updateFlags(); sendSelection(); });
  resetBtn.addEventListener("click", () => { zoom = 1; cx = (bx0 + bx1) / 2; cy = (by0 + by1) / 2; schedule(); });
  filtBtn.addEventListener("click", () => filt.classList.toggle("open"));

  function readFilters() {
    const splits = Object.entries(splitBoxes).filter(([, b]) => b.checked).map(([k]) => k);
    const pats = patientsIn.value.split(/[\s,;]+/).filter((s) => s !== "").map(Number).filter(Number.isFinite);
    const lo = sizeLo.value === "" ? null : Number(sizeLo.value);
    const hi = sizeHi.value === "" ? null : Number(sizeHi.value);
    const opts = model.get("filter_options") || {};
    const rng = opts.size_mm || [0, 1e9];
    return {
      splits: splits.length && splits.length < Object.keys(splitBoxes).length ? splits : null,
      labels: hidden.size ? (model.get("classes") || []).map((c) => c.name).filter((x) => !hidden.has(x)) : null,
      patients: pats.length ? pats : null,
      size_mm: lo == null && hi == null ? null : [lo ?? rng[0], hi ?? rng[1]],
      noisy: noisySel.value,
    };
  }
  applyBtn.addEventListener("click", () => { model.set("filters", readFilters()); model.save_changes(); });
  resetF.addEventListener("click", () => {
    for (const b of Object.values(splitBoxes)) b.checked = true;
    patientsIn.value = ""; sizeLo.value = ""; sizeHi.value = ""; noisySel.value = "all";
    hidden = new Set(); buildLegend();
    model.set("filters", readFilters()); model.save_changes();
  });
  function syncFilterOptions() {
    const o = model.get("filter_options") || {};
    splitWrap.replaceChildren(h("span", { text: "split" }));
    for (const k of Object.keys(splitBoxes)) delete splitBoxes[k];
    for (const s of o.splits || []) {
      const b = h("input", { type: "checkbox" }); b.checked = true; splitBoxes[s] = b;
      splitWrap.append(h("label", {}, b, s));
    }
    if (o.size_mm) { sizeLo.placeholder = `${Math.floor(o.size_mm[0])}`; sizeHi.placeholder = `${Math.ceil(o.size_mm[1])}`; }
  }

  // tooltip
  function hideTip() { tip.style.display = "none"; }
  function placeTip(mx, my) {
    const hv = model.get("hover") || {};
    if (hv.point !== hoverIdx) return;
    tip.style.display = "flex";
    const sr = stage.getBoundingClientRect(), rr = root.getBoundingClientRect();
    let left = sr.left - rr.left + mx + 14, top = sr.top - rr.top + my + 14;
    if (left + 300 > rr.width) left -= 320;
    if (top + 100 > rr.height) top -= 120;
    tip.style.left = `${left}px`; tip.style.top = `${top}px`;
  }
  function syncHover() {
    const hv = model.get("hover") || {};
    if (hv.point !== hoverIdx || hoverIdx < 0) return;
    tipText.replaceChildren(
      h("div", { style: "font-weight:600" }, h("span", { class: "dlm-dot", style: `background:${hv.color};margin-right:5px` }), hv.label || ""),
      h("div", { class: "k", text: hv.lesion_id || "" }),
      h("div", { text: `official type ${hv.type || "?"}${hv.long_mm != null ? ` · ${hv.long_mm}×${hv.short_mm} mm` : ""}` }),
      h("div", { class: "k", text: `patient ${hv.patient} · study ${hv.study} · ${hv.split}${hv.noisy ? " · noisy" : ""}` }),
    );
    const ts = model.get("thumb_size") || 0;
    const g = bytesOf(model.get("hover_thumb"));
    const tctx = tipCanvas.getContext("2d");
    if (ts && g.length === ts * ts) {
      tipCanvas.width = ts; tipCanvas.height = ts; tipCanvas.style.display = "block";
      const id = tctx.createImageData(ts, ts);
      const p = new Uint32Array(id.data.buffer);
      for (let i = 0; i < ts * ts; i++) p[i] = 0xff000000 | (g[i] << 16) | (g[i] << 8) | g[i];
      tctx.putImageData(id, 0, 0);
      const b = model.get("hover_box") || [];
      if (b.length === 4) { tctx.strokeStyle = hv.color || "#fff"; tctx.lineWidth = 1; tctx.strokeRect(b[0] + 0.5, b[1] + 0.5, b[2] - b[0], b[3] - b[1]); }
    } else {
      tipCanvas.style.display = "none";
    }
    placeTip(sx(xy[2 * hoverIdx]), sy(xy[2 * hoverIdx + 1]));
  }

  const handlers = [
    ["change:xy", loadPoints], ["change:codes", queueCodes], ["change:classes", queueCodes],
    ["change:point_visible", () => { loadVisible(); buildLegend(); }], ["change:selection", loadSelection],
    ["change:current", scheduleOverlay], ["change:hover", syncHover], ["change:hover_thumb", syncHover],
    ["change:filter_options", syncFilterOptions], ["change:title", () => { titleEl.textContent = model.get("title") || ""; }],
  ];
  for (const [ev, fn] of handlers) model.on(ev, fn);
  titleEl.textContent = model.get("title") || "";
  setMode("lasso"); syncFilterOptions(); loadPoints();
  return () => { for (const [ev, fn] of handlers) model.off(ev, fn); if (frame) cancelAnimationFrame(frame); };
}

export default { render };
