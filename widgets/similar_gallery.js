// deeplesion-lab similar-lesion gallery: thumbnails with boxes, distance, patient/study;
// click a card to show that lesion. Self-contained anywidget ESM (no imports, no CDN).
//
// Model protocol (also usable as Panel AnyWidgetComponent parameters):
//   query       {lesion_id, label, color}
//   items       [{lesion_id, distance, patient, study, label, color, box:[x1,y1,x2,y2] | null}]
//   thumbs      bytes  uint8 gray, len(items) * thumb_size^2, in item order (zeros: no image)
//   thumb_size  int;  scope "all" | "other patients" | "same patient" (written here too)
//   click       {index, lesion_id, nonce}  written here
// uses widgets/_helpers.js (h, bytesOf, typed: put in front of this file by LabWidget)

function render({ model, el }) {
  const root = h("div", { class: "dlg" });
  const q = h("span", { class: "dlg-q" });
  const scope = h("select", { title: "which lesions to search" });
  for (const s of ["all", "other patients", "same patient"]) scope.append(h("option", { value: s, text: s }));
  scope.addEventListener("change", () => { model.set("scope", scope.value); model.save_changes(); });
  root.append(h("div", { class: "dlg-head" }, h("span", { class: "dlg-title", text: "Similar lesions" }), q, scope));
  const grid = h("div", { class: "dlg-grid" });
  root.append(grid);
  el.append(root);
  let nonce = 0;

  function sync() {
    const query = model.get("query") || {};
    q.textContent = query.lesion_id ? `to ${query.lesion_id}` : "";
    scope.value = model.get("scope") || "all";
    const items = model.get("items") || [];
    const ts = model.get("thumb_size") || 0;
    const all = bytesOf(model.get("thumbs"));
    grid.replaceChildren();
    if (!items.length) {
      grid.append(h("div", { class: "dlg-empty", text: query.lesion_id ? "No embedding for this lesion, or no other lesion in scope." : "Pick a lesion." }));
      return;
    }
    items.forEach((it, i) => {
      const c = h("canvas", { width: String(ts), height: String(ts) });
      const g = all.subarray(i * ts * ts, (i + 1) * ts * ts);
      if (ts && g.length === ts * ts) {
        const cx = c.getContext("2d");
        const id = cx.createImageData(ts, ts);
        const p = new Uint32Array(id.data.buffer);
        for (let k = 0; k < ts * ts; k++) p[k] = 0xff000000 | (g[k] << 16) | (g[k] << 8) | g[k];
        cx.putImageData(id, 0, 0);
        if (it.box) {
          cx.strokeStyle = it.color || "#fff"; cx.lineWidth = 1.5;
          cx.strokeRect(it.box[0], it.box[1], it.box[2] - it.box[0], it.box[3] - it.box[1]);
        }
      }
      const card = h("div", { class: "dlg-card", title: it.lesion_id },
        c,
        h("div", { class: "dlg-lab" }, h("span", { class: "dlg-dot", style: `background:${it.color || "#bbb"}` }), h("span", { text: it.label || "" })),
        h("div", { class: "dlg-meta", text: `d ${Number(it.distance).toFixed(3)} · P${it.patient} S${it.study}` }));
      card.dataset.lesionId = it.lesion_id;
      card.addEventListener("click", () => {
        model.set("click", { index: i, lesion_id: it.lesion_id, nonce: ++nonce });
        model.save_changes();
      });
      grid.append(card);
    });
  }
  const handlers = [["change:items", sync], ["change:thumbs", sync], ["change:query", sync], ["change:scope", sync]];
  for (const [ev, fn] of handlers) model.on(ev, fn);
  sync();
  return () => { for (const [ev, fn] of handlers) model.off(ev, fn); };
}

export default { render };
