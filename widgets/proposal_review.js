// deeplesion-lab proposal review: walk the lesion graph's proposals (mined, unannotated lesions)
// best first and accept, accept as a type, or reject each. Self-contained anywidget ESM (no
// imports, no CDN). All text from the store (class names, users, ids) is set with textContent.
//
// Model protocol (also usable as Panel AnyWidgetComponent parameters):
//   user        text;  available  bool;  message  why there is nothing to review
//   counts      {pending, accepted, rejected, total}
//   current     {proposal_id, position, file_name, box, score, rank_score, similarity,
//                neighbour_support, nearest_lesion_id, status, decided_label, decided_by}
//   types       [{name, color}]   what a proposal can be accepted as (keys 1-9)
//   pending_only bool;  active  bool: a review is under way (the viewer shows the proposal)
//   decisions   [{proposal_id, status, label, user}]   the latest decisions
//   request     {op, ..., nonce}  written here: accept {label?} | reject | next | prev |
//               go {position} | undo | pending_only {value} | refresh | start
//   status      {nonce, ok, message}  the answer to the last request
// Keys (after a click in this panel, not while typing in a field): a accept, r reject,
//   1-9 accept as the n-th type, j or ArrowRight next, k or ArrowLeft previous, u undo.
// uses widgets/_helpers.js (h, bytesOf, typed: put in front of this file by LabWidget)

function render({ model, el }) {
  // the style travels with the panel (Panel renders widgets inside shadow roots)
  const root = h("div", { class: "dlr", tabindex: "0", "data-dl-keyscope": "review" });
  el.append(root);
  let nonce = 0;
  const send = (op, extra = {}) => {
    nonce += 1;
    model.set("request", { op, ...extra, nonce });
    model.save_changes();
  };

  const userEl = h("span", { class: "dlr-user" });
  const countsEl = h("span", { class: "dlr-muted" });
  const bar = h("div", { class: "dlr-bar", title: "accepted / rejected / pending" });
  const pendingBox = h("input", { type: "checkbox" });
  pendingBox.addEventListener("change", () => send("pending_only", { value: pendingBox.checked }));
  const posEl = h("span", { class: "dlr-title" });
  const pill = h("span", { class: "dlr-pill" });
  const facts = h("div", { class: "dlr-muted" });
  const decidedEl = h("div", { class: "dlr-muted" });
  const acceptBtn = h("button", { class: "ok", title: "accept as a new lesion (a)" }, "Accept ", h("span", { class: "dlr-key" }, "a"));
  const rejectBtn = h("button", { class: "no", title: "not a lesion (r)" }, "Reject ", h("span", { class: "dlr-key" }, "r"));
  acceptBtn.addEventListener("click", () => send("accept"));
  rejectBtn.addEventListener("click", () => send("reject"));
  const typesRow = h("div", { class: "dlr-row" });
  const prevBtn = h("button", { title: "previous (k or ←)" }, "◀ Prev ", h("span", { class: "dlr-key" }, "k"));
  const nextBtn = h("button", { title: "next (j or →)" }, "Next ", h("span", { class: "dlr-key" }, "j"), " ▶");
  const undoBtn = h("button", { title: "undo my last change (u)" }, "Undo ", h("span", { class: "dlr-key" }, "u"));
  prevBtn.addEventListener("click", () => send("prev"));
  nextBtn.addEventListener("click", () => send("next"));
  undoBtn.addEventListener("click", () => send("undo"));
  const status = h("div", { class: "dlr-status" });
  const startBtn = h("button", { class: "ok", title: "show the best pending proposal in the viewer" }, "Start review ▶");
  startBtn.addEventListener("click", () => send("start"));
  const list = h("div", { class: "dlr-list" });
  const empty = h("div", { class: "dlr-box dlr-muted" });
  const keysHelp = h("div", { class: "dlr-key" },
    "keys after a click here: a accept · r reject · 1-9 accept as type · j/→ next · k/← previous · u undo");
  const body = h("div", { style: "display:flex;flex-direction:column;gap:8px" },
    h("div", { class: "dlr-row" }, countsEl,
      h("label", { style: "margin-left:auto" }, pendingBox, " pending only")),
    bar,
    h("div", { class: "dlr-box" },
      h("div", { class: "dlr-row" }, posEl, pill), facts, decidedEl),
    h("div", { class: "dlr-row" }, startBtn, acceptBtn, rejectBtn),
    h("div", { class: "dlr-muted" }, "accept as:"), typesRow,
    h("div", { class: "dlr-row" }, prevBtn, nextBtn, undoBtn),
    status,
    h("div", { class: "dlr-muted" }, "latest decisions"), list,
    keysHelp);
  root.append(h("div", { class: "dlr-head" }, h("span", { class: "dlr-title" }, "Review mined lesions"), userEl),
    empty, body);

  const fmt = (v, d = 2) => (v == null ? "–" : Number(v).toFixed(d));
  function sync() {
    userEl.textContent = `as ${model.get("user") || "?"}`;
    const ok = model.get("available");
    empty.style.display = ok ? "none" : "";
    body.style.display = ok ? "flex" : "none";
    empty.textContent = model.get("message") || "nothing to review";
    const c = model.get("counts") || {};
    const total = c.total || 0;
    countsEl.textContent = `${c.pending || 0} pending · ${c.accepted || 0} accepted · ${c.rejected || 0} rejected of ${total}`;
    bar.replaceChildren(
      ...[["accepted", "#3ddc84"], ["rejected", "#9aa0a6"], ["pending", "#ff5ad9"]].map(([k, col]) =>
        h("span", { style: `width:${total ? (100 * (c[k] || 0)) / total : 0}%;background:${col}` })));
    pendingBox.checked = !!model.get("pending_only");
    const cur = model.get("current") || {};
    const has = !!cur.proposal_id;
    posEl.textContent = has ? `Proposal ${cur.position} of ${total}` : "no proposal";
    pill.textContent = cur.status || "";
    pill.className = `dlr-pill ${cur.status || ""}`;
    const bits = [];
    if (has) {
      bits.push(`detector ${fmt(cur.score)}`, `rank ${fmt(cur.rank_score)}`);
      if (cur.neighbour_support != null) bits.push(`seen on neighbours ${fmt(cur.neighbour_support)}`);
      if (cur.similarity != null) bits.push(`like ${cur.nearest_lesion_id || "?"} (${fmt(cur.similarity)})`);
    }
    facts.textContent = has ? `${cur.file_name} · ${bits.join(" · ")}` : "";
    decidedEl.textContent = has && cur.status !== "pending"
      ? `${cur.status}${cur.decided_label && cur.status === "accepted" ? " as " + cur.decided_label : ""} by ${cur.decided_by || "?"}`
      : "";
    const active = !!model.get("active");
    startBtn.style.display = active ? "none" : "";
    const pending = active && has && cur.status === "pending";
    acceptBtn.disabled = rejectBtn.disabled = !pending;
    typesRow.replaceChildren(...(model.get("types") || []).map((t, i) => {
      const b = h("button", { class: "dlr-type", title: `accept as ${t.name}${i < 9 ? " (" + (i + 1) + ")" : ""}` },
        h("span", { class: "dlr-dot", style: `background:${t.color}` }), t.name,
        i < 9 ? h("span", { class: "dlr-key" }, String(i + 1)) : "");
      b.disabled = !pending;
      b.addEventListener("click", () => send("accept", { label: t.name }));
      return b;
    }));
    list.replaceChildren(...(model.get("decisions") || []).map((d) =>
      h("div", { class: "dlr-item", title: "review it again", onclick: () => goTo(d.proposal_id) },
        h("span", { class: `dlr-pill ${d.status}` }, d.status),
        h("span", {}, `${d.proposal_id}${d.label && d.status === "accepted" ? " · " + d.label : ""}`),
        h("span", { class: "dlr-muted", style: "margin-left:auto" }, d.user))));
    root.dataset.active = String(active);
    root.dataset.position = String(cur.position || 0);
    root.dataset.proposal = cur.proposal_id || "";
    root.dataset.pending = String(c.pending || 0);
  }
  function goTo(pid) { send("go_to", { proposal_id: pid }); }
  function syncStatus() {
    const s = model.get("status") || {};
    status.textContent = s.message || "";
    status.classList.toggle("err", s.ok === false);
    root.dataset.lastStatus = s.message || "";
  }
  const handlers = ["change:counts", "change:current", "change:types", "change:pending_only", "change:active",
    "change:decisions", "change:available", "change:message", "change:user"];
  for (const ev of handlers) model.on(ev, sync);
  model.on("change:status", syncStatus);
  sync(); syncStatus();

  // ---- keyboard shortcuts: armed by a pointer press in this panel, disarmed by one elsewhere.
  // Listened to on window in the capture phase and stopped there, so that JupyterLab's
  // command-mode keys and the correction panel's 1-9 do not also fire.
  let armed = false;
  const onPointer = (ev) => {
    // composedPath: inside a shadow root (Panel) the window sees the host as the target
    armed = (ev.composedPath ? ev.composedPath() : [ev.target]).includes(root);
    root.classList.toggle("armed", armed);
  };
  const editable = (t) => t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName || ""));
  const onKey = (ev) => {
    const target = ev.composedPath ? ev.composedPath()[0] : ev.target;
    if (!armed || !el.isConnected || ev.ctrlKey || ev.metaKey || ev.altKey || editable(target)) return;
    const k = ev.key;
    const types = model.get("types") || [];
    if (!model.get("active") && k !== "u" && k !== "U") { send("start"); }
    else if (k === "a" || k === "A") send("accept");
    else if (k === "r" || k === "R") send("reject");
    else if (k >= "1" && k <= "9") {
      const t = types[Number(k) - 1];
      if (!t) return;
      send("accept", { label: t.name });
    } else if (k === "j" || k === "J" || k === "ArrowRight") send("next");
    else if (k === "k" || k === "K" || k === "ArrowLeft") send("prev");
    else if (k === "u" || k === "U") send("undo");
    else return;
    ev.preventDefault(); ev.stopImmediatePropagation();
  };
  window.addEventListener("pointerdown", onPointer, true);
  window.addEventListener("keydown", onKey, true);
  return () => {
    for (const ev of handlers) model.off(ev, sync);
    model.off("change:status", syncStatus);
    window.removeEventListener("pointerdown", onPointer, true);
    window.removeEventListener("keydown", onKey, true);
  };
}

export default { render };
