// deeplesion-lab volume view: a self-contained anywidget ESM front end (no imports, no CDN).
//
// Model protocol (the same names work as Panel AnyWidgetComponent parameters):
//   volume          bytes   raw HU, int16 little-endian, (z, y, x) row-major
//   volume_shape    [nz, ny, nx]; spacing [sz, sy, sx] mm; volume_serial: +1 per lesion shown
//   annotation      {box: [x1, y1, x2, y2], z, recist: [[x, y, z] x4]} in voxels (may be {})
//   cursor          [z, y, x] voxel the three planes cut through (written here on click/wheel)
//   window_level, window_width (HU), preset (name), presets {name: [level, width]}
//   requested_lesion  written here ("id#n") to ask Python for a lesion (timing hook below)
//   lesion_id, title, subtitle, status (text); canvas_size (css px per panel)
// Windowing happens here, so a window change never waits for the server. The 3-D panel is a
// maximum-intensity projection ray-cast in WebGL2 (a fixed coronal MIP on the CPU without it).
// uses widgets/_helpers.js (h, bytesOf, typed: put in front of this file by LabWidget)

const COLORS = { axial: "#4aa3ff", coronal: "#7bd88f", sagittal: "#ff9f43", box: "#f5c542" };

// ---- 3-D: WebGL2 maximum-intensity ray casting -------------------------------------------------
const VS = `#version 300 es
in vec2 pos; out vec2 uv;
void main() { uv = pos; gl_Position = vec4(pos, 0.0, 1.0); }`;
const FS = `#version 300 es
precision highp float; precision highp sampler3D;
uniform sampler3D vol; uniform mat3 M; uniform vec3 ext; uniform vec3 centre; uniform float span;
uniform int steps;
in vec2 uv; out vec4 color;
void main() {
  vec3 o = centre + M * vec3(uv * span, -2.0);
  vec3 d = normalize(M * vec3(0.0, 0.0, 1.0) + vec3(1e-5, 2e-5, 3e-5));
  vec3 inv = 1.0 / d;
  vec3 t0 = (-0.5 * ext - o) * inv, t1 = (0.5 * ext - o) * inv;
  vec3 tn = min(t0, t1), tf = max(t0, t1);
  float a = max(max(tn.x, tn.y), tn.z), b = min(min(tf.x, tf.y), tf.z);
  if (b <= a) { color = vec4(0.0, 0.0, 0.0, 1.0); return; }
  float dt = (b - a) / float(steps), m = 0.0;
  for (int i = 0; i < 1024; i++) {
    if (i >= steps) break;
    vec3 p = o + d * (a + (float(i) + 0.5) * dt);
    m = max(m, texture(vol, p / ext + 0.5).r);
  }
  color = vec4(vec3(m), 1.0);
}`;

function makeGL(canvas) {
  const gl = canvas.getContext("webgl2", { antialias: false, preserveDrawingBuffer: true });
  if (!gl) return null;
  const sh = (type, src) => {
    const s = gl.createShader(type); gl.shaderSource(s, src); gl.compileShader(s);
    if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
    return s;
  };
  const prog = gl.createProgram();
  gl.attachShader(prog, sh(gl.VERTEX_SHADER, VS)); gl.attachShader(prog, sh(gl.FRAGMENT_SHADER, FS));
  gl.linkProgram(prog);
  if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(prog));
  const buf = gl.createBuffer();
  gl.bindBuffer(gl.ARRAY_BUFFER, buf);
  gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), gl.STATIC_DRAW);
  const vao = gl.createVertexArray(); gl.bindVertexArray(vao);
  const loc = gl.getAttribLocation(prog, "pos");
  gl.enableVertexAttribArray(loc); gl.vertexAttribPointer(loc, 2, gl.FLOAT, false, 0, 0);
  const tex = gl.createTexture();
  gl.bindTexture(gl.TEXTURE_3D, tex);
  for (const [k, v] of [[gl.TEXTURE_MIN_FILTER, gl.LINEAR], [gl.TEXTURE_MAG_FILTER, gl.LINEAR],
    [gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE], [gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE], [gl.TEXTURE_WRAP_R, gl.CLAMP_TO_EDGE]]) {
    gl.texParameteri(gl.TEXTURE_3D, k, v);
  }
  const u = (n) => gl.getUniformLocation(prog, n);
  return { gl, prog, vao, tex, uM: u("M"), uExt: u("ext"), uSpan: u("span"), uSteps: u("steps"), uCentre: u("centre"),
    uVol: u("vol"), max3d: gl.getParameter(gl.MAX_3D_TEXTURE_SIZE) };
}

// camera -> world rotation: default looks from the front (screen right = x, screen down = z)
function rotation(yaw, pitch) {
  const cy = Math.cos(yaw), sy = Math.sin(yaw), cp = Math.cos(pitch), sp = Math.sin(pitch);
  // R = Ry(yaw) * Rx(pitch) in camera space; B maps camera (u, v, w) to world (x, y, z)
  const R = [[cy, sy * sp, sy * cp], [0, cp, -sp], [-sy, cy * sp, cy * cp]];
  const B = [[1, 0, 0], [0, 0, -1], [0, -1, 0]]; // columns: u -> +x, v -> -z, w -> -y
  const M = [[0, 0, 0], [0, 0, 0], [0, 0, 0]];
  for (let i = 0; i < 3; i++) for (let j = 0; j < 3; j++) {
    let s = 0; for (let k = 0; k < 3; k++) s += B[i][k] * R[k][j]; M[i][j] = s;
  }
  return M; // M[i][j]: world axis i, camera axis j
}

function render({ model, el }) {
  const S = Math.max(160, model.get("canvas_size") || 300);
  const dpr = Math.max(1, window.devicePixelRatio || 1);
  const root = h("div", { class: "dvv", style: `width:${2 * S + 24}px` });
  const title = h("span", { class: "dvv-title" }), sub = h("span", { class: "dvv-sub" });
  root.append(h("div", { class: "dvv-head" }, title, sub));
  const presetSel = h("select", { title: "window preset (or right-/shift-drag on a plane)" });
  const wl = h("span", { class: "dvv-wl" });
  const pos = h("span", { class: "dvv-wl", style: "margin-left:auto" });
  root.append(h("div", { class: "dvv-bar" }, presetSel, wl, pos));
  const msg = h("div", { class: "dvv-msg" });
  const grid = h("div", { class: "dvv-grid", style: `grid-template-columns:${S}px ${S}px` });
  const panels = {};
  for (const name of ["axial", "coronal", "sagittal", "3d"]) {
    const box = h("div", { class: "dvv-panel", style: `width:${S}px;height:${S}px`, "data-plane": name });
    const c = h("canvas"), ov = h("canvas");
    for (const cv of [c, ov]) {
      cv.width = Math.round(S * dpr); cv.height = Math.round(S * dpr);
      cv.style.width = `${S}px`; cv.style.height = `${S}px`;
    }
    const lab = h("div", { class: "dvv-lab" });
    box.append(c, ov, lab);
    grid.append(box);
    panels[name] = { box, c, ov, lab, fit: null };
  }
  root.append(grid, msg, h("div", { class: "dvv-help", text:
    "click/drag: move the cursor · wheel: scroll that plane · ctrl+wheel: zoom · right- or shift-drag: level/width · 3-D: drag to rotate, wheel to zoom, double-click to reset" }));
  el.append(root);
  el.dataset.renders = "0";

  // ---- state ---------------------------------------------------------------------------------
  let vol = null, nz = 0, ny = 0, nx = 0, sz = 1, sy = 1, sx = 1, serial = -1;
  let cur = [0, 0, 0], ann = {};
  let level = model.get("window_level"), width = model.get("window_width");
  const lut = new Uint8Array(65536);
  const YAW0 = 0.45, PITCH0 = -0.35; // a slightly oblique first view, so that depth shows
  let yaw = YAW0, pitch = PITCH0, frame = 0, dirty3d = true, glState, glFailed = false;
  let pool = null; // {data: Uint8Array windowed, px, py, f}
  let pooledHU = null;
  let pending = null, reqN = 0, recvT = 0;
  const zoom = { axial: 1, coronal: 1, sagittal: 1, "3d": 1 };

  function buildLut() {
    const lo = level - width / 2, sc = 255 / Math.max(width, 1e-6);
    for (let i = 0; i < 65536; i++) {
      const v = (i - 32768 - lo) * sc;
      lut[i] = v <= 0 ? 0 : v >= 255 ? 255 : (v + 0.5) | 0;
    }
    wl.textContent = `L ${Math.round(level)}  W ${Math.round(width)}`;
  }

  // plane images at native resolution, drawn into an offscreen canvas, then fitted by mm
  const off = document.createElement("canvas"), offCtx = off.getContext("2d");
  const mipCanvas = document.createElement("canvas");
  function planeImage(name) {
    let w, hh, get;
    const [z, y, x] = cur;
    if (name === "axial") { w = nx; hh = ny; const o = z * ny * nx; get = (i, j) => vol[o + j * nx + i]; }
    else if (name === "coronal") { w = nx; hh = nz; get = (i, k) => vol[(k * ny + y) * nx + i]; }
    else { w = ny; hh = nz; get = (j, k) => vol[(k * ny + j) * nx + x]; }
    off.width = w; off.height = hh;
    const img = offCtx.createImageData(w, hh), px = new Uint32Array(img.data.buffer);
    for (let r = 0; r < hh; r++) for (let c = 0; c < w; c++) {
      const g = lut[(get(c, r) + 32768) & 0xffff];
      px[r * w + c] = 0xff000000 | (g << 16) | (g << 8) | g;
    }
    offCtx.putImageData(img, 0, 0);
    return [w, hh];
  }

  function boxCentre() {
    if (!ann.box) return [nx / 2 - 0.5, ny / 2 - 0.5, nz / 2 - 0.5];
    const [x1, y1, x2, y2] = ann.box;
    return [(x1 + x2) / 2, (y1 + y2) / 2, ann.z];
  }

  function fitFor(name) {
    // mm extent of the plane's columns / rows, fitted into the panel with its physical aspect;
    // a thin slab (few slices) is magnified around the lesion so that it stays readable
    const [wmm, hmm] = name === "axial" ? [nx * sx, ny * sy] : name === "coronal" ? [nx * sx, nz * sz] : [ny * sy, nz * sz];
    const all = Math.min(S / wmm, S / hmm);
    let sc = all;
    if (name !== "axial" && hmm * sc < 0.35 * S) {
      const b = ann.box ? (name === "coronal" ? (ann.box[2] - ann.box[0]) * sx : (ann.box[3] - ann.box[1]) * sy) : wmm / 4;
      sc = Math.max(all, Math.min(0.35 * S / hmm, S / Math.max(3 * b, 40)));
    }
    sc *= zoom[name];
    const W = wmm * sc, H = hmm * sc, c = boxCentre();
    const [cc, nc, cr, nr] = name === "axial" ? [c[0], nx, c[1], ny] : name === "coronal" ? [c[0], nx, c[2], nz] : [c[1], ny, c[2], nz];
    const place = (len, at, n) => len <= S ? (S - len) / 2 : Math.min(0, Math.max(S - len, S / 2 - ((at + 0.5) / n) * len));
    return { ox: place(W, cc, nc), oy: place(H, cr, nr), W, H };
  }

  function drawPlane(name) {
    const p = panels[name], ctx = p.c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, S, S);
    const [w, hh] = planeImage(name);
    const f = fitFor(name); p.fit = { ...f, w, h: hh };
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(off, 0, 0, w, hh, f.ox, f.oy, f.W, f.H);
    // overlay: cursor lines, box and RECIST where this plane cuts them
    const o = p.ov.getContext("2d");
    o.setTransform(dpr, 0, 0, dpr, 0, 0); o.clearRect(0, 0, S, S);
    const X = (c) => f.ox + ((c + 0.5) / w) * f.W, Y = (r) => f.oy + ((r + 0.5) / hh) * f.H;
    const [z, y, x] = cur;
    const line = (x0, y0, x1, y1, col, dash = []) => {
      o.strokeStyle = col; o.setLineDash(dash); o.beginPath(); o.moveTo(x0, y0); o.lineTo(x1, y1); o.stroke();
    };
    o.lineWidth = 1; o.globalAlpha = 0.6;
    if (name === "axial") { line(X(x), f.oy, X(x), f.oy + f.H, COLORS.sagittal); line(f.ox, Y(y), f.ox + f.W, Y(y), COLORS.coronal); }
    else if (name === "coronal") { line(X(x), f.oy, X(x), f.oy + f.H, COLORS.sagittal); line(f.ox, Y(z), f.ox + f.W, Y(z), COLORS.axial); }
    else { line(X(y), f.oy, X(y), f.oy + f.H, COLORS.coronal); line(f.ox, Y(z), f.ox + f.W, Y(z), COLORS.axial); }
    o.globalAlpha = 1; o.setLineDash([]);
    let onBox = false;
    if (ann.box) {
      const [x1, y1, x2, y2] = ann.box, kz = Math.round(ann.z);
      o.strokeStyle = COLORS.box; o.lineWidth = 2;
      // pixel coordinates are voxel centres: the box spans centres x1..x2
      if (name === "axial") {
        const on = z === kz; onBox = on;
        o.globalAlpha = on ? 1 : 0.45; o.setLineDash(on ? [] : [4, 4]);
        o.strokeRect(X(x1), Y(y1), X(x2) - X(x1), Y(y2) - Y(y1));
        if (on && ann.recist) {
          o.lineWidth = 1.5; o.setLineDash([]);
          const r = ann.recist;
          line(X(r[0][0]), Y(r[0][1]), X(r[1][0]), Y(r[1][1]), "#ff5252");
          line(X(r[2][0]), Y(r[2][1]), X(r[3][0]), Y(r[3][1]), "#40c4ff");
        }
      } else {
        const [a1, a2, across] = name === "coronal" ? [x1, x2, y >= y1 && y <= y2] : [y1, y2, x >= x1 && x <= x2];
        onBox = across;
        o.globalAlpha = across ? 1 : 0.45; o.setLineDash(across ? [] : [4, 4]);
        const half = (0.5 / hh) * f.H;
        o.strokeRect(X(a1), Y(ann.z) - half, X(a2) - X(a1), 2 * half);
      }
      o.globalAlpha = 1; o.setLineDash([]);
    }
    p.box.dataset.onBox = String(onBox);
    const idx = name === "axial" ? `z ${z}` : name === "coronal" ? `y ${y}` : `x ${x}`;
    p.lab.innerHTML = "";
    p.lab.append(h("span", { style: `color:${COLORS[name]}`, text: name }), ` ${idx}`);
  }

  // ---- 3-D -----------------------------------------------------------------------------------
  function poolVolume() {
    // max-pool x, y so that the texture is at most 256 wide (MIP keeps bright features)
    const f = Math.max(1, Math.ceil(Math.max(nx, ny) / 256));
    const px = Math.ceil(nx / f), py = Math.ceil(ny / f);
    const out = new Int16Array(px * py * nz).fill(-32768);
    for (let k = 0; k < nz; k++) for (let j = 0; j < ny; j++) {
      const src = (k * ny + j) * nx, dst = (k * py + ((j / f) | 0)) * px;
      for (let i = 0; i < nx; i++) { const v = vol[src + i], d = dst + ((i / f) | 0); if (v > out[d]) out[d] = v; }
    }
    pooledHU = { data: out, px, py, f };
  }

  function upload3d() {
    const { data, px, py } = pooledHU;
    const win = new Uint8Array(data.length);
    for (let i = 0; i < data.length; i++) win[i] = lut[(data[i] + 32768) & 0xffff];
    pool = { px, py, f: pooledHU.f };
    const { gl, tex } = glState;
    gl.bindTexture(gl.TEXTURE_3D, tex);
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
    gl.texImage3D(gl.TEXTURE_3D, 0, gl.R8, px, py, nz, 0, gl.RED, gl.UNSIGNED_BYTE, win);
  }

  function extNorm() {
    const e = [nx * sx, ny * sy, nz * sz], m = Math.max(...e);
    return e.map((v) => v / m);
  }

  function draw3d() {
    const p = panels["3d"];
    const o = p.ov.getContext("2d");
    o.setTransform(dpr, 0, 0, dpr, 0, 0); o.clearRect(0, 0, S, S);
    if (!glState) { yaw = 0; pitch = 0; } // the CPU projection is always the frontal view
    const ext = extNorm(), M = rotation(yaw, pitch), maxmm = Math.max(nx * sx, ny * sy, nz * sz);
    const world = (x, y, z) => [((x + 0.5) / nx - 0.5) * ext[0], ((y + 0.5) / ny - 0.5) * ext[1], ((z + 0.5) / nz - 0.5) * ext[2]];
    // around the lesion: the slab at least 35 % of the height, the box and 20 mm in view
    const bc = boxCentre(), centre = world(bc[0], bc[1], bc[2]);
    const bhalf = ann.box ? 0.5 * Math.hypot((ann.box[2] - ann.box[0]) * sx, (ann.box[3] - ann.box[1]) * sy) / maxmm : 0;
    const span0 = 0.5 * Math.hypot(...ext) * 1.02;
    const span = Math.min(span0, Math.max(ext[2] / 0.7, 3 * bhalf, 20 / maxmm)) / zoom["3d"];
    if (glState) {
      const { gl, prog, vao, uM, uExt, uSpan, uSteps, uVol } = glState;
      if (dirty3d) { upload3d(); dirty3d = false; }
      gl.viewport(0, 0, p.c.width, p.c.height);
      gl.useProgram(prog); gl.bindVertexArray(vao);
      // column-major mat3: column j = camera axis j in world coordinates
      gl.uniformMatrix3fv(uM, false, new Float32Array([M[0][0], M[1][0], M[2][0], M[0][1], M[1][1], M[2][1], M[0][2], M[1][2], M[2][2]]));
      gl.uniform3f(uExt, ext[0], ext[1], ext[2]); gl.uniform1f(uSpan, span);
      gl.uniform3f(glState.uCentre, centre[0], centre[1], centre[2]);
      const steps = Math.min(768, Math.ceil(1.5 * Math.max(pool.px, pool.py, nz * sz / (sx * pool.f))));
      gl.uniform1i(uSteps, steps);
      gl.activeTexture(gl.TEXTURE0); gl.uniform1i(uVol, 0);
      gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
    } else {
      // CPU fallback: a fixed coronal MIP (max over y), drawn with its physical aspect
      const ctx = p.c.getContext("2d");
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0); ctx.fillStyle = "#000"; ctx.fillRect(0, 0, S, S);
      if (dirty3d) {
        mipCanvas.width = nx; mipCanvas.height = nz;
        const mctx = mipCanvas.getContext("2d");
        const img = mctx.createImageData(nx, nz), px = new Uint32Array(img.data.buffer);
        const mx = new Int16Array(nx);
        for (let k = 0; k < nz; k++) {
          mx.fill(-32768);
          for (let j = 0; j < ny; j++) { const o2 = (k * ny + j) * nx; for (let i = 0; i < nx; i++) if (vol[o2 + i] > mx[i]) mx[i] = vol[o2 + i]; }
          for (let i = 0; i < nx; i++) { const g = lut[(mx[i] + 32768) & 0xffff]; px[k * nx + i] = 0xff000000 | (g << 16) | (g << 8) | g; }
        }
        mctx.putImageData(img, 0, 0);
        dirty3d = false;
      }
      const sc = S / (2 * span);
      const W = ext[0] * sc, H = ext[2] * sc;
      ctx.drawImage(mipCanvas, S / 2 - (centre[0] + ext[0] / 2) * sc, S / 2 - (centre[2] + ext[2] / 2) * sc, W, H);
    }
    // the box outline (and its RECIST) in 3-D, projected with the same camera
    if (ann.box) {
      const [x1, y1, x2, y2] = ann.box;
      const scr = (p) => {
        const w = [p[0] - centre[0], p[1] - centre[1], p[2] - centre[2]];
        const u = M[0][0] * w[0] + M[1][0] * w[1] + M[2][0] * w[2], v = M[0][1] * w[0] + M[1][1] * w[1] + M[2][1] * w[2];
        return [S / 2 + (u / span) * (S / 2), S / 2 - (v / span) * (S / 2)];
      };
      const pts = [[x1, y1], [x2, y1], [x2, y2], [x1, y2]].map(([a, b]) => scr(world(a, b, ann.z)));
      o.strokeStyle = COLORS.box; o.lineWidth = 1.5; o.beginPath();
      pts.forEach(([a, b], i) => (i ? o.lineTo(a, b) : o.moveTo(a, b))); o.closePath(); o.stroke();
    }
    p.lab.textContent = glState ? "3-D MIP (drag to rotate)" : "3-D: coronal MIP (no WebGL2)";
    el.dataset.renderer = glState ? "webgl2" : "cpu";
  }

  function draw() {
    if (!vol) return;
    for (const n of ["axial", "coronal", "sagittal"]) drawPlane(n);
    draw3d();
    pos.textContent = `cursor z ${cur[0]} y ${cur[1]} x ${cur[2]}`;
    el.dataset.renders = String(Number(el.dataset.renders) + 1);
  }
  function schedule() { if (!frame) frame = requestAnimationFrame(() => { frame = 0; draw(); }); }

  // ---- model -> view -------------------------------------------------------------------------
  function syncTitle() {
    title.textContent = model.get("title") || "";
    sub.textContent = model.get("subtitle") || "";
    msg.textContent = model.get("status") || "";
  }
  function syncPresets() {
    const presets = model.get("presets") || {};
    presetSel.innerHTML = "";
    for (const k of [...Object.keys(presets), "custom"]) presetSel.append(h("option", { value: k, text: k }));
    presetSel.value = model.get("preset");
  }
  function syncWindow() {
    level = model.get("window_level"); width = model.get("window_width");
    presetSel.value = model.get("preset");
    buildLut(); dirty3d = true; schedule();
  }
  function syncVolume() {
    const t0 = performance.now();
    recvT = t0;
    const shape = model.get("volume_shape") || [0, 0, 0];
    [nz, ny, nx] = shape; [sz, sy, sx] = model.get("spacing");
    const n = nz * ny * nx;
    const arr = n > 0 ? typed(model.get("volume"), Int16Array) : null;
    vol = arr && arr.length === n ? arr : null;
    serial = model.get("volume_serial");
    ann = model.get("annotation") || {};
    cur = (model.get("cursor") || [0, 0, 0]).slice();
    level = model.get("window_level"); width = model.get("window_width");
    presetSel.value = model.get("preset");
    buildLut(); syncTitle();
    if (!vol) {
      for (const [name, p] of Object.entries(panels)) {
        p.ov.getContext("2d").clearRect(0, 0, p.ov.width, p.ov.height);
        if (name === "3d" && !glFailed) { // never take a 2-D context here: WebGL2 may come later
          if (glState) { glState.gl.clearColor(0, 0, 0, 1); glState.gl.clear(glState.gl.COLOR_BUFFER_BIT); }
          continue;
        }
        const c = p.c.getContext("2d"); c.setTransform(1, 0, 0, 1, 0, 0); c.clearRect(0, 0, p.c.width, p.c.height);
      }
      el.dataset.volumeSerial = String(serial);
      return;
    }
    if (!glState && !glFailed) {
      try { glState = makeGL(panels["3d"].c); } catch (e) { glState = null; el.dataset.glError = String(e); console.warn("volume view: no WebGL2", e); }
      if (!glState) { glFailed = true; el.dataset.glError = el.dataset.glError || "no webgl2 context"; }
    }
    poolVolume(); dirty3d = true; yaw = YAW0; pitch = PITCH0;
    for (const k of Object.keys(zoom)) zoom[k] = 1;
    if (frame) { cancelAnimationFrame(frame); frame = 0; }
    draw();
    const drawn = performance.now();
    requestAnimationFrame(() => {
      el.dataset.volumeSerial = String(serial);
      el.dataset.lesionId = model.get("lesion_id");
      el.dataset.lastDrawMs = (drawn - t0).toFixed(1);
      el.dataset.loadMs = String(model.get("load_ms"));
      if (pending && pending.id === model.get("lesion_id")) {
        el.dataset.lastLatencyMs = (performance.now() - pending.t0).toFixed(1);
        el.dataset.lastArrivedMs = (recvT - pending.t0).toFixed(1);
        pending = null;
      }
    });
  }

  // ---- view -> model -------------------------------------------------------------------------
  function saveCursor() { model.set("cursor", cur.slice()); model.save_changes(); }
  function clampCur() {
    cur = [Math.max(0, Math.min(nz - 1, cur[0])), Math.max(0, Math.min(ny - 1, cur[1])), Math.max(0, Math.min(nx - 1, cur[2]))];
  }
  function pick(name, ev) {
    const p = panels[name]; if (!p.fit) return;
    const r = p.box.getBoundingClientRect(), f = p.fit;
    const c = Math.floor(((ev.clientX - r.left - f.ox) / f.W) * f.w), rr = Math.floor(((ev.clientY - r.top - f.oy) / f.H) * f.h);
    if (name === "axial") { cur[2] = c; cur[1] = rr; }
    else if (name === "coronal") { cur[2] = c; cur[0] = rr; }
    else { cur[1] = c; cur[0] = rr; }
    clampCur(); schedule();
  }
  for (const name of ["axial", "coronal", "sagittal"]) {
    const p = panels[name];
    let mode = null, sx0 = 0, sy0 = 0, l0 = 0, w0 = 0;
    p.box.addEventListener("contextmenu", (e) => e.preventDefault());
    p.box.addEventListener("pointerdown", (e) => {
      if (!vol) return;
      p.box.setPointerCapture(e.pointerId);
      if (e.button === 2 || e.shiftKey) { mode = "window"; sx0 = e.clientX; sy0 = e.clientY; l0 = level; w0 = width; }
      else { mode = "cursor"; pick(name, e); }
    });
    p.box.addEventListener("pointermove", (e) => {
      if (mode === "cursor") pick(name, e);
      else if (mode === "window") {
        width = Math.max(1, w0 + (e.clientX - sx0) * 4); level = l0 + (e.clientY - sy0) * 2;
        buildLut(); dirty3d = true; presetSel.value = "custom"; schedule();
      }
    });
    p.box.addEventListener("pointerup", () => {
      if (mode === "cursor") saveCursor();
      else if (mode === "window") {
        model.set("window_level", level); model.set("window_width", width); model.set("preset", "custom"); model.save_changes();
      }
      mode = null;
    });
    p.box.addEventListener("wheel", (e) => {
      if (!vol) return;
      e.preventDefault();
      if (e.ctrlKey || e.metaKey) { zoom[name] = Math.max(0.5, Math.min(16, zoom[name] * (e.deltaY > 0 ? 1 / 1.25 : 1.25))); schedule(); return; }
      const d = e.deltaY > 0 ? 1 : -1, axis = name === "axial" ? 0 : name === "coronal" ? 1 : 2;
      cur[axis] += d; clampCur(); schedule(); saveCursor();
    }, { passive: false });
  }
  {
    const p = panels["3d"]; let drag = null;
    p.box.addEventListener("pointerdown", (e) => { if (glState) { drag = [e.clientX, e.clientY, yaw, pitch]; p.box.setPointerCapture(e.pointerId); } });
    p.box.addEventListener("pointermove", (e) => {
      if (!drag) return;
      yaw = drag[2] + (e.clientX - drag[0]) * 0.01;
      pitch = Math.max(-1.55, Math.min(1.55, drag[3] + (e.clientY - drag[1]) * 0.01)); schedule();
    });
    p.box.addEventListener("pointerup", () => { drag = null; });
    p.box.addEventListener("dblclick", () => { yaw = YAW0; pitch = PITCH0; zoom["3d"] = 1; schedule(); });
    p.box.addEventListener("wheel", (e) => {
      e.preventDefault(); zoom["3d"] = Math.max(0.5, Math.min(16, zoom["3d"] * (e.deltaY > 0 ? 1 / 1.25 : 1.25))); schedule();
    }, { passive: false });
  }
  presetSel.addEventListener("change", () => {
    const v = presetSel.value, pr = (model.get("presets") || {})[v];
    if (pr) { level = pr[0]; width = pr[1]; buildLut(); dirty3d = true; schedule(); model.set("window_level", level); model.set("window_width", width); }
    model.set("preset", v); model.save_changes();
  });
  // timing hook (tests, benchmarks): ask Python for a lesion, time it until it is on screen
  el.dvvRequest = (id) => {
    pending = { id, t0: performance.now() };
    model.set("requested_lesion", `${id}#${++reqN}`); model.save_changes();
  };

  const handlers = [
    ["change:volume_serial", syncVolume],
    ["change:window_level", syncWindow], ["change:window_width", syncWindow], ["change:preset", syncWindow],
    ["change:presets", syncPresets], ["change:title", syncTitle], ["change:subtitle", syncTitle],
    ["change:status", syncTitle],
  ];
  for (const [ev, fn] of handlers) model.on(ev, fn);
  syncPresets(); syncVolume();
  return () => { for (const [ev, fn] of handlers) model.off(ev, fn); if (frame) cancelAnimationFrame(frame); };
}

export default { render };
