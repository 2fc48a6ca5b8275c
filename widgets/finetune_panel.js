// deeplesion-lab fine-tune panel: a button that starts fine-tuning as a background job of the run,
// and the job's live progress. Self-contained anywidget ESM (no imports, no CDN); text is set
// with textContent.
//
// Model protocol:
//   job          {state, progress (0-1|null), eta, elapsed, message, user, exit_code, blocked}
//   request      {op: "start" | "poll", nonce}          written here
//   status       {nonce, ok, message}                   the answer to a start
//   poll_seconds how often to ask for the job's state (0: never)
// uses widgets/_helpers.js (h, bytesOf, typed: put in front of this file by LabWidget)

function render({ model, el }) {
  const root = h("div", { class: "dlft" });
  const btn = h("button", { text: "Fine-tune on the current labels" });
  const why = h("span", { class: "dlft-why" });
  const fill = h("div", { class: "dlft-fill" });
  const bar = h("div", { class: "dlft-bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100" }, fill);
  const info = h("span", { class: "dlft-k" });
  const msg = h("div", { class: "dlft-k" });
  const status = h("div");
  root.append(h("div", { class: "dlft-row" }, h("span", { class: "dlft-title", text: "Detector" }), btn, why),
    h("div", { class: "dlft-row" }, bar, info), msg, status);
  el.append(root);

  let nonce = 0;
  const send = (op) => { model.set("request", { op, nonce: ++nonce }); model.save_changes(); };
  btn.addEventListener("click", () => { btn.disabled = true; status.className = "dlft-k"; status.textContent = "starting…"; send("start"); });

  function sync() {
    const j = model.get("job") || {};
    const running = j.state === "running" || j.state === "starting";
    btn.disabled = !!j.blocked;
    btn.title = j.blocked || "train on a new snapshot of the current labels, as a background job of the run";
    why.textContent = j.blocked || "";
    const p = typeof j.progress === "number" ? Math.max(0, Math.min(1, j.progress)) : null;
    fill.style.width = `${p == null ? 0 : Math.round(100 * p)}%`;
    bar.setAttribute("aria-valuenow", p == null ? "0" : String(Math.round(100 * p)));
    const who = j.user ? ` · started by ${j.user}` : "";
    const states = {
      none: "not run yet",
      starting: "starting",
      running: ["running", p == null ? "" : `${Math.round(100 * p)} %`, j.eta ? `· about ${j.eta} left` : ""].filter(Boolean).join(" "),
      done: `done${j.elapsed ? ` in ${j.elapsed}` : ""}`,
      failed: `failed (exit ${j.exit_code})`,
      interrupted: "interrupted (start it again to resume)",
    };
    info.textContent = (states[j.state] || j.state || "") + who;
    msg.textContent = j.message || "";
    el.dataset.state = j.state || "none";
    el.dataset.blocked = j.blocked ? "1" : "";
    root.classList.toggle("running", running);
  }
  function syncStatus() {
    const s = model.get("status") || {};
    status.className = s.ok ? "dlft-ok" : "dlft-err";
    status.textContent = s.message || "";
  }
  model.on("change:job", sync);
  model.on("change:status", syncStatus);
  const ms = Number(model.get("poll_seconds") || 0) * 1000;
  const poller = ms > 0 ? setInterval(() => { if (document.visibilityState !== "hidden") send("poll"); }, ms) : 0;
  sync();
  return () => {
    if (poller) clearInterval(poller);
    model.off("change:job", sync);
    model.off("change:status", syncStatus);
  };
}

export default { render };
