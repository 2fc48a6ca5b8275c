// deeplesion-lab: helpers shared by the widgets' front ends. LabWidget (widgets/lab_widget.py)
// puts this file in front of every ESM file that says "// uses widgets/_helpers.js", when the
// widget class is defined: anywidget loads each ESM from a blob: URL, where a relative import
// of a sibling module cannot resolve (and nothing may come from a CDN).

// An element: attrs "class", "text" (textContent), "style" (cssText), on<event> (a function)
// or any attribute; kids are nodes or text (null/undefined are left out).
function h(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k === "style") e.style.cssText = v;
    else if (k.startsWith("on") && typeof v === "function") e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) if (k != null) e.append(k instanceof Node ? k : String(k));
  return e;
}

// The bytes of a synced Bytes trait (DataView, ArrayBuffer, a typed array, or base64 text).
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
  if (v.buffer instanceof ArrayBuffer) return bytesOf(v.buffer);
  return new Uint8Array(0);
}

// A typed array view (T: Float32Array, Uint16Array, ...) of a Bytes trait, copied if unaligned.
function typed(v, T) {
  let b = bytesOf(v);
  if (b.byteOffset % T.BYTES_PER_ELEMENT) b = b.slice();
  return new T(b.buffer, b.byteOffset, Math.floor(b.byteLength / T.BYTES_PER_ELEMENT));
}
