// OpenCIR web page: pick or upload a reference, type a modification, refine from a result.
// Plain browser JavaScript talking to the JSON API (no build step).
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  reference: null,   // {kind: "id", id} or {kind: "file", file}
  sessionId: null,   // set after the first search; refinements send it back
  turn: 0,
  galleryOffset: 0,
};

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const message = body && body.error ? body.error.message : `HTTP ${response.status}`;
    throw new Error(message);
  }
  return body;
}

function card(item, caption, onClick, testId) {
  const div = document.createElement("div");
  div.className = "card";
  div.dataset.testid = testId;
  div.dataset.id = item.image_id;
  div.title = item.image_id;
  const img = document.createElement("img");
  img.src = item.thumbnail_url;
  img.alt = item.image_id;
  img.loading = "lazy";
  const id = document.createElement("div");
  id.className = "id";
  id.textContent = item.image_id;
  div.append(img, id);
  if (caption) {
    const score = document.createElement("div");
    score.className = "score";
    score.textContent = caption;
    div.append(score);
  }
  div.addEventListener("click", onClick);
  return div;
}

function setReference(reference, previewUrl) {
  state.reference = reference;
  const preview = $("reference-preview");
  preview.replaceChildren();
  const img = document.createElement("img");
  img.src = previewUrl;
  img.alt = reference.kind === "id" ? reference.id : reference.file.name;
  preview.append(img);
  preview.dataset.reference = reference.kind === "id" ? reference.id : "upload";
}

function updateSession() {
  $("session").textContent = state.sessionId
    ? `turn ${state.turn} of session ${state.sessionId} — earlier results stay excluded`
    : "";
}

function resetSession() {
  state.sessionId = null;
  state.turn = 0;
  updateSession();
}

async function search(event) {
  event.preventDefault();
  showError("");
  if (!state.reference) { showError("Choose a reference image first."); return; }
  const text = $("text").value.trim();
  if (!text) { showError("Type how the results should differ from the reference."); return; }
  const k = parseInt($("k").value, 10) || 10;
  let options;
  if (state.reference.kind === "file") {
    const form = new FormData();
    form.append("image", state.reference.file);
    form.append("text", text);
    form.append("k", String(k));
    if (state.sessionId) form.append("session_id", state.sessionId);
    options = { method: "POST", body: form };
  } else {
    const payload = { ref_id: state.reference.id, text, k };
    if (state.sessionId) payload.session_id = state.sessionId;
    options = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload) };
  }
  $("search").disabled = true;
  try {
    const result = await api("/v1/search", options);
    state.sessionId = result.session_id;
    state.turn = result.turn;
    updateSession();
    renderResults(result);
  } catch (err) {
    showError(err.message);
  } finally {
    $("search").disabled = false;
  }
}

function renderResults(result) {
  const grid = $("results");
  grid.replaceChildren();
  grid.dataset.turn = String(result.turn);
  if (!result.results.length) {
    grid.textContent = "No results (every image was already shown in this session).";
    return;
  }
  for (const hit of result.results) {
    grid.append(card(hit, `#${hit.rank} · ${hit.score.toFixed(3)}`, () => {
      // refine: the chosen result becomes the reference, the session continues
      setReference({ kind: "id", id: hit.image_id }, hit.thumbnail_url);
      $("text").value = "";
      $("text").focus();
    }, "result"));
  }
}

async function loadGallery(append) {
  if (!append) state.galleryOffset = 0;
  const q = encodeURIComponent($("filter").value.trim());
  try {
    const page = await api(`/v1/gallery?offset=${state.galleryOffset}&limit=48&q=${q}`);
    const grid = $("gallery");
    if (!append) grid.replaceChildren();
    for (const item of page.items) {
      grid.append(card(item, "", () => {
        resetSession();
        setReference({ kind: "id", id: item.image_id }, item.thumbnail_url);
      }, "gallery-item"));
    }
    state.galleryOffset += page.items.length;
    $("more").hidden = state.galleryOffset >= page.total;
  } catch (err) {
    showError(err.message);
  }
}

async function loadInfo() {
  try {
    const info = await api("/v1/info");
    $("info").textContent = `${info.index.count} images · ${info.model.method} on ${info.model.backbone.arch} · ${info.index.backend} index`;
    $("k").max = info.limits.max_k;
    $("text").maxLength = info.limits.max_text_chars;
  } catch (err) {
    $("info").textContent = `service unavailable: ${err.message}`;
  }
}

$("upload").addEventListener("change", () => {
  const file = $("upload").files[0];
  if (!file) return;
  resetSession();
  setReference({ kind: "file", file }, URL.createObjectURL(file));
});
$("search-form").addEventListener("submit", search);
$("reset").addEventListener("click", () => {
  resetSession();
  $("results").replaceChildren();
  $("text").value = "";
});
$("more").addEventListener("click", () => loadGallery(true));
let filterTimer = null;
$("filter").addEventListener("input", () => {
  clearTimeout(filterTimer);
  filterTimer = setTimeout(() => loadGallery(false), 250);
});

loadInfo();
loadGallery(false);
