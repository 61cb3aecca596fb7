// Web UI part 2: datasets, LoRA tools, models, generate. Uses the helpers of app.js ($, el, api, fmt, cleanup).
"use strict";

const bytes = (n) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${Math.round(n / 1e3)} kB`);
const errText = (e) => (Array.isArray(e.detail) ? e.detail.map((d) => d.msg || `${d.file}: ${d.why}`).join("\n") : e.detail || e.message);

async function waitTask(id, onUpdate) {        // polls until the task ends; the server keeps its state
  for (;;) {
    const t = await api("GET", `/api/tasks/${id}`);
    onUpdate(t);
    if (t.status !== "running" && t.status !== "queued") return t;   // queued: waits for a free slot
    await new Promise((r) => setTimeout(r, 400));
  }
}

// ------------------------------------------------------------------ datasets
async function datasetsPage() {
  const view = $("#view");
  const list = el("div", {id: "dataset-list", class: "toolbar"});
  const name = el("input", {type: "text", id: "ds-name", placeholder: "new dataset name"});
  const path = el("input", {type: "text", id: "ds-path", placeholder: "or an existing folder (used in place)"});
  const msg = el("div", {class: "err", id: "ds-msg"});
  const detail = el("div", {id: "dataset"});
  let all = [];
  view.replaceChildren(el("h1", {}, "Datasets"),
    el("div", {class: "panel"}, el("div", {class: "toolbar"}, name, path,
      el("button", {id: "ds-create", onclick: create}, "Create")), msg), el("h2", {}, "Datasets"), list, detail);
  async function refresh(select) {
    all = await api("GET", "/api/datasets");
    list.replaceChildren(...all.map((d) => el("button", {class: d.name === select ? "" : "secondary", "data-name": d.name,
      onclick: () => { location.hash = `#/datasets/${encodeURIComponent(d.name)}`; }}, `${d.name} (${d.images})`)));
  }
  async function create() {
    msg.textContent = "";
    try { const r = await api("POST", "/api/datasets", {name: name.value.trim(), path: path.value.trim() || null});
          location.hash = `#/datasets/${encodeURIComponent(r.name)}`; }
    catch (e) { msg.textContent = errText(e); }
  }
  const current = decodeURIComponent((location.hash.split("/")[2] || ""));
  await refresh(current);
  if (current) showDataset(current, detail, () => refresh(current));
}

async function showDataset(name, box, onChange) {
  const res = el("input", {type: "text", id: "ds-res", value: "512,768,1024"});
  const files = el("input", {type: "file", id: "ds-files", multiple: true, accept: "image/*,.txt"});
  const drop = el("div", {class: "panel", id: "ds-drop"}, "Drop images and .txt captions here, or ", files);
  const report = el("div", {class: "err", id: "ds-upload"});
  const grid = el("div", {id: "ds-grid", class: "ds-grid"});
  const where = el("div", {class: "muted", id: "ds-path"});
  const bulkReport = el("span", {class: "muted", id: "bulk-report"});
  const bulkText = el("input", {type: "text", id: "bulk-text", placeholder: "text"});
  const bulkFind = el("input", {type: "text", id: "bulk-find", placeholder: "find (replace only)"});
  const bulkAction = el("select", {id: "bulk-action"}, ["set", "replace", "prepend", "append", "insert_trigger"].map((a) => el("option", {value: a}, a)));
  box.replaceChildren(el("h2", {}, `Dataset ${name}`), where, drop, report,
    el("div", {class: "toolbar"}, "bulk:", bulkAction, bulkFind, bulkText, el("button", {id: "bulk-apply", onclick: bulk}, "Apply to all"),
      bulkReport, "resolutions:", res, el("button", {class: "secondary", onclick: load}, "Refresh")), grid);
  async function send(list, overwrite) {
    const form = new FormData(); for (const f of list) form.append("files", f);
    if (overwrite) form.append("overwrite", "true");
    const r = await fetch(`/api/datasets/${encodeURIComponent(name)}/files`, {method: "POST", body: form});
    const data = await r.json();
    return r.ok ? data.refused : data.detail;
  }
  async function upload(list) {   // a file of the same name is never replaced without asking
    let refused = await send(list, false) || [];
    const taken = refused.filter((x) => x.exists).map((x) => x.file);
    if (taken.length && confirm(`${taken.length} file(s) already in the dataset: ${taken.join(", ")}. Replace them?`)) {
      refused = refused.filter((x) => !x.exists).concat(await send([...list].filter((f) => taken.includes(f.name)), true) || []);
    }
    report.textContent = refused.map((x) => `${x.file}: ${x.why}`).join("\n");
    await load(); onChange();
  }
  files.addEventListener("change", () => upload(files.files));
  drop.addEventListener("dragover", (e) => e.preventDefault());
  drop.addEventListener("drop", (e) => { e.preventDefault(); upload(e.dataTransfer.files); });
  async function bulk() {
    const r = await api("POST", `/api/datasets/${encodeURIComponent(name)}/captions`, {action: bulkAction.value, text: bulkText.value, find: bulkFind.value});
    bulkReport.textContent = `${r.changed} of ${r.images} captions changed` + (r.created ? `; ${r.created} new caption file${r.created === 1 ? "" : "s"} (those images had none)` : "");
    await load();
  }
  async function load() {
    const ds = await api("GET", `/api/datasets/${encodeURIComponent(name)}?resolutions=${encodeURIComponent(res.value)}`);
    where.textContent = `folder: ${ds.path} · ${ds.images.length} images (use this path as a dataset's folder in a job)`;
    grid.replaceChildren(...ds.images.map((im) => {
      const ta = el("textarea", {rows: 2, "data-image": im.name}); ta.value = im.caption ?? "";
      let timer = null, saved = el("span", {class: "muted"}, im.caption === null ? "no caption file" : "");
      ta.addEventListener("input", () => { clearTimeout(timer); saved.textContent = "…";      // saved as you type (debounced)
        timer = setTimeout(async () => { await api("PUT", `/api/datasets/${encodeURIComponent(name)}/captions/${encodeURIComponent(im.name)}`, {text: ta.value}); saved.textContent = "saved"; }, 400); });
      const buckets = Object.entries(im.buckets).map(([r, b]) => `${r}: ${b ? b.join("×") : "too small"}`).join(", ");
      return el("div", {class: "ds-item" + (im.problem ? " bad" : ""), "data-name": im.name},
        el("img", {src: im.url, alt: im.name, onclick: () => zoom(im.url, im.name)}),
        el("div", {}, el("b", {}, im.name), el("div", {class: "muted"}, im.width ? `${im.width}×${im.height} · ${buckets}` : ""),
          im.problem ? el("div", {class: "err"}, im.problem) : null, ta, saved));
    }));
  }
  await load();
}

// ------------------------------------------------------------------ LoRA tools
async function lorasPage() {
  const sch = await schema();
  const view = $("#view");
  const pick = el("select", {id: "lora-pick"});
  const upload = el("input", {type: "file", id: "lora-upload", accept: ".safetensors"});
  const out = el("div", {id: "lora-result"});
  const report = el("pre", {class: "log", id: "lora-report"});
  const heat = el("div", {id: "lora-heat", class: "scroll-x"});
  const msg = el("div", {class: "err", id: "lora-msg"});
  const sliders = sch.vocab.sliders.map((c) => { const s = el("input", {type: "range", min: 0, max: 2, step: 0.05, value: 1, id: `s-${c}`});
    const v = el("span", {}, "1.00"); s.addEventListener("input", () => { v.textContent = Number(s.value).toFixed(2); });
    const row = el("div", {class: "field", "data-group": c}, el("label", {for: `s-${c}`}, c), s, v); return [c, s, v, row]; });
  const curve = el("input", {type: "text", id: "lora-layers", placeholder: 'per layer, e.g. "0-9:0.5,20-29:1.2"'});
  const layerBars = el("div", {class: "curve", id: "lora-curve", title: "per-layer multipliers (drag; writes the layers field)"});
  const layersLabel = el("label", {}, "layers");
  const drawCurve = (n) => { layersLabel.textContent = n ? `layers 0–${n - 1}` : "layers"; layerBars.replaceChildren(...Array.from({length: n}, (_, i) => {
    const s = el("input", {type: "range", min: 0, max: 2, step: 0.05, value: 1, class: "layer", "data-layer": i, orient: "vertical"});
    s.addEventListener("input", () => { curve.value = [...layerBars.querySelectorAll("input")].map((x) => [Number(x.dataset.layer), Number(x.value)])
      .filter(([, v]) => v !== 1).map(([l, v]) => `${l}:${v}`).join(","); });
    return s; })); };
  drawCurve(0);   // one slider per layer of the LoRA, once it is inspected
  const ratio = el("input", {type: "number", id: "lora-ratio", value: 1, step: "any"});
  const to = el("select", {id: "lora-to"}, sch.lora_formats.map((f) => el("option", {value: f.name}, f.label)));
  const mergeBox = el("div", {id: "merge-inputs"});
  const rank = el("input", {type: "number", id: "merge-rank", placeholder: "exact", min: 1});
  const named = (id) => el("input", {type: "text", id, placeholder: "output name (default: from the input)"});
  const scaleName = named("scale-name"), convertName = named("convert-name"), mergeName = named("merge-name");
  const noSliders = el("div", {class: "muted", id: "no-sliders"});
  view.replaceChildren(el("h1", {}, "LoRA tools"),
    el("div", {class: "toolbar"}, "LoRA:", pick, "or upload:", upload), msg,
    el("div", {class: "panels"},
      el("div", {class: "panel wide"}, el("h2", {}, "Inspect"), el("button", {id: "lora-inspect", onclick: inspect}, "Inspect"), heat, report),
      el("div", {class: "panel"}, el("h2", {}, "Scale"), ...sliders.map(([, , , row]) => row), noSliders,
        el("div", {class: "field"}, layersLabel, layerBars, curve), el("div", {class: "field"}, el("label", {for: "lora-ratio"}, "ratio"), ratio),
        scaleName, el("button", {id: "lora-scale", onclick: scale}, "Scale → new file")),
      el("div", {class: "panel"}, el("h2", {}, "Convert"), el("div", {class: "field"}, el("label", {for: "lora-to"}, "to format"), to),
        convertName, el("button", {id: "lora-convert", onclick: convert}, "Convert → new file")),
      el("div", {class: "panel"}, el("h2", {}, "Merge"), mergeBox, el("button", {class: "secondary", id: "merge-add", onclick: addInput}, "Add input"),
        el("div", {class: "field"}, el("label", {for: "merge-rank"}, "rank (empty: exact)"), rank), mergeName,
        el("button", {id: "lora-merge", onclick: merge}, "Merge → new file"))),
    el("h2", {}, "Results"), out);
  let loras = [];
  const options = () => loras.map((l) => el("option", {value: l.lora}, l.name));
  async function refresh(select) {    // newest first: the LoRA just trained or made is the one picked
    loras = await api("GET", "/api/loras");
    pick.replaceChildren(...options());
    if (select && loras.some((l) => l.lora === select)) pick.value = select;
    mergeBox.querySelectorAll("select").forEach((s) => { const v = s.value; s.replaceChildren(...options()); if (loras.some((l) => l.lora === v)) s.value = v; });
  }
  function addInput() {
    mergeBox.append(el("div", {class: "toolbar merge-input"}, el("select", {}, options()),
      el("input", {type: "number", value: 0.5, step: "any", class: "merge-weight", title: "weight"}),
      el("input", {type: "text", class: "merge-layers", placeholder: "layers, e.g. 0-9:0.5 (this input only)"})));
  }
  upload.addEventListener("change", async () => {
    const form = new FormData(); form.append("file", upload.files[0]);
    const r = await fetch("/api/lora/upload", {method: "POST", body: form}); const d = await r.json();
    if (!r.ok) { msg.textContent = errText(d); return; }
    msg.textContent = ""; await refresh(d.lora); inspect();
  });
  pick.addEventListener("change", inspect);     // the sliders and layers follow the LoRA picked
  function result(r) {
    out.prepend(el("div", {class: "toolbar result"}, el("a", {href: r.url, download: r.file}, r.file), el("span", {class: "muted"}, r.report || "")));
    refresh(pick.value);
  }
  async function call(path, body) { msg.textContent = ""; try { return await api("POST", path, body); } catch (e) { msg.textContent = errText(e); return null; } }
  async function inspect() {
    if (!pick.value) return;
    const r = await call("/api/lora/inspect", {lora: pick.value}); if (!r) return;
    report.textContent = r.report.split("\n\ndelta")[0];
    for (const [c, s, v, row] of sliders) { const has = r.groups.includes(c); row.classList.toggle("hidden", !has); if (!has) { s.value = 1; v.textContent = "1.00"; } }
    noSliders.textContent = r.groups.length ? "" : "no component of this LoRA has a slider";
    if (r.layers !== layerBars.childElementCount) { drawCurve(r.layers); curve.value = ""; }
    const blocks = Object.keys(r.table); const cs = [...new Set(blocks.flatMap((b) => Object.keys(r.table[b])))];
    const max = Math.max(...blocks.flatMap((b) => Object.values(r.table[b])), 1e-12);
    heat.replaceChildren(el("table", {class: "heat"}, el("tr", {}, el("th", {}, "block"), cs.map((c) => el("th", {}, c))),
      blocks.map((b) => el("tr", {}, el("td", {}, b), cs.map((c) => { const v = r.table[b][c];
        return el("td", {style: v === undefined ? "" : `background: rgba(90,169,255,${(v / max).toFixed(3)})`, title: v === undefined ? "" : v.toFixed(4)}, v === undefined ? "–" : v.toFixed(3)); })))));
  }
  const nameOf = (input) => input.value.trim() || null;
  async function scale() {
    const components = {}; for (const [c, s, , row] of sliders) if (!row.classList.contains("hidden") && Number(s.value) !== 1) components[c] = Number(s.value);
    const r = await call("/api/lora/scale", {lora: pick.value, ratio: Number(ratio.value), components, layers: curve.value, name: nameOf(scaleName)}); if (r) result(r);
  }
  async function convert() { const r = await call("/api/lora/convert", {lora: pick.value, to: to.value, name: nameOf(convertName)}); if (r) result(r); }
  async function merge() {
    const inputs = [...mergeBox.querySelectorAll(".merge-input")].map((d) => ({lora: d.querySelector("select").value,
      weight: Number(d.querySelector(".merge-weight").value), layers: d.querySelector(".merge-layers").value}));
    const r = await call("/api/lora/merge", {inputs, rank: rank.value ? Number(rank.value) : null, name: nameOf(mergeName)}); if (r) result(r);
  }
  await refresh(); addInput(); addInput();
  await inspect();
}

// ------------------------------------------------------------------ models
async function modelsPage() {
  const view = $("#view");
  const endpoint = el("input", {type: "text", id: "set-endpoint", placeholder: "https://huggingface.co or a mirror"});
  const modelsDir = el("input", {type: "text", id: "set-models-dir"});
  const ref = el("input", {type: "text", id: "pull-ref", placeholder: "org/name or org/name/file.safetensors"});
  const msg = el("div", {class: "err", id: "models-msg"});
  const table = el("tbody", {id: "models"});
  const tasksBox = el("div", {id: "tasks"});
  view.replaceChildren(el("h1", {}, "Models"),
    el("div", {class: "panel"}, el("h2", {}, "Hub"), el("div", {class: "field"}, el("label", {}, "endpoint (mirror)"), endpoint),
      el("div", {class: "field"}, el("label", {}, "models folder"), modelsDir), el("button", {id: "set-save", onclick: save}, "Save"), el("span", {class: "muted", id: "set-effective"})),
    el("div", {class: "toolbar"}, ref, el("button", {id: "pull", onclick: () => start("/api/models/pull", {ref: ref.value.trim()})}, "Pull"),
      el("button", {class: "secondary", id: "verify", onclick: () => start("/api/models/verify", {ref: ref.value.trim()})}, "Verify"),
      el("input", {type: "text", id: "export-to", placeholder: "export to folder"}),
      el("button", {class: "secondary", id: "export", onclick: () => start("/api/models/export", {ref: ref.value.trim(), to: $("#export-to").value.trim()})}, "Export from HF cache")), msg,
    el("table", {}, el("thead", {}, el("tr", {}, ["name", "revision", "size", "complete", "location"].map((h) => el("th", {}, h)))), table),
    el("h2", {}, "Tasks"), tasksBox);
  async function load() {
    const s = await api("GET", "/api/settings");
    endpoint.value = s.endpoint || ""; modelsDir.value = s.models_dir || "";
    $("#set-effective").textContent = ` now: ${s.effective_endpoint} · ${s.effective_models_dir}`;
    const models = await api("GET", "/api/models");
    table.replaceChildren(...models.map((m) => el("tr", {}, ["name", "revision", "size", "complete", "location"].map((k) => el("td", {}, m[k])))));
  }
  async function save() {
    try { await api("PUT", "/api/settings", {endpoint: endpoint.value.trim() || null, models_dir: modelsDir.value.trim() || null}); msg.textContent = ""; load(); }
    catch (e) { msg.textContent = errText(e); }
  }
  const seen = {};
  async function tasks() {
    const all = (await api("GET", "/api/tasks")).filter((t) => t.kind !== "generate").reverse();
    tasksBox.replaceChildren(...all.map((t) => {
      const prev = seen[t.id]; const now = Date.now();
      let rate = prev && t.bytes > prev.bytes ? (t.bytes - prev.bytes) / ((now - prev.at) / 1000) : prev ? prev.rate : 0;
      seen[t.id] = {bytes: t.bytes || 0, at: now, rate};
      const pct = t.total ? Math.floor(100 * t.bytes / t.total) : t.status === "done" ? 100 : 0;
      return el("div", {class: "task", "data-id": t.id, "data-status": t.status},
        el("b", {}, `${t.kind} ${t.args.ref} `), el("span", {class: `status ${t.status}`}, t.status),
        t.kind === "pull" ? el("div", {}, el("progress", {max: 100, value: pct}), ` ${bytes(t.bytes || 0)} / ${bytes(t.total || 0)}`,
          rate ? ` · ${bytes(rate)}/s · ETA ${fmt.secs((t.total - t.bytes) / rate)}` : "") : null,
        t.message ? el("div", {class: "err"}, t.message) : null);
    }));
    if (all.some((t) => !["running", "queued"].includes(t.status) && !seen[t.id].reloaded)) { all.forEach((t) => { seen[t.id].reloaded = true; }); load(); }
  }
  async function start(path, body) {
    msg.textContent = "";
    try { await api("POST", path, body); tasks(); } catch (e) { msg.textContent = errText(e); }
  }
  await load(); await tasks();
  const t = setInterval(tasks, 700); cleanup.push(() => clearInterval(t));
}

// ------------------------------------------------------------------ generate
async function generatePage() {
  const s = await schema();
  const view = $("#view");
  const f = (id, attrs = {}) => el("input", {type: "text", id, ...attrs});
  const archNames = s.option_labels["model.arch"] || {};
  const arch = el("select", {id: "gen-arch"}, el("option", {value: ""}, "built-in model (its own settings)"),
    Object.keys(s.arch_presets).map((a) => el("option", {value: a}, archNames[a] || a)));
  const model = f("gen-model", {value: "builtin:shapes"}), prompt = f("gen-prompt", {placeholder: "prompt"}), neg = f("gen-neg", {placeholder: "negative (with guidance > 0)"});
  const steps = f("gen-steps", {type: "number"}), guidance = f("gen-guidance", {type: "number", step: "any"}), seed = f("gen-seed", {type: "number", value: 42});
  const width = f("gen-width", {type: "number", value: 1024, step: 16}), height = f("gen-height", {type: "number", value: 1024, step: 16});
  // a built-in model typed or left in the model field brings its own steps, guidance and size
  const builtin = () => { const b = s.builtin_sampling[model.value.trim()];
    if (b) { arch.value = ""; steps.value = b.steps; guidance.value = b.guidance; width.value = b.width; height.value = b.height; }
    else if (!arch.value) arch.value = Object.keys(s.arch_presets).find((a) => s.arch_presets[a].name_or_path === model.value.trim()) || arch.value; };
  model.addEventListener("change", builtin);
  const loraBox = el("div", {id: "gen-loras"});
  const msg = el("div", {class: "err", id: "gen-msg"}), result = el("div", {id: "gen-result"});
  const defaults = () => { const p = s.arch_presets[arch.value]; if (p) { steps.value = p.sample_steps; guidance.value = p.guidance_scale; } };
  arch.addEventListener("change", () => { if (!arch.value) { model.value = "builtin:shapes"; builtin(); return; }
    model.value = s.arch_presets[arch.value].name_or_path; defaults(); });
  const field = (label, input) => el("div", {class: "field"}, el("label", {}, label), input);
  view.replaceChildren(el("h1", {}, "Generate"), el("div", {class: "panels"},
    el("div", {class: "panel"}, field("architecture (fills model, steps, guidance)", arch), field("model", model), field("prompt", prompt), field("negative", neg),
      field("steps", steps), field("guidance", guidance), field("seed", seed), field("width", width), field("height", height)),
    el("div", {class: "panel"}, el("h2", {}, "LoRAs (weight 0.6–0.8 is typical)"), loraBox,
      el("button", {class: "secondary", id: "gen-add-lora", onclick: addLora}, "Add LoRA"))),
    el("div", {class: "toolbar"}, el("button", {id: "gen-run", onclick: run}, "Generate")), msg, result);
  defaults(); builtin();
  const loras = await api("GET", "/api/loras");
  function addLora() {
    loraBox.append(el("div", {class: "toolbar gen-lora"}, el("select", {}, loras.map((l) => el("option", {value: l.lora}, l.name))),
      el("label", {}, "weight", el("input", {type: "number", value: 0.8, step: 0.05, class: "gen-weight"})),
      el("button", {class: "secondary", title: "remove", onclick: (e) => e.target.parentElement.remove()}, "×")));
  }
  async function run() {
    msg.textContent = "";
    const body = {model: model.value.trim(), prompt: prompt.value, negative: neg.value, steps: Number(steps.value), guidance: Number(guidance.value),
      seed: Number(seed.value), width: Number(width.value), height: Number(height.value),
      loras: [...loraBox.querySelectorAll(".gen-lora")].map((d) => ({lora: d.querySelector("select").value, weight: Number(d.querySelector(".gen-weight").value)}))};
    let id;
    try { id = (await api("POST", "/api/generate", body)).id; } catch (e) { msg.textContent = errText(e); return; }
    result.replaceChildren(el("span", {class: "muted", id: "gen-status"}, "generating…"));
    const t = await waitTask(id, () => {});
    if (t.status === "done") result.replaceChildren(el("img", {src: `${t.image}?t=${Date.now()}`, id: "gen-image", class: "generated", onclick: () => zoom(t.image, body.prompt)}),
      el("div", {class: "toolbar"}, el("a", {href: t.image, download: `zlora-${body.seed}.png`, id: "gen-download"}, "Download the image")),
      el("pre", {class: "log"}, JSON.stringify(body, null, 1)));
    else result.replaceChildren(el("div", {class: "err", id: "gen-error"}, t.message || t.status));
  }
}

window.PAGES = {"#/datasets": datasetsPage, "#/loras": lorasPage, "#/models": modelsPage, "#/generate": generatePage};
