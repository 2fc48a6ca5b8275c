// deeplesion-lab correction panel: relabel, clusters, merge, split, classes, undo/redo,
// "suggest next" and history. Self-contained anywidget ESM (no imports, no CDN).
// All text from the store (class names, comments, users) is set with textContent: never HTML.
//
// Model protocol (also usable as Panel AnyWidgetComponent parameters):
//   user                 text
//   classes              [{name, color, n}]
//   selection_count      int;  selection_labels {label: n}
//   clusters             [{cluster, label, n}]
//   history              [{event, time, user, tool, op, n, comment, detail, undone}]
//   poll_seconds         how often to ask for other annotators' changes (0: never)
//   suggestions          [{lesion_id, label, score, reason, point}]
//   request              {op, ..., nonce}  written here: relabel | relabel_cluster | merge |
//                        split | add_class | undo | redo | suggest | select_cluster | show |
//                        clear_selection | refresh | mark (not a lesion / unsure) | poll |
//                        show_simulated
//   status               {nonce, ok, message}  the answer to the last request
//   lab_actions          bool: offer Snapshot and Export (requests snapshot {name}, export {format})
//   show_simulated       bool: list the pipeline's simulated annotator's events in the history
//                        (changed with the request op show_simulated {show})
//   simulated            {events, lesions, users}: how many such events the store holds
// Keys (while working in the lab: after a click in its cell, not while typing in a field):
//   1-9 relabel the selection with the n-th class of the list, u undo my last change.
// uses widgets/_helpers.js (h, bytesOf, typed: put in front of this file by LabWidget)

function render({ model, el }) {
  const root = h("div", { class: "dlc" });
  const userEl = h("span", { class: "dlc-user" });
  root.append(h("div", { class: "dlc-head" }, h("span", { class: "dlc-title", text: "Corrections" }), userEl));

  const tabs = h("div", { class: "dlc-tabs" });
  const pages = {};
  const tabBtns = {};
  for (const [k, label] of [["correct", "Correct"], ["suggest", "Suggest next"], ["history", "History"]]) {
    const b = h("button", { class: "dlc-tab", text: label });
    b.addEventListener("click", () => show(k));
    tabBtns[k] = b; tabs.append(b);
    pages[k] = h("div", { class: "dlc-page" });
  }
  root.append(tabs, ...Object.values(pages));
  const status = h("div", { class: "dlc-status" });
  root.append(status);
  el.append(root);

  let nonce = 0;
  function send(op, args = {}) {
    nonce += 1;
    if (op !== "poll") { status.className = "dlc-status"; status.textContent = "…"; }
    model.set("request", { op, ...args, nonce: Date.now() * 1000 + nonce });
    model.save_changes();
  }
  // other annotators' changes: ask Python to check the store's version now and then
  const pollMs = Number(model.get("poll_seconds") || 0) * 1000;
  const poller = pollMs > 0 ? setInterval(() => { if (document.visibilityState !== "hidden") send("poll"); }, pollMs) : 0;
  function show(k) {
    for (const [name, p] of Object.entries(pages)) p.classList.toggle("on", name === k);
    for (const [name, b] of Object.entries(tabBtns)) b.classList.toggle("on", name === k);
    if (k === "suggest" && !(model.get("suggestions") || []).length) send("suggest");
  }

  // ---- correct page --------------------------------------------------------------------------
  const selBox = h("div", { class: "dlc-sel" });
  const labelSel = h("select", { title: "class" });
  const relabelBtn = h("button", { class: "primary", text: "Relabel selection" });
  const clearBtn = h("button", { text: "Clear" });
  const notLesionBtn = h("button", { text: "Not a lesion", title: "mark the selection as not a lesion" });
  const unsureBtn = h("button", { text: "Unsure", title: "mark the selection as unsure" });
  notLesionBtn.addEventListener("click", () => send("mark", { label: "not a lesion", comment: comment.value || null }));
  unsureBtn.addEventListener("click", () => send("mark", { label: "unsure", comment: comment.value || null }));
  const comment = h("input", { type: "text", placeholder: "comment (optional)" });
  relabelBtn.addEventListener("click", () => send("relabel", { label: labelSel.value, comment: comment.value || null }));
  clearBtn.addEventListener("click", () => send("clear_selection"));

  const splitName = h("input", { type: "text", placeholder: "new class name" });
  const splitColor = h("input", { type: "color", value: "#17becf" });
  const splitBtn = h("button", { text: "Split off" , title: "move the selection into a new class" });
  splitBtn.addEventListener("click", () => send("split", { label: splitName.value, color: splitColor.value, comment: comment.value || null }));

  const clusterSel = h("select", { title: "cluster" });
  const clusterLabel = h("select", { title: "class" });
  const relClBtn = h("button", { text: "Relabel cluster" });
  const selClBtn = h("button", { text: "Select" , title: "select this cluster on the map" });
  relClBtn.addEventListener("click", () => send("relabel_cluster", { cluster: Number(clusterSel.value), label: clusterLabel.value }));
  selClBtn.addEventListener("click", () => send("select_cluster", { cluster: Number(clusterSel.value) }));
  const mergeA = h("select"), mergeB = h("select");
  const mergeBtn = h("button", { text: "Merge" });
  mergeBtn.addEventListener("click", () => send("merge", { source: Number(mergeA.value), target: Number(mergeB.value) }));

  const newName = h("input", { type: "text", placeholder: "class name" });
  const newColor = h("input", { type: "color", value: "#e377c2" });
  const addBtn = h("button", { text: "Add class" });
  addBtn.addEventListener("click", () => send("add_class", { name: newName.value, color: newColor.value }));

  const undoBtn = h("button", { text: "↶ Undo", title: "undo my last change" });
  const redoBtn = h("button", { text: "↷ Redo", title: "redo my last undone change" });
  undoBtn.addEventListener("click", () => send("undo"));
  redoBtn.addEventListener("click", () => send("redo"));

  const keysHelp = h("div", { class: "dlc-keys", title: "shortcuts work after a click in the lab, not while typing in a field" });
  keysHelp.append("keys: ", h("kbd", { text: "1" }), "–", h("kbd", { text: "9" }),
    " relabel the selection as the class numbered in the list · ", h("kbd", { text: "u" }), " undo");
  const snapName = h("input", { type: "text", placeholder: "snapshot name (optional)" });
  const snapBtn = h("button", { text: "Snapshot", title: "freeze the current labels (fine-tuning can train on them)" });
  const csvBtn = h("button", { text: "Export CSV", title: "current labels to RUN_DIR/exports/" });
  const cocoBtn = h("button", { text: "Export COCO", title: "key images, boxes and current labels to RUN_DIR/exports/" });
  snapBtn.addEventListener("click", () => send("snapshot", { name: snapName.value || null, comment: comment.value || null }));
  csvBtn.addEventListener("click", () => send("export", { format: "csv" }));
  cocoBtn.addEventListener("click", () => send("export", { format: "coco" }));
  const saveRow = h("div", { class: "dlc-row" }, snapName, snapBtn, csvBtn, cocoBtn);
  pages.correct.append(
    selBox,
    keysHelp,
    h("div", { class: "dlc-row" }, labelSel, relabelBtn, clearBtn),
    h("div", { class: "dlc-row" }, comment, notLesionBtn, unsureBtn),
    h("div", { class: "dlc-row" }, h("span", { class: "dlc-k", text: "split selection as" }), splitName, splitColor, splitBtn),
    h("div", { class: "dlc-sec", text: "Clusters" }),
    h("div", { class: "dlc-row" }, clusterSel, h("span", { class: "dlc-k", text: "→" }), clusterLabel, relClBtn, selClBtn),
    h("div", { class: "dlc-row" }, h("span", { class: "dlc-k", text: "merge" }), mergeA, h("span", { class: "dlc-k", text: "into" }), mergeB, mergeBtn),
    h("div", { class: "dlc-sec", text: "Classes" }),
    h("div", { class: "dlc-row" }, newName, newColor, addBtn),
    h("div", { class: "dlc-row" }, undoBtn, redoBtn),
    saveRow,
  );

  // ---- suggest page --------------------------------------------------------------------------
  const sugList = h("div", { class: "dlc-list" });
  const sugBtn = h("button", { text: "Refresh" });
  sugBtn.addEventListener("click", () => send("suggest"));
  pages.suggest.append(
    h("div", { class: "dlc-row" }, h("span", { class: "dlc-k", text: "Most likely mislabeled first (far from cluster centre, neighbours disagree, low confidence). Click to inspect." }), sugBtn),
    sugList,
  );

  // ---- history page --------------------------------------------------------------------------
  const histList = h("div", { class: "dlc-list" });
  const histBtn = h("button", { text: "Refresh" });
  histBtn.addEventListener("click", () => send("refresh"));
  const simBox = h("input", { type: "checkbox" });
  simBox.addEventListener("change", () => send("show_simulated", { show: simBox.checked }));
  const simText = h("span");
  const simNote = h("label", { class: "dlc-note" }, simBox, simText);
  pages.history.append(h("div", { class: "dlc-row" }, h("span", { class: "dlc-k", text: "Newest first." }), histBtn), simNote, histList);

  // ---- sync ----------------------------------------------------------------------------------
  const colorOf = () => Object.fromEntries((model.get("classes") || []).map((c) => [c.name, c.color]));
  function dot(color) { return h("span", { class: "dlc-dot", style: `background:${color || "#bbb"}` }); }

  function syncSelection() {
    const n = model.get("selection_count") || 0;
    const labs = model.get("selection_labels") || {};
    const col = colorOf();
    const chips = h("div", { class: "dlc-chips" });
    for (const [k, v] of Object.entries(labs).sort((a, b) => b[1] - a[1])) chips.append(h("span", {}, dot(col[k]), `${k} ${v}`));
    selBox.replaceChildren(
      h("div", {}, h("b", { text: n.toLocaleString() }), n === 1 ? " lesion selected" : " lesions selected"),
      n ? chips : h("div", { class: "dlc-k", text: "Lasso or box-select points on the map." }),
    );
    for (const b of [relabelBtn, splitBtn, clearBtn, notLesionBtn, unsureBtn]) b.disabled = !n;
  }
  const assignable = () => (model.get("classes") || []).filter((c) => c.name !== "unlabeled");
  function fillClasses(sel, numbered) {
    const keep = sel.value;
    sel.replaceChildren();
    assignable().forEach((c, i) => {
      const key = numbered && i < 9 ? `${i + 1} · ` : "";
      sel.append(h("option", { value: c.name, text: `${key}${c.name}${c.n != null ? ` (${c.n})` : ""}` }));
    });
    if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
  }
  function syncClasses() { fillClasses(labelSel, true); fillClasses(clusterLabel, false); syncSelection(); }
  function syncClusters() {
    for (const s of [clusterSel, mergeA, mergeB]) {
      const keep = s.value;
      s.replaceChildren();
      for (const c of model.get("clusters") || []) s.append(h("option", { value: String(c.cluster), text: `#${c.cluster} ${c.label} (${c.n})` }));
      if ([...s.options].some((o) => o.value === keep)) s.value = keep;
    }
    if (mergeB.options.length > 1 && mergeA.value === mergeB.value) mergeB.selectedIndex = 1;
  }
  function syncSuggestions() {
    const col = colorOf();
    sugList.replaceChildren();
    const items = model.get("suggestions") || [];
    if (!items.length) sugList.append(h("div", { class: "dlc-h dlc-k", text: "No suggestions yet." }));
    items.forEach((s, i) => {
      const row = h("div", { class: "dlc-item", title: "show this lesion" },
        h("span", {}, dot(col[s.label]), s.label),
        h("span", { class: "id", text: s.lesion_id }),
        h("span", { class: "sc", text: Number(s.score).toFixed(2) }),
        h("span", { class: "why", text: s.reason || "" }));
      row.dataset.index = String(i);
      row.addEventListener("click", () => send("show", { lesion_id: s.lesion_id }));
      sugList.append(row);
    });
  }
  function syncHistory() {
    histList.replaceChildren();
    const items = model.get("history") || [];
    if (!items.length) histList.append(h("div", { class: "dlc-h dlc-k", text: "No corrections yet." }));
    for (const e of items) {
      const row = h("div", { class: "dlc-h" + (e.undone ? " undone" : "") },
        h("div", {}, h("span", { class: "dlc-k", text: `#${e.event} ` }), h("span", { text: e.detail || e.op || "" }),
          e.undone ? h("span", { class: "dlc-k", text: " (undone)" }) : null),
        h("div", { class: "meta", text: `${e.user} · ${e.time} · ${e.tool}${e.comment ? " · “" + e.comment + "”" : ""}` }));
      histList.append(row);
    }
  }
  function syncSimulated() {
    const sim = model.get("simulated") || {};
    simBox.checked = !!model.get("show_simulated");
    simNote.style.display = sim.events ? "" : "none";
    const who = (sim.users || []).join(", ") || "the pipeline";
    simText.textContent = ` show the ${sim.events || 0} correction event(s) of ${who}, the pipeline's simulated ` +
      `annotator (${sim.lesions || 0} lesion change(s) made from the demo's truth file before fine-tuning; ` +
      "not yours to undo)";
  }
  function syncStatus() {
    const s = model.get("status") || {};
    status.className = "dlc-status" + (s.ok === true ? " ok" : s.ok === false ? " err" : "");
    status.textContent = s.message || "";
    el.dataset.lastStatus = s.message || "";
  }
  function syncActions() { saveRow.style.display = model.get("lab_actions") ? "" : "none"; }
  function syncUser() { userEl.textContent = `as ${model.get("user") || "?"}`; }

  const handlers = [
    ["change:selection_count", syncSelection], ["change:selection_labels", syncSelection],
    ["change:classes", syncClasses], ["change:clusters", syncClusters],
    ["change:suggestions", syncSuggestions], ["change:history", syncHistory],
    ["change:status", syncStatus], ["change:user", syncUser],
    ["change:simulated", syncSimulated], ["change:show_simulated", syncSimulated],
    ["change:lab_actions", syncActions],
  ];
  for (const [ev, fn] of handlers) model.on(ev, fn);
  syncUser(); syncClasses(); syncClusters(); syncSuggestions(); syncHistory(); syncStatus(); syncSimulated(); syncActions();
  show("correct");

  // ---- keyboard shortcuts --------------------------------------------------------------------
  // Armed by a pointer press in the lab (the notebook cell holding this panel, else the page),
  // disarmed by one elsewhere. Listened to on window in the capture phase, and stopped there,
  // so that JupyterLab's own command-mode keys (1 = heading, ...) do not also fire.
  let armed = false;
  const scopeOf = () => el.closest(".jp-Cell") || el.closest(".jp-OutputArea") || document.body;
  const onPointer = (ev) => {
    // a panel with keys of its own (the proposal review) takes them while it is clicked
    const path = ev.composedPath ? ev.composedPath() : [ev.target];
    const own = path.some((n) => n.dataset && n.dataset.dlKeyscope);
    armed = scopeOf().contains(ev.target) && !own;
    keysHelp.classList.toggle("on", armed);
  };
  const editable = (t) => t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName || ""));
  const onKey = (ev) => {
    if (!armed || ev.ctrlKey || ev.metaKey || ev.altKey || editable(ev.target)) return;
    if (!el.isConnected) return;
    const k = ev.key;
    if (k >= "1" && k <= "9") {
      const c = assignable()[Number(k) - 1];
      if (!c) return;
      labelSel.value = c.name;
      send("relabel", { label: c.name, comment: comment.value || null, via: "key" });
    } else if (k === "u" || k === "U") {
      send("undo");
    } else return;
    ev.preventDefault(); ev.stopPropagation();
  };
  window.addEventListener("pointerdown", onPointer, true);
  window.addEventListener("keydown", onKey, true);
  return () => {
    for (const [ev, fn] of handlers) model.off(ev, fn);
    if (poller) clearInterval(poller);
    window.removeEventListener("pointerdown", onPointer, true);
    window.removeEventListener("keydown", onKey, true);
  };
}

export default { render };
