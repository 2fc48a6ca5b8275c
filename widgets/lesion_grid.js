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
//   has_tags, tags [{tag, n}], tag_filter [tag...], confidence [lo, hi] or []   (filters written
//               here), selection_count, user
//   split_filter, type_filter [names] (written here), filter_options {splits, types, suggest},
//   suggest_min (number | null; written here)
//   has_views, views [{owner, name, n_selected, updated_at, mine}]
//   class_table [{class, lesions, hit, sensitivity, misses, false_positives}], class_name
//               (written here)
//   request     {op: tag|untag|undo|save_view|load_view|delete_view|open_class, ..., nonce}
//               written here; answer {nonce, ok, message}
// uses widgets/_helpers.js (h, bytesOf, typed: put in front of this file by LabWidget)

function render({ model, el }) {
  const root = h("div", { class: "dlgr" });
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
  // tags, filters and saved views (lesions on the map)
  const selInfo = h("span", { class: "dlgr-k" });
  const tagIn = h("input", { type: "text", placeholder: "tag", size: "10", list: "" });
  const tagBtn = h("button", { text: "Tag", title: "add this tag to the selected lesions" });
  const untagBtn = h("button", { text: "Untag", title: "remove this tag from the selected lesions" });
  const undoBtn = h("button", { text: "Undo", title: "undo your latest change (tags and labels)" });
  const tagFilter = h("select", { title: "show only the lesions with this tag" });
  const confLo = h("input", { type: "number", min: "0", max: "1", step: "0.05", placeholder: "0", title: "pseudo-label confidence from" });
  const confHi = h("input", { type: "number", min: "0", max: "1", step: "0.05", placeholder: "1", title: "pseudo-label confidence to" });
  const tagTools = h("span", { class: "dlgr-head" }, selInfo, tagIn, tagBtn, untagBtn, undoBtn);
  const splitFilter = h("select", { title: "split shown" });
  const typeFilter = h("select", { title: "annotated (official) type shown" });
  const suggestMin = h("input", { type: "number", min: "0", step: "0.05", placeholder: "any", title: "least suggest-next score (the likelier mistakes)" });
  const suggestBox = h("span", { class: "dlgr-head" }, h("span", { class: "dlgr-k", text: "suggest ≥" }), suggestMin);
  const filterTools = h("span", { class: "dlgr-head" }, h("span", { class: "dlgr-k", text: "split" }), splitFilter,
    h("span", { class: "dlgr-k", text: "type" }), typeFilter, h("span", { class: "dlgr-k", text: "tag" }), tagFilter,
    h("span", { class: "dlgr-k", text: "confidence" }), confLo, h("span", { class: "dlgr-k", text: "–" }), confHi, suggestBox);
  const viewSel = h("select", { title: "saved views (yours first; everyone's can be loaded)" });
  const loadBtn = h("button", { text: "Load" });
  const delBtn = h("button", { text: "Delete", title: "delete your own view" });
  const viewName = h("input", { type: "text", placeholder: "view name", size: "12" });
  const saveBtn = h("button", { text: "Save view", title: "save filters, sort and selection under this name" });
  const viewTools = h("span", { class: "dlgr-head" }, h("span", { class: "dlgr-k", text: "views" }), viewSel, loadBtn, delBtn, viewName, saveBtn);
  const tools = h("div", { class: "dlgr-tools" }, tagTools, filterTools, viewTools);
  const answer = h("span");
  // the per-class FROC table (misses / false positives of a model)
  const clsTable = h("table", { class: "dlgr-cls" });
  root.append(tools, clsTable, cells, h("div", { class: "dlgr-foot" }, prev, next, info, err, answer));
  el.append(root);

  let nonce = 0;
  const set = (k, v) => { model.set(k, v); model.save_changes(); };
  const ask = (op, args = {}) => { answer.className = "dlgr-k"; answer.textContent = "…"; set("request", { op, ...args, nonce: ++nonce }); };
  tagBtn.addEventListener("click", () => ask("tag", { tag: tagIn.value }));
  untagBtn.addEventListener("click", () => ask("untag", { tag: tagIn.value }));
  tagIn.addEventListener("keydown", (ev) => { if (ev.key === "Enter") ask("tag", { tag: tagIn.value }); ev.stopPropagation(); });
  undoBtn.addEventListener("click", () => ask("undo"));
  tagFilter.addEventListener("change", () => set("tag_filter", tagFilter.value ? [tagFilter.value] : []));
  splitFilter.addEventListener("change", () => set("split_filter", splitFilter.value ? [splitFilter.value] : []));
  typeFilter.addEventListener("change", () => set("type_filter", typeFilter.value ? [typeFilter.value] : []));
  suggestMin.addEventListener("change", () => set("suggest_min", suggestMin.value === "" ? null : Number(suggestMin.value)));
  const confChanged = () => {
    const lo = confLo.value === "" ? null : Number(confLo.value), hi = confHi.value === "" ? null : Number(confHi.value);
    set("confidence", lo == null && hi == null ? [] : [lo ?? 0, hi ?? 1]);
  };
  confLo.addEventListener("change", confChanged);
  confHi.addEventListener("change", confChanged);
  const viewOf = () => (model.get("views") || [])[Number(viewSel.value)];
  loadBtn.addEventListener("click", () => { const v = viewOf(); if (v) ask("load_view", { name: v.name, owner: v.owner }); });
  delBtn.addEventListener("click", () => { const v = viewOf(); if (v) ask("delete_view", { name: v.name }); });
  saveBtn.addEventListener("click", () => ask("save_view", { name: viewName.value }));
  viewName.addEventListener("keydown", (ev) => ev.stopPropagation());
  viewSel.addEventListener("change", () => { const v = viewOf(); delBtn.disabled = !v || !v.mine; });
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
    tools.style.display = src === "map" && (model.get("has_tags") || model.get("has_views")) ? "" : "none";
    tagTools.style.display = model.get("has_tags") ? "" : "none";
    const tagList = model.get("tags") || [];
    const tf = (model.get("tag_filter") || [])[0] || "";
    options(tagFilter, ["", ...tagList.map((x) => x.tag)], tf, (v) => v === "" ? "any" : `${v} (${(tagList.find((x) => x.tag === v) || {}).n || 0})`);
    tagFilter.disabled = !model.get("has_tags");
    const fo = model.get("filter_options") || {};
    const single = (v) => (v || []).length === 1 ? v[0] : "";
    options(splitFilter, ["", ...(fo.splits || [])], single(model.get("split_filter")), (v) => v === "" ? "any" : v);
    options(typeFilter, ["", ...(fo.types || [])], single(model.get("type_filter")), (v) => v === "" ? "any" : v);
    suggestBox.style.display = fo.suggest ? "" : "none";
    const sm = model.get("suggest_min");
    if (document.activeElement !== suggestMin) suggestMin.value = sm == null ? "" : String(sm);
    const conf = model.get("confidence") || [];
    if (document.activeElement !== confLo) confLo.value = conf.length ? String(conf[0]) : "";
    if (document.activeElement !== confHi) confHi.value = conf.length ? String(conf[1]) : "";
    const nSel = model.get("selection_count") || 0;
    selInfo.textContent = `${nSel.toLocaleString()} selected`;
    tagBtn.disabled = untagBtn.disabled = nSel === 0;
    viewTools.style.display = model.get("has_views") ? "" : "none";
    const views = model.get("views") || [];
    const keep = viewSel.value;
    viewSel.replaceChildren(...views.map((v, i) => h("option", { value: String(i), text: `${v.name} · ${v.mine ? "yours" : v.owner} (${v.n_selected} sel.)` })));
    if (keep !== "" && Number(keep) < views.length) viewSel.value = keep;
    const cur = viewOf();
    loadBtn.disabled = !cur; delBtn.disabled = !cur || !cur.mine;
    syncClasses(src);
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

  function syncClasses(src) {
    const rows = model.get("class_table") || [];
    const current = model.get("class_name") || "";
    clsTable.style.display = src !== "map" && rows.length ? "" : "none";
    const head = h("tr", {}, ...["class", "lesions", "hit", "sensitivity", "misses", "false positives"].map((t) => h("th", { text: t })));
    const link = (r, kind, n) => {
      const b = h("button", { text: String(n), title: `show the ${kind} of ${r.class}` });
      b.disabled = n === 0;
      b.dataset.cls = r.class; b.dataset.kind = kind;
      b.addEventListener("click", () => ask("open_class", { class: r.class, kind }));
      return b;
    };
    const body = rows.map((r) => {
      const tr = h("tr", { class: r.class === current ? "cur" : "" },
        h("td", { text: r.class }), h("td", { text: String(r.lesions) }), h("td", { text: String(r.hit) }),
        h("td", { text: r.sensitivity == null ? "–" : r.sensitivity.toFixed(2) }),
        h("td", {}, link(r, "misses", r.misses)), h("td", {}, link(r, "false positives", r.false_positives)));
      tr.dataset.cls = r.class;
      return tr;
    });
    const all = h("button", { text: "all classes" });
    all.disabled = !current;
    all.addEventListener("click", () => set("class_name", ""));
    clsTable.replaceChildren(head, ...body, h("tr", {}, h("td", { colspan: "6" }, all,
      h("span", { class: "dlgr-k", text: current ? `  showing ${current} only` : "" }))));
  }

  function syncAnswer() {
    const a = model.get("answer") || {};
    answer.className = a.ok ? "dlgr-ok" : "dlgr-err";
    answer.textContent = a.message || "";
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
        h("div", { class: "dlgr-cap", text: it.caption || "" }),
        (it.tags || []).length ? h("div", { class: "dlgr-tags" }, ...it.tags.map((tg) => h("span", { class: "dlgr-tag", text: tg }))) : null);
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
      "fp_rate", "fp_rates", "offset", "total", "threshold", "status", "tags", "tag_filter", "confidence",
      "views", "selection_count", "class_table", "class_name", "has_tags", "has_views", "split_filter",
      "type_filter", "filter_options", "suggest_min"].map((k) => [`change:${k}`, syncControls]),
    ["change:answer", syncAnswer],
  ];
  for (const [ev, fn] of handlers) model.on(ev, fn);
  syncItems();
  return () => { for (const [ev, fn] of handlers) model.off(ev, fn); };
}

export default { render };
