"use strict";
// The ChEX page: open an X-ray, ask by text, box or both, or ask for a full report; the answers' boxes are drawn
// over the image and their sentences listed beside it in the same colour. API: docs/serving.md. No build step, no
// external resources: the page must work offline.

const PALETTE = ["#ff5c5c", "#4cd964", "#5ab0ff", "#ffb347", "#c77dff", "#3fe0d0", "#ff7ad9", "#d4f55a",
  "#ffd1dc", "#7fd1b9"];
const TOKEN_KEY = "chex-token";
const MIN_BOX = 0.01; // a drag smaller than this (of the image side) is a click, not a box
const $ = (sel) => document.querySelector(sel);

const state = {
  file: null, // the current X-ray as a Blob (uploaded file or fetched sample)
  fileName: "",
  size: null, // {width, height}: from the browser's decode, else (DICOM) from the API's answer
  decoded: false, // false: the browser cannot display it; a placeholder of its size stands in
  objectUrl: null,
  queryBox: null, // [cx, cy, w, h] in [0, 1], drawn by the user
  drag: null, // {x, y} where a box drag started (normalized)
  answer: null, // the last API answer, as received
  items: [], // what is drawn: [{sentence, box, label, meta, absent}]
  busy: 0,
};
window.lastRequest = null; // the last request sent ({path, body}): lets tests check what the page asked

// ---- API --------------------------------------------------------------------------------------------------------

/** fetch a /v1 route with the bearer token (if any); a non-2xx answer becomes an Error carrying the API's detail. */
async function api(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const resp = await fetch(path, { ...options, headers });
  if (resp.ok) return resp;
  if (resp.status === 401) showAuth(true);
  let detail = `${resp.status} ${resp.statusText}`;
  try {
    const body = await resp.json();
    if (body && body.detail) detail = `${resp.status}: ${typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)}`;
  } catch (_) { /* not JSON: keep the status line */ }
  throw new Error(detail);
}

/** POST the current image with a request object as multipart (file field `image`, JSON text field `request`). */
async function postImage(path, request) {
  if (!state.file) throw new Error("Open an X-ray first (file, drag and drop, or a sample).");
  window.lastRequest = { path, body: request };
  const form = new FormData();
  form.append("image", state.file, state.fileName || "image");
  form.append("request", JSON.stringify(request));
  return (await api(path, { method: "POST", body: form })).json();
}

/** Run a user action: busy while it runs (tests wait for body[data-state=idle]); any error shown, never swallowed. */
async function run(action) {
  setBusy(+1);
  showError("");
  try {
    await action();
  } catch (err) {
    showError(err.message || String(err));
  } finally {
    setBusy(-1);
  }
}

function setBusy(delta) {
  state.busy += delta;
  document.body.dataset.state = state.busy > 0 ? "busy" : "idle";
  for (const id of ["#ask", "#report"]) $(id).disabled = state.busy > 0;
}

function showError(message) {
  $("#error").textContent = message;
  $("#error").hidden = !message;
}

function showAuth(show) {
  $("#auth").hidden = !show;
  if (show) $("#token").focus();
}

// ---- model and samples ------------------------------------------------------------------------------------------

async function loadModelInfo() {
  const info = await (await api("/v1/model")).json();
  const el = $("#model-info");
  el.textContent = "";
  const name = document.createElement("b");
  name.textContent = `${info.name}${info.version ? " v" + info.version : ""}`;
  const parts = [];
  if (info.aliases && info.aliases.length) parts.push(`aliases: ${info.aliases.join(", ")}`);
  if (info.weights_sha256) parts.push(`weights ${info.weights_sha256.slice(0, 12)}`);
  if (info.precision) parts.push(info.precision + (info.device ? ` on ${info.device}` : ""));
  el.append("Model ", name, parts.length ? " · " + parts.join(" · ") : "");
  el.dataset.name = info.name;
}

async function loadSamples() {
  const { samples } = await (await api("/v1/samples")).json();
  const select = $("#sample");
  select.length = 1; // keep the "try a sample" entry
  for (const name of samples) select.add(new Option(name, name));
}

async function openSample(name) {
  if (!name) return;
  const blob = await (await api(`/v1/samples/${encodeURIComponent(name)}`)).blob();
  await openImage(blob, `${name}.png`);
}

// ---- the image --------------------------------------------------------------------------------------------------

/** Show a new X-ray: JPEG/PNG through an object URL; anything the browser cannot decode (DICOM) as a placeholder. */
async function openImage(blob, name) {
  Object.assign(state, { file: blob, fileName: name, queryBox: null, answer: null, items: [], decoded: false });
  if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
  state.objectUrl = URL.createObjectURL(blob);
  const img = $("#picture");
  const ok = await new Promise((resolve) => {
    img.onload = () => resolve(true);
    img.onerror = () => resolve(false);
    img.src = state.objectUrl;
  });
  state.decoded = ok;
  // the placeholder's size is a guess until an answer brings the image's real width and height
  state.size = ok ? { width: img.naturalWidth, height: img.naturalHeight } : { width: 512, height: 512 };
  img.hidden = !ok;
  $("#placeholder").hidden = ok;
  $("#image").classList.remove("empty");
  $("#stage-note").textContent = ok ? "" : "DICOM: preview not shown";
  fitStage();
  render();
}

/** Size the stage (and so the image) to fit the column and the window, keeping the image's aspect ratio. */
function fitStage() {
  if (!state.size) return;
  const { width, height } = state.size;
  const stage = $("#image");
  const room = $("#stage-column").clientWidth;
  const tall = Math.max(300, window.innerHeight - stage.getBoundingClientRect().top - 60);
  const scale = Math.min(room / width, tall / height);
  stage.style.width = `${Math.floor(width * scale)}px`;
  stage.style.height = `${Math.floor(height * scale)}px`;
  const canvas = $("#placeholder");
  canvas.width = width;
  canvas.height = height;
}

// ---- drawing a query box ----------------------------------------------------------------------------------------

/** A mouse event's position as a fraction of the displayed image, clamped to [0, 1]. */
function normalized(event) {
  const r = $("#overlay").getBoundingClientRect();
  const clamp = (v) => Math.min(1, Math.max(0, v));
  return { x: clamp((event.clientX - r.left) / r.width), y: clamp((event.clientY - r.top) / r.height) };
}

/** [cx, cy, w, h] of the rectangle between two normalized points, rounded to 4 decimals (as the API answers). */
function boxBetween(a, b) {
  const round = (v) => Math.round(v * 1e4) / 1e4;
  const w = Math.abs(a.x - b.x);
  const h = Math.abs(a.y - b.y);
  return [round(Math.min(a.x, b.x) + w / 2), round(Math.min(a.y, b.y) + h / 2), round(w), round(h)];
}

function onMouseDown(event) {
  if (event.button !== 0 || !state.file) return;
  event.preventDefault(); // no native image drag or text selection
  state.drag = normalized(event);
}

function onMouseMove(event) {
  if (!state.drag) return;
  state.queryBox = boxBetween(state.drag, normalized(event));
  drawQueryBox();
}

function onMouseUp(event) {
  if (!state.drag) return;
  const box = boxBetween(state.drag, normalized(event));
  state.drag = null;
  // a click without a drag leaves no box: a degenerate box would only earn a 400
  state.queryBox = box[2] >= MIN_BOX && box[3] >= MIN_BOX ? box : null;
  drawQueryBox();
}

function drawQueryBox() {
  let el = $("#query-box");
  if (!state.queryBox) {
    if (el) el.remove();
    return;
  }
  if (!el) {
    el = document.createElement("div");
    el.id = "query-box";
    el.className = "query-box";
    $("#overlay").append(el);
  }
  place(el, state.queryBox);
}

// ---- asking -----------------------------------------------------------------------------------------------------

/** Text, box, or box + text query, from what the user typed and drew. */
function ask() {
  return run(async () => {
    const prompt = $("#prompt").value.trim();
    const box = state.queryBox;
    if (!prompt && !box) throw new Error("Type a prompt or draw a box on the image.");
    const request = box && prompt ? { box_prompts: [{ box, prompt }] } : box ? { boxes: [box] } : { prompts: [prompt] };
    const answer = await postImage("/v1/query", request);
    show(answer, answer.results.map(queryItem));
  });
}

function fullReport() {
  return run(async () => {
    const answer = await postImage("/v1/report", { prompt_set: "report" });
    show(answer, answer.report.sentences.map(reportItem));
    const open = answer.report.undetermined || [];
    $("#undetermined").hidden = !open.length;
    $("#undetermined").textContent = open.length ? `Undetermined: ${open.join(", ")}` : "";
  });
}

const percent = (p) => `${Math.round(p * 1000) / 10}%`;

function queryItem(r) {
  const label = r.prompt && r.query_box ? `${r.prompt} (in box)` : r.prompt || "box query";
  const meta = [];
  if (r.presence !== null && r.presence !== undefined) meta.push(`presence ${percent(r.presence)}`);
  if (r.score !== null && r.score !== undefined) meta.push(`box score ${r.score.toFixed(2)}`);
  return { sentence: r.sentence, box: r.box, label, meta: meta.join(" · "), absent: false };
}

function reportItem(s) {
  // finding false: the sentence states an absence; its box only shows where the model looked
  return { sentence: s.sentence, box: s.box, label: `${s.query} (${s.kind})`,
    meta: `abnormal ${percent(s.abnormal)}`, absent: !s.finding };
}

/** Keep an answer and draw it; a DICOM placeholder takes the image size the API reports. */
function show(answer, items) {
  state.answer = answer;
  state.items = items;
  if (!state.decoded && answer.image) {
    state.size = { width: answer.image.width, height: answer.image.height };
    fitStage();
  }
  $("#undetermined").hidden = true;
  const m = answer.model || {};
  $("#answer-model").textContent =
    `Answered by ${m.name}${m.version ? " v" + m.version : ""} in ${answer.seconds} s (${answer.image.width}×${answer.image.height})`;
  render();
}

// ---- rendering answers ------------------------------------------------------------------------------------------

const colour = (i) => PALETTE[i % PALETTE.length];

/** Position an absolutely placed element at a normalized [cx, cy, w, h] box, in % so it follows the stage's size. */
function place(el, [cx, cy, w, h]) {
  Object.assign(el.style, { left: `${(cx - w / 2) * 100}%`, top: `${(cy - h / 2) * 100}%`,
    width: `${w * 100}%`, height: `${h * 100}%` });
}

function render() {
  const overlay = $("#overlay");
  overlay.querySelectorAll(".answer-box").forEach((el) => el.remove());
  const list = $("#sentences");
  list.textContent = "";
  state.items.forEach((item, i) => {
    overlay.append(answerBox(item, i));
    list.append(sentenceItem(item, i));
  });
  if (!state.items.length) $("#answer-model").textContent = "";
  drawQueryBox();
  $("#download-png").disabled = !state.file;
  $("#download-json").disabled = !state.answer;
}

function answerBox(item, i) {
  const el = document.createElement("div");
  el.className = "answer-box" + (item.absent ? " absent" : "");
  el.dataset.index = i;
  el.style.setProperty("--colour", colour(i));
  el.title = item.sentence;
  const label = document.createElement("span");
  label.className = "label";
  label.textContent = i + 1;
  el.append(label);
  place(el, item.box);
  hoverLinks(el, i);
  return el;
}

function sentenceItem(item, i) {
  const li = document.createElement("li");
  li.className = "sentence" + (item.absent ? " absent" : "");
  li.dataset.index = i;
  li.style.setProperty("--colour", colour(i));
  li.innerHTML = '<span class="swatch"></span><span class="body"><span class="text"></span><span class="meta"></span></span>';
  li.querySelector(".swatch").textContent = i + 1;
  li.querySelector(".text").textContent = item.sentence; // textContent: model output is never parsed as HTML
  const meta = li.querySelector(".meta");
  meta.textContent = [item.label, item.meta].filter(Boolean).join(" · ");
  if (item.absent) {
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = "absent";
    meta.append(tag);
  }
  hoverLinks(li, i);
  return li;
}

/** Hovering a sentence or a box highlights both. */
function hoverLinks(el, i) {
  el.addEventListener("mouseenter", () => highlight(i, true));
  el.addEventListener("mouseleave", () => highlight(i, false));
}

function highlight(i, on) {
  document.querySelectorAll(`[data-index="${i}"]`).forEach((el) => el.classList.toggle("highlight", on));
}

// ---- downloads --------------------------------------------------------------------------------------------------

/** The image (or its placeholder) at full size with the answer's boxes and their numbers drawn in. */
function annotatedCanvas() {
  const { width, height } = state.size;
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const g = canvas.getContext("2d");
  if (state.decoded) {
    g.drawImage($("#picture"), 0, 0, width, height);
  } else {
    g.fillStyle = "#333"; // DICOM: the browser has no pixels to draw
    g.fillRect(0, 0, width, height);
  }
  const line = Math.max(2, Math.round(Math.min(width, height) / 250));
  const font = Math.max(12, Math.round(Math.min(width, height) / 30));
  g.lineWidth = line;
  g.font = `bold ${font}px sans-serif`;
  g.textBaseline = "top";
  const corners = ([cx, cy, w, h]) => [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height];
  state.items.forEach((item, i) => {
    const [x, y, w, h] = corners(item.box);
    g.strokeStyle = g.fillStyle = colour(i);
    g.setLineDash(item.absent ? [4 * line, 3 * line] : []);
    g.strokeRect(x, y, w, h);
    const text = String(i + 1);
    g.fillRect(x, y, g.measureText(text).width + 2 * line, font + line);
    g.fillStyle = "#000";
    g.fillText(text, x + line, y + line / 2);
  });
  if (state.queryBox) {
    g.setLineDash([3 * line, 3 * line]);
    g.strokeStyle = "#fff";
    g.strokeRect(...corners(state.queryBox));
  }
  return canvas;
}

function save(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

const stem = () => (state.fileName || "xray").replace(/\.[^.]*$/, "");

// ---- wiring -----------------------------------------------------------------------------------------------------

function wire() {
  $("#file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    e.target.value = ""; // so that picking the same file again still fires "change"
    $("#sample").value = "";
    if (file) run(() => openImage(file, file.name));
  });
  $("#sample").addEventListener("change", (e) => run(() => openSample(e.target.value)));
  $("#ask").addEventListener("click", ask);
  $("#prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.isComposing) ask(); });
  $("#report").addEventListener("click", fullReport);
  $("#clear-box").addEventListener("click", () => { state.queryBox = null; drawQueryBox(); });
  $("#download-png").addEventListener("click", () =>
    annotatedCanvas().toBlob((blob) => save(blob, `${stem()}-chex.png`), "image/png"));
  $("#download-json").addEventListener("click", () =>
    save(new Blob([JSON.stringify(state.answer, null, 2)], { type: "application/json" }), `${stem()}-chex.json`));
  $("#token-save").addEventListener("click", () => {
    sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
    showAuth(false);
    run(start);
  });
  $("#overlay").addEventListener("mousedown", onMouseDown);
  window.addEventListener("mousemove", onMouseMove);
  window.addEventListener("mouseup", onMouseUp);
  window.addEventListener("resize", fitStage);
  // drag and drop anywhere on the page opens the dropped file (and stops the browser from navigating to it)
  document.addEventListener("dragover", (e) => { e.preventDefault(); $("#image").classList.add("dragging"); });
  document.addEventListener("dragleave", () => $("#image").classList.remove("dragging"));
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    $("#image").classList.remove("dragging");
    const file = e.dataTransfer.files[0];
    $("#sample").value = "";
    if (file) run(() => openImage(file, file.name));
  });
}

async function start() {
  await loadModelInfo();
  await loadSamples();
}

wire();
run(start);
