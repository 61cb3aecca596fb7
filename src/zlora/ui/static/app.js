// zlora web UI: a small single-page app over the HTTP API (no build step). The New Training Job form is generated
// from the config schema the server sends; every change is resolved and validated by the server with the same code
// as `zlora config validate`, so defaults, arch presets and messages have one source.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) e.append(kid.nodeType ? kid : String(kid));
  return e;
};

async function api(method, path, body) {
  const r = await fetch(path, {method, headers: body ? {"Content-Type": "application/json"} : {},
                               body: body ? JSON.stringify(body) : undefined});
  if (r.status === 401) { location.href = "/login"; throw new Error("login needed"); }
  const data = r.headers.get("content-type")?.includes("json") ? await r.json() : await r.text();
  if (!r.ok) { const err = new Error(typeof data === "object" ? JSON.stringify(data.detail) : data); err.detail = data.detail; err.status = r.status; throw err; }
  return data;
}

const fmt = {
  num: (v, d = 4) => (v === null || v === undefined ? "–" : Number(v).toPrecision(d)),
  secs: (s) => { if (s === null || s === undefined) return "–"; s = Math.round(s);
                 return s >= 3600 ? `${Math.floor(s / 3600)}h${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m`
                      : s >= 60 ? `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s` : `${s}s`; },
};

// ------------------------------------------------------------------ routing
let cleanup = [];
function route() {
  cleanup.forEach((f) => f()); cleanup = [];
  const hash = location.hash || "#/jobs";
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", hash.startsWith(a.getAttribute("href"))));
  const m = hash.match(/^#\/jobs\/(\d+)/);
  const extra = window.PAGES && Object.keys(window.PAGES).find((k) => hash.startsWith(k));
  if (hash.startsWith("#/new")) newJobPage();
  else if (m) jobPage(Number(m[1]));
  else if (extra) window.PAGES[extra]();
  else jobsPage();
}
window.addEventListener("hashchange", route);

// ------------------------------------------------------------------ schema helpers
let SCHEMA = null;
async function schema() { return SCHEMA || (SCHEMA = await api("GET", "/api/schema")); }

function deref(s, node) {
  while (node && node.$ref) node = s.$defs[node.$ref.split("/").pop()];
  if (node && node.oneOf) {   // a section chosen by its `type` (network): the fields of every type, `type` an enum
    const variants = node.oneOf.map((v) => deref(s, v)), properties = {};
    for (const v of variants) Object.assign(properties, v.properties);
    properties.type = {...properties.type, enum: variants.map((v) => v.properties.type.const ?? v.properties.type.default)};
    node = {type: "object", properties, description: node.description};
  }
  return node;
}
function nonNull(node) {
  if (node && node.anyOf) {
    const rest = node.anyOf.filter((x) => x.type !== "null"), {anyOf, ...plain} = node;
    return {...plain, ...(rest.length === 1 ? rest[0] : {anyOf: rest}), nullable: rest.length < anyOf.length};
  }
  return node;
}
function fieldSchema(s, path) {          // "train.ema_config.use_ema" -> property schema (refs resolved)
  let node = s;
  for (const part of path.split(".")) {
    node = deref(s, node);
    if (node.type === "array") node = deref(s, node.items);
    node = node.properties && node.properties[part];
    if (!node) return null;
  }
  const prop = nonNull(deref(s, node));
  return {...prop, description: node.description || prop.description, default: node.default ?? prop.default};
}
const getAt = (obj, path) => path.split(".").reduce((o, k) => (o === undefined || o === null ? undefined : o[k]), obj);
function setAt(obj, path, value) {
  const parts = path.split("."); let o = obj;
  parts.slice(0, -1).forEach((k, i) => { if (o[k] === undefined || o[k] === null) o[k] = /^\d+$/.test(parts[i + 1]) ? [] : {}; o = o[k]; });
  const last = parts[parts.length - 1];
  if (value === undefined) { if (Array.isArray(o)) o[last] = undefined; else delete o[last]; } else o[last] = value;
}
const locToPath = (loc) => loc.replace(/\[(\d+)\]/g, ".$1");

// ------------------------------------------------------------------ New Training Job
let draft = null;   // the settings the user chose (a sparse config); everything else comes from the schema
function defaultDraft() { return {job: {name: "my_lora"}, datasets: [{folder_path: ""}]}; }

async function newJobPage() {
  const s = await schema();
  if (!draft) draft = defaultDraft();
  const view = $("#view"); view.replaceChildren();
  const formErr = el("div", {class: "err", id: "form-errors"});
  const yamlBox = el("textarea", {id: "yaml", rows: 24, spellcheck: "false"});
  const yamlPanel = el("div", {class: "panel wide hidden", id: "yaml-panel"},
    el("h2", {}, "Config (YAML)"), yamlBox,
    el("div", {class: "toolbar"}, el("button", {id: "yaml-apply", onclick: applyYaml}, "Apply YAML to the form"),
       el("span", {class: "muted"}, "The form and this text are the same config: edit either.")));
  const panels = el("div", {class: "panels", id: "panels"});
  const folders = el("datalist", {id: "dataset-folders"});
  api("GET", "/api/datasets").then((ds) => folders.replaceChildren(...ds.map((d) => el("option", {value: d.path}, d.name)))).catch(() => {});
  view.append(el("h1", {}, "New Training Job"), folders, formErr, panels,
    el("div", {class: "toolbar"},
       el("button", {id: "submit", onclick: submitJob}, "Create job"),
       el("button", {class: "secondary", id: "toggle-advanced", onclick: () => { yamlPanel.classList.toggle("hidden"); refreshYaml(); }}, "Show Advanced"),
       el("button", {class: "secondary", onclick: () => { draft = defaultDraft(); newJobPage(); }}, "Reset")),
    yamlPanel);
  let resolved = null, lastYaml = null;
  const S = s.schema;

  function input(path, prop, value) {
    const id = "f-" + path.replace(/\./g, "-");
    const onchange = (v) => { setAt(draft, path, v); schedule(); };
    if (path.endsWith(".resolution")) {         // the guide's toggles + free entry
      const vals = Array.isArray(value) ? value : [];
      const text = el("input", {type: "text", id, value: vals.join(", ")});
      text.addEventListener("change", () => onchange(text.value.split(/[ ,]+/).filter(Boolean).map(Number)));
      const toggles = el("div", {class: "toggles"}, [512, 768, 1024].map((r) => {
        const cb = el("input", {type: "checkbox", "data-res": r}); cb.checked = vals.includes(r);
        cb.addEventListener("change", () => {
          const now = new Set(text.value.split(/[ ,]+/).filter(Boolean).map(Number));
          cb.checked ? now.add(r) : now.delete(r); onchange([...now].sort((a, b) => a - b));
        });
        return el("label", {}, cb, String(r));
      }));
      return el("div", {}, toggles, text);
    }
    if (prop.type === "boolean") {
      const cb = el("input", {type: "checkbox", id}); cb.checked = !!value;
      cb.addEventListener("change", () => onchange(cb.checked)); return cb;
    }
    if (prop.enum) {
      const sel = el("select", {id}, (prop.nullable ? [""] : []).concat(prop.enum).map((o) => el("option", {value: o}, o === "" ? "(none)" : o)));
      sel.value = value ?? ""; sel.addEventListener("change", () => onchange(sel.value === "" ? null : sel.value)); return sel;
    }
    if (prop.type === "array" && prop.items && deref(S, prop.items).enum) {   // several of a fixed set
      const opts = deref(S, prop.items).enum;
      return el("div", {class: "toggles", id}, opts.map((o) => {
        const cb = el("input", {type: "checkbox", value: o}); cb.checked = (value || []).includes(o);
        cb.addEventListener("change", () => onchange([...document.querySelectorAll(`#${id} input:checked`)].map((c) => c.value)));
        return el("label", {}, cb, o);
      }));
    }
    if (prop.type === "array" || prop.type === "object" || prop.anyOf) {       // lists: one per line; dicts: JSON
      const isList = prop.type === "array";
      const ta = el("textarea", {id, rows: 3});
      ta.value = isList ? (value || []).map((v) => (typeof v === "string" ? v : JSON.stringify(v))).join("\n") : JSON.stringify(value ?? {});
      ta.addEventListener("change", () => {
        if (isList) onchange(ta.value.split("\n").map((l) => l.trim()).filter(Boolean).map((l) => (l.startsWith("{") ? JSON.parse(l) : l)));
        else { try { onchange(JSON.parse(ta.value || "{}")); } catch { onchange(ta.value); } }
      });
      return ta;
    }
    const num = prop.type === "integer" || prop.type === "number";
    const inp = el("input", {type: num ? "number" : "text", id, step: prop.type === "number" ? "any" : undefined,
                             list: path.endsWith(".folder_path") ? "dataset-folders" : undefined});
    inp.value = value ?? "";
    inp.addEventListener("change", () => {
      const raw = inp.value.trim();
      onchange(raw === "" ? (prop.nullable ? null : undefined) : num ? Number(raw) : raw);
    });
    return inp;
  }

  function field(path, prop, value) {
    const name = path.split(".").pop();
    return el("div", {class: "field", "data-path": path},
      el("label", {for: "f-" + path.replace(/\./g, "-")}, name.replace(/_/g, " ")),
      input(path, prop, value),
      prop.description ? el("div", {class: "help"}, prop.description.replace(/``/g, "")) : null,
      el("div", {class: "err", "data-err": path}));
  }

  function render() {
    const cfg = resolved || draft;
    panels.replaceChildren();
    for (const p of s.panels) {
      const box = el("div", {class: "panel" + (p.list ? " wide" : ""), id: "panel-" + p.id}, el("h2", {}, p.title));
      if (p.list) {
        (draft[p.list] || []).forEach((_, i) => {
          const card = el("div", {class: "dataset", "data-index": i}, el("h2", {}, `Dataset ${i + 1}`));
          for (const f of p.fields) {
            const path = `${p.list}.${i}.${f}`, prop = fieldSchema(S, `${p.list}.${f}`);
            if (prop) card.append(field(path, prop, getAt(cfg, path)));
          }
          card.append(el("button", {class: "secondary", onclick: () => { draft[p.list].splice(i, 1); schedule(true); }}, "Remove dataset"));
          box.append(card);
        });
        box.append(el("button", {class: "secondary", id: "add-dataset", onclick: () => { (draft[p.list] ||= []).push({folder_path: ""}); schedule(true); }}, "Add dataset"));
      } else {
        const present = p.fields.filter((f) => fieldSchema(S, f));
        for (const f of present) box.append(field(f, fieldSchema(S, f), getAt(cfg, f)));
        if (!present.length) box.append(el("p", {class: "muted"}, "This build has no settings here yet: weights stay in model.dtype."));
      }
      panels.append(box);
    }
    $("#panel-training")?.append(el("div", {class: "field", "data-path": "train.timesteps"},
      el("label", {}, "Noise levels trained (t = 1000 is pure noise)"), el("canvas", {id: "timestep-curve", width: 330, height: 130}),
      el("div", {class: "help"}, "blue: how often each noise level is drawn; orange: its loss weight (zlora config timesteps)")));
  }

  function showErrors(errors) {
    document.querySelectorAll("[data-err]").forEach((e) => { e.textContent = ""; e.parentElement.classList.remove("invalid"); });
    const loose = [];
    for (const {loc, msg} of errors) {
      const spot = document.querySelector(`[data-err="${locToPath(loc)}"]`);
      if (spot) { spot.textContent = msg; spot.parentElement.classList.add("invalid"); } else loose.push(msg);
    }
    formErr.textContent = loose.join("\n");
  }

  let timer = null;
  function schedule(rerender = false) { clearTimeout(timer); timer = setTimeout(() => update(rerender), 150); }
  async function update(rerender) {
    const r = await api("POST", "/api/config/resolve", {config: draft});
    const archChanged = resolved && r.config && resolved.model.arch !== r.config.model.arch;
    resolved = r.config; lastYaml = r.yaml;
    if (rerender || archChanged || !panels.childElementCount) render();
    else if (resolved) syncValues();
    showErrors(r.errors);
    if (r.timesteps) drawTimesteps($("#timestep-curve"), r.timesteps);
    $("#submit").disabled = false;
    refreshYaml();
  }
  function syncValues() {      // show resolved values (presets, defaults) in fields the user did not type in
    document.querySelectorAll(".field").forEach((f) => {
      const path = f.dataset.path; if (getAt(draft, path) !== undefined) return;
      const prop = path.startsWith("datasets.") ? fieldSchema(S, "datasets." + path.split(".").slice(2).join(".")) : fieldSchema(S, path);
      f.replaceWith(field(path, prop, getAt(resolved, path)));
    });
  }
  function refreshYaml() { if (!yamlPanel.classList.contains("hidden")) yamlBox.value = lastYaml || JSON.stringify(draft, null, 2); }
  async function applyYaml() {
    try { draft = (await api("POST", "/api/config/parse", {yaml: yamlBox.value})).config; formErr.textContent = ""; schedule(true); }
    catch (e) { formErr.textContent = (e.detail || []).map((d) => d.msg).join("\n") || e.message; }
  }
  async function submitJob() {
    $("#submit").disabled = true;
    try {
      const r = await api("POST", "/api/jobs", {config_yaml: JSON.stringify(draft), start: true});
      draft = null; location.hash = `#/jobs/${r.id}`;
    } catch (e) {
      $("#submit").disabled = false;
      if (Array.isArray(e.detail)) showErrors(e.detail); else formErr.textContent = e.detail || e.message;
    }
  }
  await update(true);
}

// ------------------------------------------------------------------ job list
async function jobAction(id, action) {
  if (action === "delete") {
    if (!confirm(`Delete job ${id}? The run folder this job made goes with it (checkpoints, samples, LoRAs); a folder that existed before the job, and datasets, stay.`)) return;
    const r = await api("DELETE", `/api/jobs/${id}`);
    if (r.kept) alert(r.kept);
  } else if (action === "duplicate") {
    const r = await api("POST", `/api/jobs/${id}/duplicate`);
    draft = (await api("POST", "/api/config/parse", {yaml: r.config_yaml})).config;
    location.hash = "#/new"; return;
  } else await api("POST", `/api/jobs/${id}/${action}`);
  window.addEventListener("DOMContentLoaded", route);
}
function actions(job) {
  const b = (a, label, cls = "secondary") => el("button", {class: cls, "data-action": a, onclick: () => jobAction(job.id, a)}, label);
  return [job.status === "running" || job.status === "queued" ? b("stop", "Stop") : null,
          ["stopped", "interrupted", "failed"].includes(job.status) ? b("resume", "Resume") : null,
          b("duplicate", "Duplicate"),
          ["running", "stopping"].includes(job.status) ? null : b("delete", "Delete", "danger")];
}

async function jobsPage() {
  const view = $("#view");
  const body = el("tbody", {id: "jobs"});
  view.replaceChildren(el("h1", {}, "Jobs"),
    el("table", {}, el("thead", {}, el("tr", {}, ["#", "name", "status", "step", "loss", "s/step", "ETA", ""].map((h) => el("th", {}, h)))), body));
  async function refresh() {
    const jobs = await api("GET", "/api/jobs");
    body.replaceChildren(...jobs.slice().reverse().map((j) => el("tr", {"data-id": j.id},
      el("td", {}, j.id), el("td", {}, el("a", {href: `#/jobs/${j.id}`}, j.name)),
      el("td", {}, el("span", {class: `status ${j.status}`}, j.status)),
      el("td", {}, `${j.step} / ${j.steps}`), el("td", {}, fmt.num(j.loss)), el("td", {}, fmt.num(j.s_per_step, 3)),
      el("td", {}, fmt.secs(j.eta_s)), el("td", {}, el("div", {class: "toolbar"}, actions(j))))));
    if (!jobs.length) body.append(el("tr", {}, el("td", {colspan: 8, class: "muted"}, "No jobs yet: create one under New Training Job.")));
  }
  await refresh();
  const t = setInterval(refresh, 1500); cleanup.push(() => clearInterval(t));
}

// ------------------------------------------------------------------ one job
function drawLoss(canvas, rows) {
  const ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height, pad = 40;
  ctx.clearRect(0, 0, W, H);
  ctx.fillStyle = "#8b95a3"; ctx.font = "12px sans-serif";
  if (!rows.length) { ctx.fillText("no steps yet", pad, H / 2); return; }
  const xs = rows.map((r) => r.step), ys = rows.map((r) => r.loss);
  const smooth = []; let ema = 0;   // bias-corrected EMA (as TensorBoard smooths)
  ys.forEach((y, i) => { ema = 0.9 * ema + 0.1 * y; smooth.push(ema / (1 - 0.9 ** (i + 1))); });
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-6);
  const X = (x) => pad + (x - x0) / (x1 - x0) * (W - 2 * pad), Y = (y) => H - pad + (y0 - y) / (y1 - y0) * (H - 2 * pad);
  ctx.strokeStyle = "#2c333d"; ctx.beginPath(); ctx.moveTo(pad, pad / 2); ctx.lineTo(pad, H - pad); ctx.lineTo(W - pad / 2, H - pad); ctx.stroke();
  ctx.fillText(y1.toPrecision(3), 2, pad / 2 + 8); ctx.fillText(y0.toPrecision(3), 2, H - pad);
  ctx.fillText(`step ${x0}`, pad, H - pad + 16); ctx.fillText(`step ${x1}`, W - pad - 50, H - pad + 16);
  for (const [series, color, width] of [[ys, "rgba(90,169,255,.35)", 1], [smooth, "#5aa9ff", 2]]) {
    ctx.strokeStyle = color; ctx.lineWidth = width; ctx.beginPath();
    series.forEach((y, i) => (i ? ctx.lineTo(X(xs[i]), Y(y)) : ctx.moveTo(X(xs[i]), Y(y)))); ctx.stroke();
  }
  ctx.lineWidth = 1; ctx.fillStyle = "#5aa9ff"; ctx.fillText("loss (raw, smoothed)", W - 170, 14);
}

function drawTimesteps(canvas, table) {   // the sampling density and the loss weight over t (zlora config timesteps)
  if (!canvas) return;
  const ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height, pad = 18;
  ctx.clearRect(0, 0, W, H);
  const top = Math.max(1.6, ...table.density, ...table.weight);
  const X = (t) => pad + t / 1000 * (W - 2 * pad), Y = (v) => H - pad - v / top * (H - 2 * pad);
  ctx.strokeStyle = "#2c333d"; ctx.beginPath(); ctx.moveTo(pad, pad / 2); ctx.lineTo(pad, H - pad); ctx.lineTo(W - pad / 2, H - pad); ctx.stroke();
  ctx.fillStyle = "#8b95a3"; ctx.font = "10px sans-serif"; ctx.fillText("0", pad - 3, H - 5); ctx.fillText("t 1000", W - pad - 24, H - 5);
  ctx.fillText(top.toFixed(1), 0, pad);
  for (const [series, color] of [[table.density, "#5aa9ff"], [table.weight, "#f0a35a"]]) {
    ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
    series.forEach((v, i) => (i ? ctx.lineTo(X(table.t[i]), Y(v)) : ctx.moveTo(X(table.t[i]), Y(v)))); ctx.stroke();
  }
  ctx.lineWidth = 1;
}

function zoom(src, caption) { $("#modal-img").src = src; $("#modal-caption").textContent = caption; $("#modal").classList.remove("hidden"); }
$("#modal").addEventListener("click", () => $("#modal").classList.add("hidden"));

async function jobPage(id) {
  const view = $("#view");
  const stats = el("div", {class: "stats", id: "stats"});
  const canvas = el("canvas", {id: "loss-chart", width: 900, height: 260});
  const gallery = el("div", {class: "gallery", id: "gallery"});
  const judgeBox = el("div", {id: "judge"});   // builtin:shapes runs: the pixel judge's scores per preview
  const compare = el("div", {class: "compare", id: "compare"});
  const logBox = el("pre", {class: "log", id: "log"});
  const files = el("ul", {id: "files"});
  const head = el("div", {});
  const stepA = el("select", {id: "compare-a"}), stepB = el("select", {id: "compare-b"});
  view.replaceChildren(head, stats, el("h2", {}, "Loss"), canvas,
    el("h2", {}, "Samples"), judgeBox, gallery,
    el("h2", {}, "Compare two steps"), el("div", {class: "toolbar"}, stepA, "vs", stepB), compare,
    el("h2", {}, "Downloads"), files, el("h2", {}, "Log"), logBox);
  let job = null, sampleList = [];

  function showJob(j) {
    job = j;
    head.replaceChildren(el("h1", {}, `${j.name} `, el("span", {class: `status ${j.status}`, id: "job-status"}, j.status)),
      el("div", {class: "err", id: "job-error"}, j.error || ""),
      el("div", {class: "toolbar"}, actions(j)), el("div", {class: "muted"}, `run folder: ${j.run_dir}`));
    stats.replaceChildren(...[["step", `${j.step} / ${j.steps}`, "stat-step"], ["loss", fmt.num(j.loss), "stat-loss"],
      ["lr", fmt.num(j.lr, 3), "stat-lr"], ["s/step", fmt.num(j.s_per_step, 3), "stat-speed"], ["ETA", fmt.secs(j.eta_s), "stat-eta"]]
      .map(([k, v, sid]) => el("div", {}, el("span", {class: "muted"}, k), el("b", {id: sid}, v))));
  }
  function renderCompare() {
    const cols = [stepA.value, stepB.value].map((step) => el("div", {class: "col"}, el("b", {}, `step ${step}`),
      sampleList.filter((s) => String(s.step) === step).map((s) => el("img", {src: s.url, alt: `step ${s.step} prompt ${s.prompt_index}`,
        onclick: () => zoom(s.url, `step ${s.step}, prompt ${s.prompt_index + 1}, seed ${s.seed}`)}))));
    compare.replaceChildren(...cols);
  }
  function renderJudge(rows) {
    const pct = (v) => (v === null || v === undefined ? "-" : `${Math.round(100 * v)}%`);
    judgeBox.replaceChildren(...(rows.length ? [el("table", {class: "judge"},
      el("thead", {}, el("tr", {}, ["step", "adherence", "concept (with trigger)", "drift (without)"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.map((r) => el("tr", {}, [r.step, pct(r.judge.adherence), pct(r.judge.concept), pct(r.judge.drift)]
        .map((v) => el("td", {}, String(v))))))),
      el("div", {class: "muted"}, "pixel judge of the previews (builtin:shapes): colours and shape as asked; the star with the trigger; changes versus the base model without it")] : []));
  }
  let shownStep = null;
  function renderGallery(steps) {   // one checkpoint step at a time: rows = prompts, columns = seeds
    const tabs = el("div", {class: "toolbar", id: "gallery-steps"}, steps.map((st) =>
      el("button", {class: st === shownStep ? "" : "secondary", "data-step": st, onclick: () => { shownStep = st; renderGallery(steps); }}, `step ${st}`)));
    const here = sampleList.filter((s) => s.step === shownStep);
    const prompts = [...new Set(here.map((s) => s.prompt_index))];
    gallery.replaceChildren(tabs, ...prompts.map((p) => el("div", {class: "row", "data-step": shownStep, "data-prompt": p},
      el("span", {}, `prompt ${p + 1}`),
      here.filter((s) => s.prompt_index === p).map((s) => el("img", {src: s.url, alt: `step ${s.step} prompt ${p + 1} seed ${s.seed}`,
        onclick: () => zoom(s.url, `step ${s.step}, prompt ${p + 1}, seed ${s.seed}`)})))));
  }
  async function refreshSlow() {
    const [metrics, samples, fl, lg] = await Promise.all([api("GET", `/api/jobs/${id}/metrics`), api("GET", `/api/jobs/${id}/samples`),
      api("GET", `/api/jobs/${id}/files`), api("GET", `/api/jobs/${id}/log?tail=80`)]);
    drawLoss(canvas, metrics.filter((r) => r.loss !== undefined));   // judge rows (builtin:shapes) have no loss
    renderJudge(metrics.filter((r) => r.judge));
    if (JSON.stringify(samples) !== JSON.stringify(sampleList)) {
      const newest = !sampleList.length || String(shownStep) === String(sampleList[sampleList.length - 1].step);
      sampleList = samples;
      const steps = [...new Set(samples.map((s) => s.step))];
      if (newest || !steps.includes(shownStep)) shownStep = steps[steps.length - 1];
      renderGallery(steps);
      const keep = [stepA.value, stepB.value];
      for (const [sel, fallback] of [[stepA, steps[0]], [stepB, steps[steps.length - 1]]]) {
        sel.replaceChildren(...steps.map((st) => el("option", {value: st}, `step ${st}`)));
        sel.value = steps.map(String).includes(keep[sel === stepA ? 0 : 1]) ? keep[sel === stepA ? 0 : 1] : fallback;
      }
      renderCompare();
    }
    files.replaceChildren(...fl.map((f) => el("li", {}, el("a", {href: f.url, download: f.name}, f.name))));
    logBox.textContent = lg.text; logBox.scrollTop = logBox.scrollHeight;
  }
  stepA.addEventListener("change", renderCompare); stepB.addEventListener("change", renderCompare);

  showJob(await api("GET", `/api/jobs/${id}`));
  await refreshSlow();
  const events = new EventSource(`/api/jobs/${id}/events`);
  events.onmessage = (ev) => showJob(JSON.parse(ev.data));
  events.addEventListener("deleted", () => { events.close(); location.hash = "#/jobs"; });
  const t = setInterval(() => { if (job && !["done", "failed", "stopped", "interrupted"].includes(job.status)) refreshSlow(); }, 2000);
  let lastStatus = null;
  const t2 = setInterval(() => { if (job && job.status !== lastStatus) { lastStatus = job.status; refreshSlow(); } }, 500);
  cleanup.push(() => { events.close(); clearInterval(t); clearInterval(t2); });
}

window.addEventListener("DOMContentLoaded", route);
