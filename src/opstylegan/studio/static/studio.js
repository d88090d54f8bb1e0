// opstylegan studio: the page's logic. Plain JavaScript, no libraries, nothing loaded from elsewhere.
"use strict";

const state = { session: null, info: null, target: null, job: null, events: null, latents: [], runs: [] };
const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------------------
// Talking to the server.

async function api(path, { method = "GET", json = undefined, body = undefined, headers = {} } = {}) {
  const h = { "X-Studio-Session": state.session || "", ...headers };
  if (json !== undefined) { h["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  const r = await fetch(path, { method, headers: h, body });
  if (!r.ok) {
    let msg = `${r.status} ${r.statusText}`;
    try { msg = (await r.json()).error || msg; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return r;
}

function showMessage(text, kind = "error") {
  const m = $("message");
  m.textContent = text;
  m.className = kind === "error" ? "" : kind;
  m.hidden = false;
}

function clearMessage() { $("message").hidden = true; $("message").textContent = ""; }

function withSession(path) { return `${path}${path.includes("?") ? "&" : "?"}s=${encodeURIComponent(state.session)}`; }

// FNV-1a of the bytes: lets a reader (and the browser test) tell whether an image really changed.
function fnv1a(bytes) {
  let h = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) { h ^= bytes[i]; h = Math.imul(h, 0x01000193) >>> 0; }
  return h.toString(16);
}

async function showBlob(img, blob) {
  const bytes = new Uint8Array(await blob.arrayBuffer());
  const old = img.src;
  img.src = URL.createObjectURL(blob);
  img.dataset.hash = fnv1a(bytes);
  img.dataset.version = String((+img.dataset.version || 0) + 1);
  if (old.startsWith("blob:")) URL.revokeObjectURL(old);
}

// An image that follows its inputs: at most one request in flight, and the latest inputs always win.
function liveImage(img, request) {
  let busy = false, again = false;
  const run = async () => {
    if (busy) { again = true; return; }
    busy = true; again = false;
    try {
      const r = await request();
      if (r) await showBlob(img, await r.blob());
    } catch (e) { showMessage(e.message); }
    finally { busy = false; if (again) run(); }
  };
  return run;
}

// ---------------------------------------------------------------------------------------------------------
// Models and latents in the selects.

function modelName(key) {
  const m = state.info.models.find((x) => x.key === key);
  return m ? `${m.key} (${m.name})` : key;
}

function fillModelSelect(sel) {
  sel.innerHTML = "";
  for (const m of state.info.models) sel.add(new Option(modelName(m.key), m.key));
}

function model(key) { return state.info.models.find((m) => m.key === key); }

function fillSourceSelect(sel, withSeed) {
  const keep = sel.value;
  sel.innerHTML = "";
  for (const l of state.latents) {
    sel.add(new Option(`${l.name} · LPIPS ${l.lpips.toFixed(3)}`, `latent:${l.id}`));
  }
  if (withSeed) sel.add(new Option("random sample (seed)", "seed"));
  if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
}

async function refreshLatents() {
  const r = await api("/api/latents");
  state.latents = (await r.json()).latents;
  for (const id of ["edit-source", "interp-a", "interp-b"]) fillSourceSelect($(id), true);
  // Interpolation endpoints: the newest latent, and another one of its model (or a seed of that model).
  const a = state.latents[0];
  if (a) {
    $("edit-source").value = `latent:${a.id}`;  // edit what was just inverted
    const b = state.latents.find((l) => l !== a && l.model === a.model && l.space === a.space)
      || state.latents.find((l) => l !== a && l.model === a.model);
    $("interp-a").value = `latent:${a.id}`;
    if (b) $("interp-b").value = `latent:${b.id}`;
    else { $("interp-b").value = "seed"; $("interp-model").value = a.model; }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Invert.

async function chooseTarget(request) {
  clearMessage();
  try {
    const r = await request();
    state.target = await r.json();
    const img = await api(withSession(`/api/targets/${state.target.id}.png`));
    await showBlob($("target-img"), await img.blob());
    $("target-name").textContent = state.target.name;
  } catch (e) {
    showMessage(e.message);
  }
}

function spacesChanged() {
  const m = model($("inv-model").value);
  const sel = $("inv-space");
  sel.innerHTML = "";
  for (const s of m.spaces) sel.add(new Option(s, s));
}

function plannedRuns() {
  if ($("mode-compare").checked) return [{ model: "baseline", space: "w+" }, { model: "main", space: "W" }];
  return [{ model: $("inv-model").value, space: $("inv-space").value }];
}

const COLORS = ["#d9480f", "#2457c5", "#2b8a3e", "#862e9c"];

function makeRunPanels(runs) {
  const box = $("runs");
  box.innerHTML = "";
  state.runs = runs.map((r, i) => {
    const fig = document.createElement("figure");
    fig.className = "panel";
    fig.innerHTML = `<figcaption></figcaption><img class="px" alt="reconstruction">
      <div class="metrics">waiting</div><div class="downloads"></div>`;
    fig.querySelector("figcaption").textContent = `${r.model === "main" ? "overparam" : r.model} · ${r.space}`;
    fig.querySelector("figcaption").style.color = COLORS[i % COLORS.length];
    fig.id = `run-${i}`;
    box.appendChild(fig);
    return { ...r, fig, curve: [] };
  });
  drawCurve();
}

function drawCurve() {
  const c = $("curve"), g = c.getContext("2d");
  const W = c.width, H = c.height, L = 46, B = 26, T = 10, R = 10;
  g.clearRect(0, 0, W, H);
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#667085";
  const steps = Math.max(1, ...state.runs.map((r) => r.steps || 1));
  let ymax = 0;
  for (const r of state.runs) for (const v of r.curve) ymax = Math.max(ymax, v);
  ymax = ymax > 0 ? ymax * 1.05 : 1;
  g.strokeStyle = "#d0d5dd";
  g.beginPath(); g.moveTo(L, T); g.lineTo(L, H - B); g.lineTo(W - R, H - B); g.stroke();
  g.fillText("LPIPS", 4, T + 8);
  g.fillText(ymax.toFixed(2), 8, T + 20);
  g.fillText("0", L - 12, H - B);
  g.fillText("step", W - R - 26, H - 6);
  g.fillText(String(steps), W - R - 60, H - 6);
  state.runs.forEach((r, i) => {
    if (!r.curve.length) return;
    g.strokeStyle = COLORS[i % COLORS.length];
    g.lineWidth = 2;
    g.beginPath();
    r.curve.forEach((v, j) => {
      const x = L + ((r.curveSteps ? r.curveSteps[j] : j + 1) / steps) * (W - L - R);
      const y = H - B - (v / ymax) * (H - B - T);
      if (j === 0) g.moveTo(x, y); else g.lineTo(x, y);
    });
    g.stroke();
  });
}

async function startInversion() {
  clearMessage();
  if (!state.target) { showMessage("Choose a target first: upload an image or click an example."); return; }
  const runs = plannedRuns();
  const steps = parseInt($("steps").value, 10);
  try {
    const r = await api("/api/invert", { method: "POST", json: { target: state.target.id, runs, steps } });
    const { job, position } = await r.json();
    state.job = job;
    makeRunPanels(runs);
    state.runs.forEach((run) => { run.steps = steps; run.curveSteps = []; });
    setStatus(position > 0 ? `queued: position ${position}` : "starting…");
    $("invert-btn").disabled = true;
    $("cancel-btn").disabled = false;
    follow(job);
  } catch (e) { showMessage(e.message); }
}

function setStatus(text) { $("job-status").textContent = text; }

function endJob(text) {
  setStatus(text);
  if (state.events) { state.events.close(); state.events = null; }
  state.job = null;
  $("invert-btn").disabled = false;
  $("cancel-btn").disabled = true;
}

function follow(job) {
  const es = new EventSource(withSession(`/api/jobs/${job}/events`));
  state.events = es;
  es.addEventListener("queue", (e) => {
    const p = JSON.parse(e.data).position;
    setStatus(p > 0 ? `queued: position ${p} (${p} job${p > 1 ? "s" : ""} ahead)` : "starting…");
  });
  es.addEventListener("running", () => setStatus("running…"));
  es.addEventListener("progress", async (e) => {
    const d = JSON.parse(e.data);
    const run = state.runs[d.run];
    run.curve.push(d.lpips); run.curveSteps.push(d.step);
    setStatus(`running ${run.model === "main" ? "overparam" : run.model} ${run.space}: step ${d.step} / ${d.steps}`);
    run.fig.querySelector(".metrics").textContent = `step ${d.step} · LPIPS ${d.lpips.toFixed(4)}`;
    const bytes = Uint8Array.from(atob(d.image), (ch) => ch.charCodeAt(0));
    await showBlob(run.fig.querySelector("img"), new Blob([bytes], { type: "image/png" }));
    drawCurve();
  });
  es.addEventListener("result", (e) => {
    const d = JSON.parse(e.data);
    const run = state.runs[d.run];
    run.curve = d.curve; run.curveSteps = d.curve.map((_, j) => j + 1);
    run.fig.querySelector(".metrics").textContent =
      `LPIPS ${d.lpips.toFixed(4)} · PSNR ${d.psnr.toFixed(2)} dB${d.encoder_start ? " · from encoder" : ""}`;
    const dl = run.fig.querySelector(".downloads");
    dl.innerHTML = "";
    for (const [ext, label] of [["safetensors", "latent (.safetensors)"], ["png", "image (.png)"]]) {
      const a = document.createElement("a");
      a.href = withSession(`/api/latents/${d.id}.${ext}`);
      a.textContent = label;
      a.setAttribute("download", "");
      a.className = `dl-${ext}`;
      dl.appendChild(a);
    }
    api(withSession(`/api/latents/${d.id}.png`)).then(async (r) => showBlob(run.fig.querySelector("img"), await r.blob()));
    drawCurve();
    refreshLatents().catch((err) => showMessage(err.message));
  });
  es.addEventListener("done", () => endJob("done"));
  es.addEventListener("cancelled", (e) => endJob(`cancelled: ${JSON.parse(e.data).message || ""}`));
  es.addEventListener("failed", (e) => { const m = JSON.parse(e.data).message; endJob("failed"); showMessage(m); });
  es.onerror = () => { if (state.job === job && es.readyState === EventSource.CLOSED) endJob("connection lost"); };
}

async function cancelInversion() {
  if (!state.job) return;
  try { await api(`/api/jobs/${state.job}/cancel`, { method: "POST" }); } catch (e) { showMessage(e.message); }
}

// ---------------------------------------------------------------------------------------------------------
// Sources shared by Edit and Interpolate.

function sourceOf(value, modelKey, seed, trunc) {
  if (value.startsWith("latent:")) return { latent: value.slice(7) };
  return { model: modelKey, seed: parseInt(seed, 10) || 0, truncation: parseFloat(trunc) };
}

function sourceModel(value, modelKey) {
  if (value.startsWith("latent:")) {
    const l = state.latents.find((x) => x.id === value.slice(7));
    return model(l ? l.model : modelKey);
  }
  return model(modelKey);
}

// ---------------------------------------------------------------------------------------------------------
// Edit.

function editSource() {
  return sourceOf($("edit-source").value, $("edit-model").value, $("edit-seed").value, $("edit-trunc").value);
}

function buildSliders() {
  const m = sourceModel($("edit-source").value, $("edit-model").value);
  const box = $("sliders");
  box.innerHTML = "";
  m.components.forEach((pct, k) => {
    const row = document.createElement("div");
    row.className = "slider";
    row.innerHTML = `<label for="pc-${k}">PC ${k} (${pct}% var)</label>
      <input type="range" id="pc-${k}" data-k="${k}" min="-5" max="5" step="0.1" value="0"><output>0.0</output>`;
    box.appendChild(row);
  });
  for (const id of ["layer-lo", "layer-hi"]) $(id).max = String(m.num_ws - 1);
  $("layer-lo").value = "0";
  $("layer-hi").value = String(m.num_ws - 1);
  layerLabel();
}

function layerLabel() {
  let lo = +$("layer-lo").value, hi = +$("layer-hi").value;
  if (lo > hi) { [lo, hi] = [hi, lo]; }
  const m = sourceModel($("edit-source").value, $("edit-model").value);
  $("layer-label").textContent = `style layers ${lo}-${hi} of 0-${m.num_ws - 1}` + (lo === 0 && hi === m.num_ws - 1 ? " (all)" : "");
  return `${lo}-${hi}`;
}

function sigmas() {
  const out = {};
  for (const s of $("sliders").querySelectorAll("input")) {
    s.nextElementSibling.textContent = (+s.value).toFixed(1);
    if (+s.value !== 0) out[s.dataset.k] = +s.value;
  }
  return out;
}

const renderEdit = liveImage($("edit-img"), () =>
  api("/api/edit", { method: "POST", json: { source: editSource(), sigmas: sigmas(), layers: layerLabel() } }));
const renderEditOrig = liveImage($("edit-orig"), () =>
  api("/api/edit", { method: "POST", json: { source: editSource(), sigmas: {} } }));

function editSourceChanged() {
  $("edit-seed-row").hidden = $("edit-source").value !== "seed";
  $("edit-trunc-out").textContent = (+$("edit-trunc").value).toFixed(2);
  buildSliders();
  renderEditOrig();
  renderEdit();
}

// ---------------------------------------------------------------------------------------------------------
// Interpolate.

function interpSources() {
  const m = $("interp-model").value, tr = $("interp-trunc").value;
  return { a: sourceOf($("interp-a").value, m, $("interp-seed-a").value, tr),
           b: sourceOf($("interp-b").value, m, $("interp-seed-b").value, tr) };
}

const renderFrame = liveImage($("interp-img"), () => {
  $("interp-t-out").textContent = (+$("interp-t").value).toFixed(2);
  return api("/api/interpolate", { method: "POST", json: { ...interpSources(), t: +$("interp-t").value } });
});
const renderStrip = liveImage($("strip-img"), () =>
  api("/api/interpolate", { method: "POST", json: { ...interpSources(), steps: 8 } }));

function interpChanged() {
  $("interp-seed-a").hidden = $("interp-a").value !== "seed";
  $("interp-seed-b").hidden = $("interp-b").value !== "seed";
  renderFrame();
  renderStrip();
}

async function downloadGif() {
  clearMessage();
  try {
    const r = await api("/api/interpolate.gif", { method: "POST", json: { ...interpSources(), steps: 16 } });
    const url = URL.createObjectURL(await r.blob());
    const a = document.createElement("a");
    a.href = url; a.download = "interpolation.gif";
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) { showMessage(e.message); }
}

// ---------------------------------------------------------------------------------------------------------
// Sample.

const renderSample = liveImage($("sample-img"), () => {
  $("sample-trunc-out").textContent = (+$("sample-trunc").value).toFixed(2);
  return api("/api/sample", { method: "POST",
    json: { model: $("sample-model").value, seeds: $("sample-seeds").value, truncation: +$("sample-trunc").value } });
});

// ---------------------------------------------------------------------------------------------------------
// Start.

function showTab(name) {
  for (const b of $("tabs").querySelectorAll("button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== `tab-${name}`;
  if (name === "edit") editSourceChanged();
  if (name === "interp") interpChanged();
  if (name === "sample") renderSample();
}

async function start() {
  try {
    const r = await api("/api/session", { method: "POST" });
    state.info = await r.json();
    state.session = state.info.session;
  } catch (e) { showMessage(`Cannot reach the studio server: ${e.message}`); return; }
  const info = state.info;
  $("models").textContent = info.models.map((m) =>
    `${m.key}: ${m.name} (${m.overparam ? `overparameterized, R = ${m.rows}` : "baseline"}, ${m.resolution} px)`).join(" · ")
    + ` · device ${info.device}`;
  $("steps").max = String(info.max_steps);
  for (const id of ["inv-model", "edit-model", "interp-model", "sample-model"]) fillModelSelect($(id));
  spacesChanged();
  const canCompare = !!model("baseline") && model("main").overparam;
  $("mode-compare").disabled = !canCompare;
  if (!canCompare) $("mode-single").checked = true;

  const ex = $("examples");
  for (const name of info.examples) {
    const img = document.createElement("img");
    img.src = `/api/examples/${name}`;
    img.alt = img.title = name;
    img.dataset.name = name;
    img.addEventListener("click", () => {
      for (const o of ex.querySelectorAll("img")) o.classList.toggle("chosen", o === img);
      chooseTarget(() => api(`/api/targets?example=${encodeURIComponent(name)}`, { method: "POST" }));
    });
    ex.appendChild(img);
  }
  $("upload").addEventListener("change", () => {
    const f = $("upload").files[0];
    if (!f) return;
    for (const o of ex.querySelectorAll("img")) o.classList.remove("chosen");
    chooseTarget(() => api("/api/targets", { method: "POST", body: f,
      headers: { "X-Filename": encodeURIComponent(f.name), "Content-Type": "application/octet-stream" } }));
    $("upload").value = "";
  });
  $("inv-model").addEventListener("change", spacesChanged);
  $("invert-btn").addEventListener("click", startInversion);
  $("cancel-btn").addEventListener("click", cancelInversion);

  $("sliders").addEventListener("input", renderEdit);
  for (const id of ["layer-lo", "layer-hi"]) $(id).addEventListener("input", renderEdit);
  $("edit-source").addEventListener("change", editSourceChanged);
  for (const id of ["edit-model", "edit-seed", "edit-trunc"]) $(id).addEventListener("input", editSourceChanged);
  $("edit-reset").addEventListener("click", () => {
    for (const s of $("sliders").querySelectorAll("input")) s.value = "0";
    renderEdit();
  });

  for (const id of ["interp-a", "interp-b", "interp-model"]) $(id).addEventListener("change", interpChanged);
  for (const id of ["interp-seed-a", "interp-seed-b", "interp-trunc"]) $(id).addEventListener("input", interpChanged);
  $("interp-t").addEventListener("input", renderFrame);
  $("strip-btn").addEventListener("click", renderStrip);
  $("gif-btn").addEventListener("click", downloadGif);

  for (const id of ["sample-model", "sample-seeds", "sample-trunc"]) $(id).addEventListener("input", renderSample);
  for (const b of $("tabs").querySelectorAll("button")) b.addEventListener("click", () => showTab(b.dataset.tab));

  for (const id of ["edit-source", "interp-a", "interp-b"]) fillSourceSelect($(id), true);
  $("interp-b").value = "seed";
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", start);
