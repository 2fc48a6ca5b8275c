// deeplesion-lab slice viewer: a self-contained anywidget ESM front end (no imports, no CDN).
//
// Model protocol (the same names work as Panel AnyWidgetComponent parameters):
//   image            bytes   raw HU of the slice, int16 little-endian, row-major
//   image_shape      [h, w]
//   image_slice      int     slice index the image belongs to
//   slices           [int]   slice indices present on disk; key_slice: the lesion's key slice
//   slice_index      int     requested slice (written by this front end: wheel, slider, keys)
//   window_level, window_width (HU), preset (name), presets {name: [level, width]}
//   annotations      [{lesion_id, box, recist, label, color, current, long_mm, short_mm}]
//   predictions      [{box, score, label, color}]   candidates: same, mined unannotated lesions
//   show_annotations, show_predictions, show_candidates (bool), score_threshold (0-1): hides
//                    predictions and candidates scoring below it
//   prediction_models [name]  models of the run with predictions; prediction_model: the one shown
//   spacing          mm per pixel; title, subtitle, status (text); canvas_size (css px)
// Windowing happens here, so a window drag never waits for the server.
// uses widgets/_helpers.js (h, bytesOf, typed: put in front of this file by LabWidget)

// one colour per layer, the same in the legend and on the image (the class is in the tag)
const COLORS = { annotations: "#f5c542", predictions: "#4aa3ff", candidates: "#ff5ad9" };
const REVIEW_COLORS = { accepted: "#3ddc84", rejected: "#9aa0a6" };

function render({ model, el }) {
  const size = Math.max(200, model.get("canvas_size") || 512);
  const root = h("div", { class: "dlv", style: `width:${size + 18}px` });
  const title = h("span", { class: "dlv-title" });
  const sub = h("span", { class: "dlv-sub" });
  root.append(h("div", { class: "dlv-head" }, title, sub));

  // toolbar: window preset, level/width readout, score threshold; then the overlay toggles,
  // which double as the legend (each shows the style it draws)
  const presetSel = h("select", { title: "window preset (or drag with the right button)" });
  const wl = h("span", { class: "dlv-wl" });
  const thr = h("input", { type: "range", min: "0", max: "1", step: "0.01", title: "hide predicted boxes and candidates scoring below", style: "width:90px" });
  const modelSel = h("select", { class: "dlv-model", title: "whose predictions are drawn" });
  modelSel.addEventListener("change", () => { model.set("prediction_model", modelSel.value); model.save_changes(); });
  const thrVal = h("span", { class: "dlv-num", style: "min-width:34px;text-align:left" });
  thr.addEventListener("input", () => {
    thrVal.textContent = Number(thr.value).toFixed(2);
    model.set("score_threshold", Number(thr.value)); model.save_changes(); schedule();
  });
  const modelLabel = h("label", { title: "whose predictions are drawn" }, "model", modelSel);
  root.append(h("div", { class: "dlv-bar" }, presetSel, wl, modelLabel,
    h("label", { title: "hide predicted boxes and candidates scoring below", style: "margin-left:auto" }, "score ≥", thr, thrVal)));
  const toggles = {};
  const legend = h("div", { class: "dlv-legend" });
  const sw = (style) => h("span", { class: "dlv-sw", style });
  for (const [key, name, style] of [
    ["annotations", "annotated box + RECIST", `border:2px solid ${COLORS.annotations}`],
    ["predictions", "predicted (class, score)", `border:2px solid ${COLORS.predictions}`],
    ["candidates", "mined candidate", `border:2px dashed ${COLORS.candidates}`],
  ]) {
    const cb = h("input", { type: "checkbox" });
    cb.addEventListener("change", () => { model.set(`show_${key}`, cb.checked); model.save_changes(); schedule(); });
    toggles[key] = cb;
    legend.append(h("label", { title: `show or hide: ${name}` }, cb, sw(style), name));
  }
  root.append(legend);

  // the stage: image canvas + overlay drawn on the same canvas
  const stage = h("div", { class: "dlv-stage", tabindex: "0", style: `width:${size}px;height:${size}px` });
  const canvas = h("canvas");
  const dpr = Math.max(1, window.devicePixelRatio || 1);
  canvas.width = Math.round(size * dpr); canvas.height = Math.round(size * dpr);
  canvas.style.width = `${size}px`; canvas.style.height = `${size}px`;
  const msg = h("div", { class: "dlv-msg" });
  const readout = h("div", { class: "dlv-hu" });
  stage.append(canvas, msg, readout);
  root.append(stage);
  const ctx = canvas.getContext("2d");

  const slider = h("input", { type: "range", min: "0", max: "0", step: "1", title: "slice" });
  const sliceNum = h("span", { class: "dlv-num" });
  root.append(h("div", { class: "dlv-slider" }, slider, sliceNum));

  root.append(h("div", { class: "dlv-help", text: "wheel / ↑↓: slice · ctrl+wheel or +/−: zoom · drag: pan · right- or shift-drag: level/width · 0: reset · k: key slice" }));
  el.append(root);

  // ---- state ---------------------------------------------------------------------------------
  let img = null, iw = 0, ih = 0, imgSlice = -1;
  const off = document.createElement("canvas");
  const offCtx = off.getContext("2d");
  let offData = null, lutLo = NaN, lutHi = NaN, dirtyImage = true;
  const lut = new Uint8Array(65536);
  let level = model.get("window_level"), width = model.get("window_width");
  let zoom = 1, panX = 0, panY = 0;
  let pending = null; // {slice, t0} for round-trip timing
  let frame = 0;
  el.dataset.renders = "0";

  function schedule() { if (!frame) frame = requestAnimationFrame(() => { frame = 0; draw(); }); }

  function buildLut() {
    const lo = level - width / 2, hi = level + width / 2;
    if (lo === lutLo && hi === lutHi) return false;
    const sc = 255 / Math.max(hi - lo, 1e-6);
    for (let i = 0; i < 65536; i++) {
      const v = (i - 32768 - lo) * sc;
      lut[i] = v <= 0 ? 0 : v >= 255 ? 255 : (v + 0.5) | 0;
    }
    lutLo = lo; lutHi = hi;
    return true;
  }

  function windowImage() {
    if (!img) return;
    if (off.width !== iw || off.height !== ih) { off.width = iw; off.height = ih; offData = null; }
    if (!offData) offData = offCtx.createImageData(iw, ih);
    const px = new Uint32Array(offData.data.buffer);
    const n = iw * ih;
    for (let i = 0; i < n; i++) {
      const g = lut[img[i] + 32768];
      px[i] = 0xff000000 | (g << 16) | (g << 8) | g;
    }
    offCtx.putImageData(offData, 0, 0);
  }

  // image <-> screen (css px)
  function baseScale() { return iw && ih ? Math.min(size / iw, size / ih) : 1; }
  function scale() { return baseScale() * zoom; }
  function toScreen(x, y) {
    const s = scale();
    return [size / 2 + (x - iw / 2) * s + panX, size / 2 + (y - ih / 2) * s + panY];
  }
  function toImage(sx, sy) {
    const s = scale();
    return [(sx - size / 2 - panX) / s + iw / 2, (sy - size / 2 - panY) / s + ih / 2];
  }

  // tags never overlap: one that would cover an earlier one is left out (its box stays)
  let tags = [];
  function tag(text, x, y, color, dot) {
    ctx.font = "600 11px system-ui,sans-serif";
    const w = ctx.measureText(text).width + 8 + (dot ? 10 : 0);
    const ty = y - 17 < 2 ? y + 3 : y - 17;
    x = Math.max(2, Math.min(x, size - w - 2));  // inside the canvas
    if (tags.some((r) => x < r[0] + r[2] && r[0] < x + w && ty < r[1] + 15 && r[1] < ty + 15)) return false;
    tags.push([x, ty, w, 15]);
    ctx.fillStyle = "rgba(0,0,0,0.72)";
    ctx.fillRect(x, ty, w, 15);
    let tx = x + 4;
    if (dot) { ctx.fillStyle = dot; ctx.beginPath(); ctx.arc(x + 8, ty + 7.5, 3.5, 0, 7); ctx.fill(); tx += 10; }
    ctx.fillStyle = color;
    ctx.fillText(text, tx, ty + 11.5);
    return true;
  }

  function boxPath(b) {
    const [x1, y1] = toScreen(b[0], b[1]);
    const [x2, y2] = toScreen(b[2], b[3]);
    return [Math.round(x1) + 0.5, Math.round(y1) + 0.5, Math.round(x2 - x1), Math.round(y2 - y1)];
  }

  function draw() {
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, size, size);
    if (!img) return;
    if (buildLut() || dirtyImage) { windowImage(); dirtyImage = false; }
    const s = scale();
    const [x0, y0] = toScreen(0, 0);
    ctx.imageSmoothingEnabled = s < 2;
    ctx.drawImage(off, x0, y0, iw * s, ih * s);
    const lw = 1.5;
    const t = model.get("score_threshold") || 0;
    tags = [];
    let shown = { annotations: 0, predictions: 0, candidates: 0 };
    // annotations first (their tags win): box in the annotation colour + RECIST diameters;
    // the tag names the current label, with its class colour as a dot
    if (model.get("show_annotations")) {
      for (const a of model.get("annotations") || []) {
        const col = COLORS.annotations;
        const [x, y, w, hh] = boxPath(a.box);
        ctx.setLineDash([]);
        ctx.lineWidth = a.current ? 2.2 : 1.4;
        ctx.strokeStyle = col; ctx.globalAlpha = a.current ? 1 : 0.8;
        ctx.strokeRect(x, y, w, hh);
        const r = a.recist || [];
        if (r.length === 8) {
          ctx.lineWidth = 1.6;
          for (const [i, dash] of [[0, []], [4, [3, 2]]]) {
            const [ax, ay] = toScreen(r[i], r[i + 1]);
            const [bx, by] = toScreen(r[i + 2], r[i + 3]);
            ctx.setLineDash(dash);
            ctx.strokeStyle = "#ffffff";
            ctx.beginPath(); ctx.moveTo(ax, ay); ctx.lineTo(bx, by); ctx.stroke();
            ctx.setLineDash([]);
            ctx.fillStyle = col;
            for (const [px, py] of [[ax, ay], [bx, by]]) { ctx.beginPath(); ctx.arc(px, py, 2.2, 0, 7); ctx.fill(); }
          }
        }
        ctx.globalAlpha = 1;
        const mm = a.long_mm != null ? ` ${a.long_mm}×${a.short_mm} mm` : "";
        tag(`${a.label}${mm}${a.noisy ? " (noisy)" : ""}`, x, y, col, a.color);
        shown.annotations += 1;
      }
    }
    // predictions (thin solid blue, "class score" tag), best first
    if (model.get("show_predictions")) {
      for (const p of model.get("predictions") || []) {
        if (p.score < t) continue;
        const [x, y, w, hh] = boxPath(p.box);
        ctx.strokeStyle = COLORS.predictions; ctx.lineWidth = lw; ctx.setLineDash([]);
        ctx.strokeRect(x, y, w, hh);
        tag(`${p.label || "lesion"} ${p.score.toFixed(2)}`, x, y, COLORS.predictions);
        shown.predictions += 1;
      }
    }
    // mined candidates (dashed magenta), under the same score threshold; in a review, the one
    // under review is drawn thick whatever its score, decided ones green (accepted) or grey
    if (model.get("show_candidates")) {
      for (const c of model.get("candidates") || []) {
        if (!c.current && c.score != null && c.score < t) continue;
        const [x, y, w, hh] = boxPath(c.box);
        const col = REVIEW_COLORS[c.status] || COLORS.candidates;
        ctx.strokeStyle = col; ctx.lineWidth = c.current ? 3 : lw;
        ctx.setLineDash(c.status === "rejected" ? [2, 3] : [5, 4]);
        ctx.globalAlpha = c.status === "rejected" && !c.current ? 0.6 : 1;
        ctx.strokeRect(x, y, w, hh);
        ctx.setLineDash([]); ctx.globalAlpha = 1;
        const what = c.current ? "reviewing" : (c.status && c.status !== "pending" ? c.status : "candidate");
        tag(`${what}${c.score != null ? " " + c.score.toFixed(2) : ""}`, x, y + hh + 20,
            c.current ? "#ffffff" : (c.status === "pending" || !c.status ? "#ff9ceb" : col));
        shown.candidates += 1;
      }
    }
    el.dataset.shownAnnotations = String(shown.annotations);
    el.dataset.shownPredictions = String(shown.predictions);
    el.dataset.shownCandidates = String(shown.candidates);
    ctx.setLineDash([]);
    // scale bar (10 mm) and slice position
    const sp = model.get("spacing");
    if (sp > 0) {
      const len = (10 / sp) * s;
      ctx.strokeStyle = "#e8eaed"; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.moveTo(size - 14 - len, size - 14); ctx.lineTo(size - 14, size - 14); ctx.stroke();
      ctx.fillStyle = "#e8eaed"; ctx.font = "11px system-ui,sans-serif";
      ctx.textAlign = "right"; ctx.fillText("10 mm", size - 14, size - 19); ctx.textAlign = "left";
    }
    ctx.fillStyle = "rgba(232,234,237,0.85)"; ctx.font = "11px system-ui,sans-serif";
    const key = model.get("key_slice");
    ctx.fillText(`slice ${imgSlice}${imgSlice === key ? " (key)" : ""}  zoom ${zoom.toFixed(1)}×`, 8, size - 10);
    el.dataset.renders = String(Number(el.dataset.renders) + 1);
  }

  // ---- model -> view -------------------------------------------------------------------------
  function syncImage() {
    const shape = model.get("image_shape") || [0, 0];
    const data = model.get("image");
    const n = (shape[0] || 0) * (shape[1] || 0);
    const arr = n ? typed(data, Int16Array) : null;
    if (!arr || arr.length < n) {
      img = null; iw = ih = 0;
      msg.textContent = model.get("status") || "no image";
    } else {
      const resized = ih !== shape[0] || iw !== shape[1];
      img = arr; ih = shape[0]; iw = shape[1];
      if (resized) { zoom = 1; panX = panY = 0; }
      msg.textContent = "";
    }
    imgSlice = model.get("image_slice");
    dirtyImage = true;
    el.dataset.imageSlice = String(imgSlice);
    syncSlider();
    if (pending && pending.slice === imgSlice) {
      const t0 = pending.t0;
      pending = null;
      frame && cancelAnimationFrame(frame); frame = 0;
      draw();
      requestAnimationFrame(() => {
        const ms = performance.now() - t0;
        el.dataset.lastLatencyMs = ms.toFixed(2);
        (globalThis.__dlViewerLatencies ||= []).push(ms);
      });
    } else {
      schedule();
    }
  }

  function syncSlider() {
    const sl = model.get("slices") || [];
    slider.max = String(Math.max(sl.length - 1, 0));
    const cur = pending ? pending.slice : model.get("image_slice");
    const i = sl.indexOf(cur);
    if (i >= 0) slider.value = String(i);
    const key = model.get("key_slice");
    sliceNum.textContent = sl.length ? `${cur} · ${i + 1}/${sl.length}${cur === key ? " key" : ""}` : "";
  }

  function syncWindow() {
    level = model.get("window_level"); width = model.get("window_width");
    wl.textContent = `L ${Math.round(level)}  W ${Math.round(width)}`;
    const p = model.get("preset");
    if ([...presetSel.options].some((o) => o.value === p)) presetSel.value = p;
    schedule();
  }

  function syncPresets() {
    presetSel.replaceChildren();
    const names = ["dicom", ...Object.keys(model.get("presets") || {}), "custom"];
    for (const n of names) presetSel.append(h("option", { value: n, text: n === "dicom" ? "DICOM (lesion)" : n }));
    syncWindow();
  }

  function syncModels() {
    const names = model.get("prediction_models") || [];
    modelSel.replaceChildren(...names.map((n) => h("option", { value: n, text: n })));
    modelLabel.style.display = names.length ? "" : "none";
    if (names.includes(model.get("prediction_model"))) modelSel.value = model.get("prediction_model");
  }

  function syncToggles() {
    for (const k of Object.keys(toggles)) toggles[k].checked = !!model.get(`show_${k}`);
    thr.value = String(model.get("score_threshold") ?? 0.5);
    thrVal.textContent = Number(thr.value).toFixed(2);
    schedule();
  }

  function syncTitle() {
    title.textContent = model.get("title") || "";
    sub.textContent = model.get("subtitle") || "";
  }

  // ---- view -> model -------------------------------------------------------------------------
  function requestSlice(s) {
    const cur = pending ? pending.slice : model.get("image_slice");
    if (s === cur || s == null) return;
    pending = { slice: s, t0: performance.now() };
    model.set("slice_index", s);
    model.save_changes();
    syncSlider();
  }
  function stepSlice(d) {
    const sl = model.get("slices") || [];
    if (!sl.length) return;
    const cur = pending ? pending.slice : model.get("image_slice");
    let i = sl.indexOf(cur);
    if (i < 0) i = 0;
    requestSlice(sl[Math.min(Math.max(i + d, 0), sl.length - 1)]);
  }
  function sendWindow() {
    model.set("window_level", level); model.set("window_width", width);
    model.set("preset", "custom"); model.save_changes();
  }

  slider.addEventListener("input", () => {
    const sl = model.get("slices") || [];
    requestSlice(sl[Number(slider.value)]);
  });
  presetSel.addEventListener("change", () => { model.set("preset", presetSel.value); model.save_changes(); });

  let wheelAcc = 0;
  stage.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const r = canvas.getBoundingClientRect();
    if (ev.ctrlKey || ev.metaKey) {
      const [mx, my] = [ev.clientX - r.left, ev.clientY - r.top];
      const [ix, iy] = toImage(mx, my);
      zoom = Math.min(Math.max(zoom * Math.exp(-ev.deltaY * 0.0015), 0.5), 16);
      const [sx, sy] = toScreen(ix, iy);
      panX += mx - sx; panY += my - sy;
      schedule();
      return;
    }
    wheelAcc += ev.deltaMode === 1 ? ev.deltaY * 33 : ev.deltaY;
    while (Math.abs(wheelAcc) >= 50) {
      stepSlice(wheelAcc > 0 ? 1 : -1);
      wheelAcc -= Math.sign(wheelAcc) * 50;
    }
  }, { passive: false });

  let drag = null;
  stage.addEventListener("contextmenu", (ev) => ev.preventDefault());
  stage.addEventListener("pointerdown", (ev) => {
    stage.focus();
    const win = ev.button === 2 || ev.shiftKey;
    drag = { x: ev.clientX, y: ev.clientY, win, level, width, panX, panY };
    stage.setPointerCapture(ev.pointerId);
    stage.style.cursor = win ? "crosshair" : "grabbing";
  });
  stage.addEventListener("pointermove", (ev) => {
    const r = canvas.getBoundingClientRect();
    const [ix, iy] = toImage(ev.clientX - r.left, ev.clientY - r.top);
    if (img) {
      const x = Math.floor(ix), y = Math.floor(iy);
      readout.textContent = x >= 0 && y >= 0 && x < iw && y < ih ? `x ${x}  y ${y}  ${img[y * iw + x]} HU` : "";
    }
    if (!drag) return;
    const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
    if (drag.win) {
      width = Math.max(1, drag.width * Math.exp(dx * 0.005));
      level = drag.level - dy * Math.max(drag.width, 50) * 0.004;
      wl.textContent = `L ${Math.round(level)}  W ${Math.round(width)}`;
      presetSel.value = "custom";
    } else {
      panX = drag.panX + dx; panY = drag.panY + dy;
    }
    schedule();
  });
  const endDrag = () => {
    if (drag && drag.win && (level !== drag.level || width !== drag.width)) sendWindow();
    drag = null; stage.style.cursor = "grab";
  };
  stage.addEventListener("pointerup", endDrag);
  stage.addEventListener("pointercancel", endDrag);
  stage.addEventListener("pointerleave", () => { readout.textContent = ""; });
  stage.addEventListener("dblclick", () => { zoom = 1; panX = panY = 0; schedule(); });
  stage.addEventListener("keydown", (ev) => {
    const k = ev.key;
    if (k === "ArrowUp" || k === "ArrowLeft") stepSlice(-1);
    else if (k === "ArrowDown" || k === "ArrowRight") stepSlice(1);
    else if (k === "PageUp") stepSlice(-5);
    else if (k === "PageDown") stepSlice(5);
    else if (k === "Home") stepSlice(-1e6);
    else if (k === "End") stepSlice(1e6);
    else if (k === "k") requestSlice(model.get("key_slice"));
    else if (k === "+" || k === "=") { zoom = Math.min(zoom * 1.25, 16); schedule(); }
    else if (k === "-") { zoom = Math.max(zoom / 1.25, 0.5); schedule(); }
    else if (k === "0") { zoom = 1; panX = panY = 0; schedule(); }
    else return;
    ev.preventDefault();
  });

  const handlers = [
    ["change:image", syncImage], ["change:image_shape", syncImage], ["change:image_slice", syncImage],
    ["change:slices", syncSlider], ["change:key_slice", syncSlider],
    ["change:window_level", syncWindow], ["change:window_width", syncWindow], ["change:preset", syncWindow],
    ["change:presets", syncPresets],
    ["change:annotations", schedule], ["change:predictions", schedule], ["change:candidates", schedule],
    ["change:show_annotations", syncToggles], ["change:show_predictions", syncToggles],
    ["change:show_candidates", syncToggles], ["change:score_threshold", syncToggles],
    ["change:prediction_models", syncModels], ["change:prediction_model", syncModels],
    ["change:spacing", schedule], ["change:title", syncTitle], ["change:subtitle", syncTitle],
    ["change:status", syncImage],
  ];
  for (const [ev, fn] of handlers) model.on(ev, fn);
  syncPresets(); syncModels(); syncToggles(); syncTitle(); syncImage();
  return () => { for (const [ev, fn] of handlers) model.off(ev, fn); if (frame) cancelAnimationFrame(frame); };
}

export default { render };
