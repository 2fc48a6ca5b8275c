// deeplesion-lab lesion grid: thumbnails sorted and filtered like the map, or a detector's FROC
// cases (misses, false positives). Self-contained anywidget ESM (no imports, no CDN); all text
// is set with textContent.
//
// Model protocol:
//   items       [{lesion_id, label, color, caption, selected, kind, thumb_box}]
//   thumbs      bytes: len(items) * thumb_size^2 uint8 grey thumbnails; thumb_size, page_size
//   offset, total   paging (written here: offset)
//   source ("map" | "misses" | "false positives"), sources; sort_by, sorts, descending,
//   only_selected; models, model_name, fp_rate, fp_rates, threshold (the operating point's
//   score, -1 for lesions)        all written here except the lists
//   click       {index, shift, nonce}   written here
//   status      text (an error)

const STYLE = `
.dlgr{font:12px/1.35 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#e8eaed;
  background:#17191d;border:1px solid #2c2f36;border-radius:8px;padding:8px 10px;display:flex;
  flex-direction:column;gap:6px;box-sizing:border-box}
.dlgr *{box-sizing:border-box}
.dlgr-head{display:flex;align-items:center;gap:6px;flex-wrap:wrap}
.dlgr-title{font-weight:600;font-size:13px;margin-right:4px}
.dlgr select,.dlgr button{background:#23262c;color:#e8eaed;border:1px solid #3a3e46;border-radius:4px;
  padding:1px 6px;font:inherit;cursor:pointer}
.dlgr label{display:inline-flex;align-items:center;gap:3px;color:#c9ccd1;cursor:pointer}
.dlgr-k{color:#9aa0a6}
.dlgr-cells{display:grid;gap:6px}
.dlgr-cell{background:#1f2329;border:2px solid transparent;border-radius:6px;padding:3px;cursor:pointer;min-width:0}
.dlgr-cell:hover{border-color:#3a3e46}
.dlgr-cell.sel{border-color:#4aa3ff}
.dlgr-cell canvas{display:block;border-radius:3px;image-rendering:pixelated}
.dlgr-lab{display:flex;align-items:center;gap:4px;margin-top:2px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.dlgr-dot{width:8px;height:8px;border-radius:50%;flex:none}
.dlgr-cap{color:#9aa0a6;font-size:10.5px;line-height:1.25;overflow-wrap:anywhere}
.dlgr-foot{display:flex;align-items:center;gap:8px;color:#9aa0a6}
.dlgr-err{color:#ff7b7b}
`;

function h(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const k of kids) if (k != null) e.append(k);
  return e;
}

function bytesOf(v) {
  if (v == null) return new Uint8Array(0);
  if (v instanceof DataView) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  if (v instanceof ArrayBuffer) return new Uint8Array(v);
  if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  if (typeof v === "string") {
    const s = atob(v);
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }
  return new Uint8Array(0);
}

function render({ model, el }) {
  const root = h("div", { class: "dlgr" });
  root.append(h("style", { text: STYLE }));
  const sourceSel = h("select", { title: "what the grid lists" });
  const sortSel = h("select", { title: "sort by" });
  const dirBtn = h("button", { title: "ascending / descending" });
  const onlySel = h("input", { type: "checkbox" });
  const onlyLabel = h("label", { title: "only the lesions selected on the map" }, onlySel, "selected only");
  const modelSel = h("select", { title: "whose detections" });
  const fpSel = h("select", { title: "operating point: false positives per image" });
  const lesionCtl = h("span", { class: "dlgr-head" }, h("span", { class: "dlgr-k", text: "sort" }), sortSel, dirBtn, onlyLabel);
  const caseCtl = h("span", { class: "dlgr-head" }, h("span", { class: "dlgr-k", text: "model" }), modelSel,
    h("span", { class: "dlgr-k", text: "at" }), fpSel, h("span", { class: "dlgr-k", text: "FP / image" }));
  root.append(h("div", { class: "dlgr-head" }, h("span", { class: "dlgr-title", text: "Lesions" }), sourceSel, lesionCtl, caseCtl));
  const cells = h("div", { class: "dlgr-cells" });
  const prev = h("button", { text: "‹ prev" }), next = h("button", { text: "next ›" });
  const info = h("span");
  const err = h("span", { class: "dlgr-err" });
  root.append(cells, h("div", { class: "dlgr-foot" }, prev, next, info, err));
  el.append(root);

  let nonce = 0;
  const set = (k, v) => { model.set(k, v); model.save_changes(); };
  sourceSel.addEventListener("change", () => set("source", sourceSel.value));
  sortSel.addEventListener("change", () => set("sort_by", sortSel.value));
  dirBtn.addEventListener("click", () => set("descending", !model.get("descending")));
  onlySel.addEventListener("change", () => set("only_selected", onlySel.checked));
  modelSel.addEventListener("change", () => set("model_name", modelSel.value));
  fpSel.addEventListener("change", () => set("fp_rate", Number(fpSel.value)));
  prev.addEventListener("click", () => set("offset", Math.max(0, model.get("offset") - model.get("page_size"))));
  next.addEventListener("click", () => {
    const o = model.get("offset") + model.get("page_size");
    if (o < model.get("total")) set("offset", o);
  });

  function options(sel, values, current, label = (v) => String(v)) {
    sel.replaceChildren(...values.map((v) => h("option", { value: String(v), text: label(v) })));
    if (values.map(String).includes(String(current))) sel.value = String(current);
  }

  function syncControls() {
    const src = model.get("source");
    options(sourceSel, model.get("sources") || [], src, (v) => v === "map" ? "lesions on the map" : `${v} of a model`);
    options(sortSel, model.get("sorts") || [], model.get("sort_by"), (v) => v === "suggest" ? "suggest-next score" : v);
    dirBtn.textContent = model.get("descending") ? "↓ desc" : "↑ asc";
    onlySel.checked = !!model.get("only_selected");
    options(modelSel, model.get("models") || [], model.get("model_name"));
    options(fpSel, model.get("fp_rates") || [], model.get("fp_rate"), (v) => String(v));
    lesionCtl.style.display = src === "map" ? "" : "none";
    caseCtl.style.display = src === "map" ? "none" : "";
    const o = model.get("offset"), n = model.get("total"), k = (model.get("items") || []).length;
    const thr = model.get("threshold");
    const one = { map: "lesion", misses: "miss", "false positives": "false positive" };
    const what = n === 1 ? one[src] || src : src === "map" ? "lesions" : src;
    info.textContent = `${n ? o + 1 : 0}–${o + k} of ${n.toLocaleString()} ${what}` +
      (src !== "map" && thr >= 0 ? ` · boxes scoring ≥ ${thr.toFixed(2)}` : "");
    prev.disabled = o <= 0; next.disabled = o + k >= n;
    err.textContent = model.get("status") || "";
    el.dataset.total = String(n);
    el.dataset.source = src;
  }

  function syncItems() {
    const s = model.get("thumb_size") || 80;
    const items = model.get("items") || [];
    const g = bytesOf(model.get("thumbs"));
    cells.style.gridTemplateColumns = `repeat(auto-fill, minmax(${s + 10}px, 1fr))`;
    cells.replaceChildren();
    items.forEach((it, i) => {
      const cv = h("canvas", { width: String(s), height: String(s) });
      cv.style.width = `${s}px`; cv.style.height = `${s}px`;
      const ctx = cv.getContext("2d");
      if (g.length >= (i + 1) * s * s) {
        const img = ctx.createImageData(s, s);
        const px = new Uint32Array(img.data.buffer);
        for (let j = 0; j < s * s; j++) { const v = g[i * s * s + j]; px[j] = 0xff000000 | (v << 16) | (v << 8) | v; }
        ctx.putImageData(img, 0, 0);
      }
      const b = it.thumb_box;
      if (b && b.length === 4) {
        ctx.strokeStyle = it.kind === "false positive" ? "#4aa3ff" : "#f5c542"; ctx.lineWidth = 1.2;
        if (it.kind === "false positive") ctx.setLineDash([]);
        ctx.strokeRect(b[0] + 0.5, b[1] + 0.5, b[2] - b[0], b[3] - b[1]);
      }
      const cell = h("div", { class: "dlgr-cell" + (it.selected ? " sel" : ""), title: `${it.lesion_id}\nclick: show in the viewer${it.kind === "lesion" ? " and select (shift: add)" : ""}` },
        cv,
        h("div", { class: "dlgr-lab" }, h("span", { class: "dlgr-dot", style: `background:${it.color || "#bbb"}` }), h("span", { text: it.label || "" })),
        h("div", { class: "dlgr-cap", text: it.caption || "" }));
      cell.dataset.index = String(i);
      cell.dataset.lesionId = it.lesion_id;
      cell.addEventListener("click", (ev) => set("click", { index: i, shift: ev.shiftKey, nonce: ++nonce }));
      cells.append(cell);
    });
    syncControls();
  }

  const handlers = [
    ["change:items", syncItems], ["change:thumbs", syncItems],
    ...["source", "sources", "sort_by", "sorts", "descending", "only_selected", "models", "model_name",
      "fp_rate", "fp_rates", "offset", "total", "threshold", "status"].map((k) => [`change:${k}`, syncControls]),
  ];
  for (const [ev, fn] of handlers) model.on(ev, fn);
  syncItems();
  return () => { for (const [ev, fn] of handlers) model.off(ev, fn); };
}

export default { render };
