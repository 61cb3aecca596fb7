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
// One state: `draft` holds what the user set (a sparse config; null = cleared on purpose); the server resolves it
// (defaults, the architecture's and the preset's values, the guide's starting values, this machine's checks) and
// every control shows the resolved value. A value that came from a default is not in the draft, so it follows a
// change of architecture or preset; Duplicate and "Apply YAML" keep only what differs from the defaults.
const DRAFT_KEY = "zlora.newjob";
let draft = null, editing = null;   // editing: the id of the job whose settings the form changes
function defaultDraft() { return {job: {name: "my_lora"}, datasets: [{folder_path: ""}]}; }
function saveDraft() { try { localStorage.setItem(DRAFT_KEY, JSON.stringify({draft, editing})); } catch { /* private mode */ } }
function restoreDraft() {
  try { const v = JSON.parse(localStorage.getItem(DRAFT_KEY)); if (v && v.draft) { draft = v.draft; editing = v.editing ?? null; } } catch { /* none */ }
}
async function openInForm(configYaml, jobId = null) {     // Duplicate / Edit: the job's config as the user's settings
  draft = (await api("POST", "/api/config/parse", {yaml: configYaml, baseline: true})).config;
  editing = jobId; saveDraft(); location.hash = "#/new";
}
function firstSentence(t) {     // the help line: the docstring's first sentence (or two, when the first is a few words)
  let out = "";
  for (const part of t.replace(/\s+/g, " ").split(/(?<=\.)\s/)) { out += (out ? " " : "") + part; if (out.length >= 50) break; }
  return out;
}
function unsetAt(obj, path) {
  const parts = path.split("."), last = parts.pop();
  const o = parts.reduce((x, k) => (x === undefined || x === null ? undefined : x[k]), obj);
  if (o && typeof o === "object" && !Array.isArray(o)) delete o[last];
}

async function newJobPage() {
  const s = await schema(), S = s.schema, labels = s.option_labels;
  if (!draft) restoreDraft();
  if (!draft) draft = defaultDraft();
  const view = $("#view"); view.replaceChildren();
  const formErr = el("div", {class: "err", id: "form-errors"});
  const yamlBox = el("textarea", {id: "yaml", rows: 30, spellcheck: "false"});
  const yamlErr = el("div", {class: "err", id: "yaml-errors"});
  const yamlPanel = el("div", {class: "panel hidden", id: "yaml-panel"},
    el("h2", {}, "Config (YAML)"),
    el("div", {class: "toolbar"}, el("button", {id: "yaml-apply", onclick: applyYaml}, "Apply YAML to the form"),
       el("span", {class: "muted"}, "The form and this text are one config: edit either.")), yamlErr, yamlBox);
  const panels = el("div", {class: "panels", id: "panels"});
  const layout = el("div", {class: "newjob", id: "newjob"}, panels, yamlPanel);
  const folders = el("datalist", {id: "dataset-folders"}), devices = el("datalist", {id: "devices"});
  api("GET", "/api/datasets").then((ds) => folders.replaceChildren(...ds.map((d) => el("option", {value: d.path}, d.name)))).catch(() => {});
  api("GET", "/api/machine").then((m) => devices.replaceChildren(...["auto", "cpu", ...m.cuda.map((c, i) => `cuda:${i}`)].map((d, i) =>
    el("option", {value: d}, i > 1 ? `${m.cuda[i - 2].name}, ${m.cuda[i - 2].memory_gib} GiB` : d)))).catch(() => {});
  const problemsBtn = el("button", {class: "secondary hidden", id: "problems", onclick: jumpToProblem}, "");
  const advBtn = el("button", {class: "secondary", id: "toggle-advanced", onclick: toggleYaml}, "Show Advanced");
  const bar = el("div", {class: "actionbar", id: "actionbar"},
    el("button", {id: "submit", onclick: submitJob}, editing ? "Save and resume" : "Create job"), problemsBtn, advBtn,
    el("button", {class: "secondary", id: "reset", onclick: () => { draft = defaultDraft(); editing = null; saveDraft(); newJobPage(); }},
       editing ? "Cancel edit" : "Reset"));
  view.append(el("h1", {}, editing ? `Edit job ${editing}` : "New Training Job"), folders, devices, formErr, layout, bar);
  let resolved = null, lastYaml = null, errors = [];
  const controls = new Map();          // config path -> {set(value), input}

  const valueAt = (path) => { const v = getAt(draft, path); return v !== undefined ? v : getAt(resolved, path); };
  function write(path, v) { if (v === undefined) unsetAt(draft, path); else setAt(draft, path, v); saveDraft(); schedule(); }

  function input(path, prop) {
    const id = "f-" + path.replace(/\./g, "-");
    const opts = labels[path.replace(/^datasets\.\d+\./, "datasets.")] || labels[path] || {};
    const name = (o) => opts[String(o)] ?? String(o);
    if (path.endsWith(".resolution")) {         // the guide's toggles and free entry: two views of one list
      const text = el("input", {type: "text", id});
      const parse = () => text.value.split(/[ ,]+/).filter(Boolean).map(Number);
      text.addEventListener("change", () => write(path, parse()));
      const boxes = [256, 512, 768, 1024, 1280, 1536].map((r) => {
        const cb = el("input", {type: "checkbox", "data-res": r});
        cb.addEventListener("change", () => {
          const now = new Set(valueAt(path) || []); cb.checked ? now.add(r) : now.delete(r);
          write(path, [...now].sort((a, b) => a - b));
        });
        return cb;
      });
      return {node: el("div", {}, el("div", {class: "toggles"}, boxes.map((cb) => el("label", {}, cb, cb.dataset.res))), text),
              focus: text, set: (v) => { const vals = Array.isArray(v) ? v : [];
                if (document.activeElement !== text) text.value = vals.join(", ");
                boxes.forEach((cb) => { cb.checked = vals.includes(Number(cb.dataset.res)); }); }};
    }
    if (prop.type === "boolean") {
      const cb = el("input", {type: "checkbox", id}); cb.addEventListener("change", () => write(path, cb.checked));
      return {node: cb, focus: cb, set: (v) => { cb.checked = !!v; }};
    }
    const anyOf = prop.anyOf || [];
    const choice = prop.enum ? prop.enum.map(String)                        // one of a fixed set (compile: true/false/auto)
      : anyOf.length && anyOf.every((x) => x.type === "boolean" || x.enum || x.const !== undefined)
        ? anyOf.flatMap((x) => (x.type === "boolean" ? ["true", "false"] : (x.enum || [x.const]).map(String))) : null;
    if (choice) {
      const sel = el("select", {id}, (prop.nullable ? [""] : []).concat(choice).map((o) => el("option", {value: o}, o === "" ? "(none)" : name(o))));
      sel.addEventListener("change", () => write(path, sel.value === "" ? null : sel.value === "true" ? true : sel.value === "false" ? false : sel.value));
      return {node: sel, focus: sel, set: (v) => { sel.value = v === null || v === undefined ? "" : String(v); }};
    }
    if (prop.type === "array" && prop.items && deref(S, prop.items).enum) {   // several of a fixed set
      const all = deref(S, prop.items).enum;
      const boxes = all.map((o) => { const cb = el("input", {type: "checkbox", value: o});
        cb.addEventListener("change", () => write(path, boxes.filter((c) => c.checked).map((c) => c.value))); return cb; });
      return {node: el("div", {class: "toggles", id}, boxes.map((cb) => el("label", {}, cb, name(cb.value)))), focus: boxes[0],
              set: (v) => boxes.forEach((cb) => { cb.checked = (v || []).includes(cb.value); })};
    }
    const numeric = anyOf.find((x) => x.type === "integer" || x.type === "number");
    if (numeric && anyOf.every((x) => x === numeric || x.enum || x.const !== undefined)) {   // a number or a word
      const words = anyOf.flatMap((x) => x.enum || (x.const !== undefined ? [x.const] : [])).map(String);
      const inp = el("input", {type: "text", id, list: id + "-words", inputmode: "numeric",
        placeholder: (prop.nullable ? "(none) · " : "") + `a number or ${words.join(" / ")}`});
      inp.addEventListener("change", () => {
        const raw = inp.value.trim();
        if (prop.nullable && (raw === "" || /^(null|none|~)$/i.test(raw))) write(path, null);
        else write(path, raw === "" ? undefined : /^-?\d+(\.\d+)?$/.test(raw) ? Number(raw) : raw);
      });
      return {node: el("span", {class: "numword"}, inp, el("datalist", {id: id + "-words"}, words.map((w) => el("option", {value: w})))),
              focus: inp, set: (v) => { if (document.activeElement !== inp) inp.value = v ?? ""; }};
    }
    if (prop.type === "array" || prop.type === "object" || prop.anyOf) {       // lists: one per line; dicts: JSON
      const isList = prop.type === "array", ta = el("textarea", {id, rows: 3});
      ta.addEventListener("change", () => {
        if (isList) write(path, ta.value.split("\n").map((l) => l.trim()).filter(Boolean).map((l) => { try { return l.startsWith("{") ? JSON.parse(l) : l; } catch { return l; } }));
        else { try { write(path, JSON.parse(ta.value.trim() || "{}")); } catch (e) { showLocal(path, `not JSON: ${e.message}; write e.g. {"eta_min": 1e-6}`); } }
      });
      return {node: ta, focus: ta, set: (v) => { if (document.activeElement === ta) return;
        ta.value = isList ? (v || []).map((x) => (typeof x === "string" ? x : JSON.stringify(x))).join("\n") : JSON.stringify(v ?? {}); }};
    }
    const num = prop.type === "integer" || prop.type === "number";
    const inp = el("input", {type: num ? "number" : "text", id, step: prop.type === "number" ? "any" : undefined,
      list: path.endsWith(".folder_path") ? "dataset-folders" : path === "job.device" ? "devices" : undefined,
      placeholder: prop.nullable ? "(none)" : undefined});
    inp.addEventListener("change", () => {
      const raw = inp.value.trim();
      if (prop.nullable && (raw === "" || /^(null|none|~)$/i.test(raw))) write(path, null);   // cleared on purpose
      else write(path, raw === "" ? undefined : num ? Number(raw) : raw);
    });
    return {node: inp, focus: inp, set: (v) => { if (document.activeElement !== inp) inp.value = v ?? ""; }};
  }

  function field(path, label, prop) {
    const c = input(path, prop);
    const reset = el("button", {class: "reset hidden", type: "button", title: "back to the default", "data-reset": path,
      onclick: () => write(path, undefined)}, "↺");
    controls.set(path, {...c, reset});
    const help = prop.description ? prop.description.replace(/``/g, "") : "";
    return el("div", {class: "field", "data-path": path, title: help},
      el("label", {for: "f-" + path.replace(/\./g, "-")}, label, reset), c.node,
      help ? el("div", {class: "help"}, firstSentence(help)) : null,
      el("div", {class: "err", "data-err": path}));
  }
  const schemaOf = (path) => fieldSchema(S, path.replace(/^datasets\.\d+\./, "datasets."));

  function render() {
    controls.clear(); panels.replaceChildren();
    const openFolds = new Set([...document.querySelectorAll("details.more[open]")].map((d) => d.dataset.panel));
    for (const p of s.panels) {
      const box = el("div", {class: "panel" + (p.list ? " wide" : ""), id: "panel-" + p.id}, el("h2", {}, p.title));
      const fill = (target, entries, prefix) => { for (const f of entries) { const path = prefix + f.path, prop = schemaOf(path);
        const on = !f.only || valueAt(f.only[0]) === f.only[1];
        if (!on && getAt(draft, path) !== undefined) write(path, undefined);   // another type: its fields go with it
        else if (prop && on) target.append(field(path, f.label, prop)); } };
      const fold = (entries, prefix, key) => { if (!entries.length) return null;
        const d = el("details", {class: "more", "data-panel": key}, el("summary", {}, `More settings (${entries.length})`));
        if (openFolds.has(key)) d.open = true; fill(d, entries, prefix); return d; };
      if (p.list) {
        (draft[p.list] || []).forEach((_, i) => {
          const card = el("div", {class: "dataset", "data-index": i}, el("h2", {}, `Dataset ${i + 1}`));
          fill(card, p.fields, `${p.list}.${i}.`);
          const more = fold(p.more, `${p.list}.${i}.`, `${p.id}-${i}`); if (more) card.append(more);
          card.append(el("button", {class: "secondary", onclick: () => { draft[p.list].splice(i, 1); saveDraft(); schedule(true); }}, "Remove dataset"));
          box.append(card);
        });
        box.append(el("button", {class: "secondary", id: "add-dataset", onclick: () => { (draft[p.list] ||= []).push({folder_path: ""}); saveDraft(); schedule(true); }}, "Add dataset"));
      } else {
        fill(box, p.fields, ""); const more = fold(p.more, "", p.id); if (more) box.append(more);
      }
      panels.append(box);
    }
    $("#panel-training")?.append(el("div", {class: "field", "data-path": "train.timesteps"},
      el("label", {}, "Noise levels trained (t = 1000 is pure noise)"), el("canvas", {id: "timestep-curve", width: 330, height: 130}),
      el("div", {class: "help"}, "blue: how often each noise level is drawn; orange: its loss weight (zlora config timesteps)")));
    sync();
  }
  function sync() {     // every control shows the state: what the user set, else what it resolves to
    for (const [path, c] of controls) {
      c.set(valueAt(path));
      c.reset.classList.toggle("hidden", getAt(draft, path) === undefined);
    }
  }
  function showLocal(path, msg) { const spot = document.querySelector(`[data-err="${path}"]`); if (spot) { spot.textContent = msg; spot.parentElement.classList.add("invalid"); } }
  function showErrors(list) {
    errors = list;
    document.querySelectorAll("[data-err]").forEach((e) => { e.textContent = ""; e.parentElement.classList.remove("invalid"); });
    const loose = [];
    for (const {loc, msg} of list) {
      const spot = document.querySelector(`[data-err="${locToPath(loc)}"]`);
      if (spot) { spot.textContent = spot.textContent ? `${spot.textContent}\n${msg}` : msg; spot.parentElement.classList.add("invalid"); }
      else loose.push(msg);
    }
    formErr.textContent = loose.join("\n");
    yamlErr.textContent = list.map(({loc, msg}) => (loc ? `${locToPath(loc)}: ${msg}` : msg)).join("\n");
    problemsBtn.textContent = `${list.length} problem${list.length === 1 ? "" : "s"}: show the first`;
    problemsBtn.classList.toggle("hidden", !list.length);
  }
  function jumpToProblem() {
    const spot = document.querySelector(".field.invalid") || (formErr.textContent ? formErr : null);
    if (!spot) return;
    const fold = spot.closest("details"); if (fold) fold.open = true;
    spot.scrollIntoView({block: "center"});
    spot.querySelector?.("input, select, textarea")?.focus();
  }

  // fields shown only for one value of another setting (LoKr's under network.type: lokr): re-render when it changes
  const shownKey = () => JSON.stringify(s.panels.flatMap((p) => [...p.fields, ...p.more]).filter((f) => f.only).map((f) => valueAt(f.only[0])));
  let shown = null;
  let timer = null;
  function schedule(rerender = false) { clearTimeout(timer); timer = setTimeout(() => update(rerender), 150); }
  async function update(rerender) {
    const sent = JSON.stringify(draft);
    const r = await api("POST", "/api/config/resolve", {config: draft, baseline: true, check_environment: true});
    if (sent !== JSON.stringify(draft)) return;   // an older answer: a newer request is on its way
    if (r.config) resolved = r.config;
    lastYaml = r.yaml;
    const count = (draft.datasets || []).length, shownNow = shownKey();
    if (rerender || !panels.childElementCount || panels.querySelectorAll(".dataset").length !== count || shownNow !== shown) {
      shown = shownNow; render();
    } else sync();
    showErrors(r.errors);
    if (r.timesteps) drawTimesteps($("#timestep-curve"), r.timesteps);
    $("#submit").disabled = false;
    refreshYaml();
  }
  function toggleYaml() {
    const shown = yamlPanel.classList.toggle("hidden") === false;
    layout.classList.toggle("with-yaml", shown); advBtn.textContent = shown ? "Hide Advanced" : "Show Advanced"; refreshYaml();
  }
  function refreshYaml() {
    if (!yamlPanel.classList.contains("hidden") && document.activeElement !== yamlBox) yamlBox.value = lastYaml || JSON.stringify(draft, null, 2);
  }
  async function applyYaml() {
    try { draft = (await api("POST", "/api/config/parse", {yaml: yamlBox.value, baseline: true})).config; yamlErr.textContent = "";
          saveDraft(); yamlBox.blur(); schedule(true); }
    catch (e) { yamlErr.textContent = (e.detail || []).map((d) => d.msg).join("\n") || e.message; }
  }
  async function submitJob() {
    clearTimeout(timer); await update(false);     // the very config on screen, checked as `zlora train` would
    if (errors.length) { jumpToProblem(); return; }
    $("#submit").disabled = true;
    try {
      const body = {config_yaml: JSON.stringify(draft), start: true, baseline: true};
      const r = editing ? await api("PUT", `/api/jobs/${editing}/config`, body) : await api("POST", "/api/jobs", body);
      draft = null; editing = null; localStorage.removeItem(DRAFT_KEY); location.hash = `#/jobs/${r.id}`;
    } catch (e) {
      $("#submit").disabled = false;
      if (Array.isArray(e.detail)) showErrors(e.detail); else { formErr.textContent = e.detail || e.message; showErrors([{loc: "", msg: e.detail || e.message}]); }
      jumpToProblem();
    }
  }
  await update(true);
}

// ------------------------------------------------------------------ job list
async function jobAction(id, action, job = null, force = false) {
  if (action === "delete") {
    if (!confirm(`Delete job ${id}? The run folder this job made goes with it (checkpoints, samples, LoRAs); a folder that existed before the job, and datasets, stay.`)) return;
    const r = await api("DELETE", `/api/jobs/${id}`);
    if (r.kept) alert(r.kept);
  } else if (action === "duplicate") {
    await openInForm((await api("POST", `/api/jobs/${id}/duplicate`)).config_yaml); return;
  } else if (action === "edit") {
    await openInForm((await api("GET", `/api/jobs/${id}`)).config_yaml, id); return;
  } else if (action === "resume" && job && job.status === "failed" && !force) {
    // a failed job rerun as it is fails again: say why it failed, offer to change the settings first
    openFailed = id;
    if (!location.hash.startsWith(`#/jobs/${id}`)) { location.hash = `#/jobs/${id}`; return; }
    const box = $("#resume-failed"); if (box) box.classList.remove("hidden"); return;
  } else await api("POST", `/api/jobs/${id}/${action}`);
}
let openFailed = null;   // the failed job whose "why it failed" box the job page opens
const shownStatus = (j) => (j.status === "running" && j.phase === "starting" ? "starting" : j.status);
function actions(job) {
  const b = (a, label, cls = "secondary") => el("button", {class: cls, "data-action": a, onclick: () => jobAction(job.id, a, job)}, label);
  return [job.status === "running" || job.status === "queued" ? b("stop", "Stop") : null,
          ["stopped", "interrupted", "failed"].includes(job.status) ? b("resume", "Resume") : null,
          ["stopped", "failed"].includes(job.status) ? b("edit", "Edit") : null,
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
      el("td", {}, el("span", {class: `status ${j.status}`}, shownStatus(j))),
      el("td", {}, `${j.step} / ${j.steps}`), el("td", {}, fmt.num(j.loss)), el("td", {}, fmt.num(j.s_per_step, 3)),
      el("td", {}, fmt.secs(j.eta_s)), el("td", {}, el("div", {class: "toolbar"}, actions(j))))));
    if (!jobs.length) body.append(el("tr", {}, el("td", {colspan: 8, class: "muted"}, "No jobs yet: create one under New Training Job.")));
  }
  await refresh();
  const t = setInterval(refresh, 1500); cleanup.push(() => clearInterval(t));
}

// ------------------------------------------------------------------ one job
function drawLoss(canvas, rows, val = []) {   // val: validation rows {step, val_loss}, drawn beside the training loss
  const ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height, pad = 40;
  ctx.clearRect(0, 0, W, H);
  ctx.fillStyle = "#8b95a3"; ctx.font = "12px sans-serif";
  if (!rows.length) { ctx.fillText("no steps yet", pad, H / 2); return; }
  const xs = rows.map((r) => r.step), ys = rows.map((r) => r.loss);
  const smooth = []; let ema = 0;   // bias-corrected EMA (as TensorBoard smooths)
  ys.forEach((y, i) => { ema = 0.9 * ema + 0.1 * y; smooth.push(ema / (1 - 0.9 ** (i + 1))); });
  const vs = val.map((r) => r.val_loss);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y0 = Math.min(...ys, ...vs), y1 = Math.max(...ys, ...vs, y0 + 1e-6);
  const X = (x) => pad + (x - x0) / (x1 - x0) * (W - 2 * pad), Y = (y) => H - pad + (y0 - y) / (y1 - y0) * (H - 2 * pad);
  ctx.strokeStyle = "#2c333d"; ctx.beginPath(); ctx.moveTo(pad, pad / 2); ctx.lineTo(pad, H - pad); ctx.lineTo(W - pad / 2, H - pad); ctx.stroke();
  ctx.fillText(y1.toPrecision(3), 2, pad / 2 + 8); ctx.fillText(y0.toPrecision(3), 2, H - pad);
  ctx.fillText(`step ${x0}`, pad, H - pad + 16); ctx.fillText(`step ${x1}`, W - pad - 50, H - pad + 16);
  for (const [series, color, width] of [[ys, "rgba(90,169,255,.35)", 1], [smooth, "#5aa9ff", 2]]) {
    ctx.strokeStyle = color; ctx.lineWidth = width; ctx.beginPath();
    series.forEach((y, i) => (i ? ctx.lineTo(X(xs[i]), Y(y)) : ctx.moveTo(X(xs[i]), Y(y)))); ctx.stroke();
  }
  ctx.lineWidth = 1; ctx.fillStyle = "#5aa9ff"; ctx.fillText("loss (raw, smoothed)", W - 170, 14);
  if (val.length) {
    ctx.strokeStyle = ctx.fillStyle = "#f5a524"; ctx.lineWidth = 2; ctx.beginPath();
    val.forEach((r, i) => (i ? ctx.lineTo(X(r.step), Y(r.val_loss)) : ctx.moveTo(X(r.step), Y(r.val_loss)))); ctx.stroke();
    val.forEach((r) => ctx.fillRect(X(r.step) - 2, Y(r.val_loss) - 2, 4, 4));
    ctx.lineWidth = 1; ctx.fillText("validation", W - 170, 28);
  }
  canvas.dataset.val = JSON.stringify(vs);   // the validation values drawn
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
document.addEventListener("keydown", (e) => { if (e.key === "Escape") $("#modal").classList.add("hidden"); });

async function jobPage(id) {
  const view = $("#view");
  const stats = el("div", {class: "stats", id: "stats"});
  const canvas = el("canvas", {id: "loss-chart", width: 900, height: 260});
  const gallery = el("div", {class: "gallery", id: "gallery"});
  const judgeBox = el("div", {id: "judge"});   // builtin:shapes runs: the pixel judge's scores per preview
  const driftBox = el("div", {id: "drift"});   // real models: 1 - SSIM of the prompts without the trigger vs step 0
  const compare = el("div", {class: "compare", id: "compare"});
  const logBox = el("pre", {class: "log", id: "log"});
  const files = el("ul", {id: "files"});
  const head = el("div", {});
  const stepA = el("select", {id: "compare-a"}), stepB = el("select", {id: "compare-b"});
  view.replaceChildren(head, stats, el("h2", {}, "Loss"), canvas,
    el("h2", {}, "Samples"), judgeBox, driftBox, gallery,
    el("h2", {}, "Compare two steps"), el("div", {class: "toolbar"}, stepA, "vs", stepB), compare,
    el("h2", {}, "Downloads"), files, el("h2", {}, "Log"), logBox);
  let job = null, sampleList = [];

  function showJob(j) {
    job = j;
    const failedBox = el("div", {class: "panel hidden", id: "resume-failed"},
      el("b", {}, "This job failed:"), el("div", {class: "err"}, j.error || "(no message: see the log below)"),
      el("div", {class: "muted"}, "Resumed as it is, it runs the same settings again. Edit changes them first (a job without checkpoints)."),
      el("div", {class: "toolbar"}, el("button", {"data-action": "edit", onclick: () => jobAction(j.id, "edit", j)}, "Edit settings"),
        el("button", {class: "secondary", "data-action": "resume-anyway", onclick: () => jobAction(j.id, "resume", j, true)}, "Resume anyway")));
    const wasOpen = ($("#resume-failed") && !$("#resume-failed").classList.contains("hidden")) || openFailed === j.id;
    if (wasOpen && j.status === "failed") failedBox.classList.remove("hidden");
    openFailed = null;
    head.replaceChildren(el("h1", {}, `${j.name} `, el("span", {class: `status ${j.status}`, id: "job-status"}, shownStatus(j))),
      el("div", {class: "err", id: "job-error"}, j.error || ""),
      el("div", {class: "toolbar"}, actions(j)), failedBox, el("div", {class: "muted"}, `run folder: ${j.run_dir}`));
    stats.replaceChildren(...[["step", `${j.step} / ${j.steps}`, "stat-step"], ["loss", fmt.num(j.loss), "stat-loss"],
      ["lr", fmt.num(j.lr, 3), "stat-lr"], ["s/step", fmt.num(j.s_per_step, 3), "stat-speed"], ["ETA", fmt.secs(j.eta_s), "stat-eta"]]
      .map(([k, v, sid]) => el("div", {}, el("span", {class: "muted"}, k), el("b", {id: sid}, v))));
  }
  const promptOf = (s) => s.prompt ?? `prompt ${s.prompt_index + 1}`;
  function renderCompare() {
    const cols = [stepA.value, stepB.value].map((step) => el("div", {class: "col"}, el("b", {}, `step ${step}`),
      sampleList.filter((s) => String(s.step) === step).map((s) => el("img", {src: s.url, alt: `step ${s.step} prompt ${s.prompt_index + 1}`,
        title: promptOf(s), onclick: () => zoom(s.url, `step ${s.step}, seed ${s.seed}: ${promptOf(s)}`)}))));
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
  function renderDrift(rows) {
    driftBox.replaceChildren(...(rows.length ? [el("table", {class: "judge"},
      el("thead", {}, el("tr", {}, ["step", "drift (mean)", "worst prompt", "its drift"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.map((r) => el("tr", {}, [r.step, r.drift.mean.toFixed(3), r.drift.worst.prompt, r.drift.worst.drift.toFixed(3)]
        .map((v) => el("td", {}, String(v))))))),
      el("div", {class: "muted"}, "drift: 1 - SSIM of each preview prompt without the trigger word against its step-0 image (0: untouched)")] : []));
  }
  let shownStep = null;
  function renderGallery(steps) {   // one checkpoint step at a time: rows = prompts, columns = seeds
    const tabs = el("div", {class: "toolbar", id: "gallery-steps"}, steps.map((st) =>
      el("button", {class: st === shownStep ? "" : "secondary", "data-step": st, onclick: () => { shownStep = st; renderGallery(steps); }}, `step ${st}`)));
    const here = sampleList.filter((s) => s.step === shownStep);
    const prompts = [...new Set(here.map((s) => s.prompt_index))];
    gallery.replaceChildren(tabs, ...prompts.map((p) => el("div", {class: "row", "data-step": shownStep, "data-prompt": p},
      el("span", {class: "prompt", title: promptOf(here.find((s) => s.prompt_index === p))}, promptOf(here.find((s) => s.prompt_index === p))),
      here.filter((s) => s.prompt_index === p).map((s) => el("img", {src: s.url, alt: `step ${s.step} prompt ${p + 1} seed ${s.seed}`,
        onclick: () => zoom(s.url, `step ${s.step}, seed ${s.seed}: ${promptOf(s)}`)})))));
  }
  async function refreshSlow() {
    const [metrics, samples, fl, lg] = await Promise.all([api("GET", `/api/jobs/${id}/metrics`), api("GET", `/api/jobs/${id}/samples`),
      api("GET", `/api/jobs/${id}/files`), api("GET", `/api/jobs/${id}/log?tail=80`)]);
    drawLoss(canvas, metrics.filter((r) => r.loss !== undefined), metrics.filter((r) => r.val_loss !== undefined));
    renderJudge(metrics.filter((r) => r.judge));
    renderDrift(metrics.filter((r) => r.drift));
    if (JSON.stringify(samples) !== JSON.stringify(sampleList)) {
      const newest = !sampleList.length || String(shownStep) === String(sampleList[sampleList.length - 1].step);
      sampleList = samples;
      const steps = [...new Set(samples.map((s) => s.step))];
      if (newest || !steps.includes(shownStep)) shownStep = steps[steps.length - 1];
      renderGallery(steps);
      // A follows the first step and B the newest unless the user picked another; a live run's new step moves B on
      const newestBefore = stepB.dataset.newest, keep = [stepA.value, stepB.value];
      for (const [i, sel, fallback] of [[0, stepA, steps[0]], [1, stepB, steps[steps.length - 1]]]) {
        sel.replaceChildren(...steps.map((st) => el("option", {value: st}, `step ${st}`)));
        const follow = i === 1 && (!keep[1] || keep[1] === newestBefore);
        sel.value = !follow && steps.map(String).includes(keep[i]) ? keep[i] : fallback;
      }
      stepB.dataset.newest = String(steps[steps.length - 1]);
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
