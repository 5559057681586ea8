// The decisions console: plain DOM, no framework. Every text from a record (a prompt is
// attacker text) reaches the page through textContent or an SVG attribute, never markup.
"use strict";
(() => {
  const KEY = "guardproxy-admin-key";
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = {
    passed: "#9aa5b1", flagged: "#e0a100", rewritten: "#d9534f", blocked: "#b3261e", aborted: "#7f1d1d",
    guard_error: "#6b21a8", passed_unscreened: "#a78bfa", upstream_error: "#334155", client_disconnected: "#cbd5e1",
    shutdown: "#64748b", error: "#0f172a", would_block: "#f4a4a0", would_rewrite: "#f7c0b8", would_abort: "#e8a0a0",
    steered: "#0e7490", would_steer: "#67b7c9",
  };
  const body = document.body;
  const config = { threshold: Number(body.dataset.threshold), flagAt: Number(body.dataset.flagAt), keep: Number(body.dataset.keep) };
  const $ = (id) => document.getElementById(id);
  let records = [];
  let whatIf = new Map();
  let whatIfThreshold = null;
  let selected = null;
  let refetch = null;
  let stream = null;

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }
  function status(text) { $("status").textContent = text; }

  async function api(path, options = {}) {
    const headers = Object.assign({ Authorization: "Bearer " + sessionStorage.getItem(KEY) }, options.headers || {});
    const response = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
    if (response.status === 401 || response.status === 403) {
      sessionStorage.removeItem(KEY);
      $("console").hidden = true;
      status(response.status === 403 ? "That is a proxy key: the console needs its admin key." : "Wrong admin key.");
      throw new Error("unauthorized");
    }
    if (!response.ok) {
      let message = response.statusText;
      try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
      status("Error: " + message);
      throw new Error(message);
    }
    return response;
  }

  // -- filters -------------------------------------------------------------------------
  function filters() {
    const q = new URLSearchParams();
    for (const name of ["outcome", "stage", "category", "tenant", "model"]) {
      const v = $("f-" + name).value.trim();
      if (v) q.set(name, v);
    }
    const since = $("f-since").value;
    if (since) q.set("since", String(Date.now() / 1000 - Number(since)));
    return q;
  }
  function filtered() { return [...filters().keys()].length > 0; }

  async function load() {
    const response = await api("/console/api/decisions?" + filters().toString());
    records = (await response.json()).data;
    whatIf = new Map();
    render();
    if ($("w-strictness").value || $("w-flag-at").value || $("w-enforce").value) runWhatIf();
  }

  // -- the list ------------------------------------------------------------------------
  function checks(record) {
    const out = [];
    for (const c of (record.stages.prompt || { checks: [] }).checks) out.push(["prompt", c]);
    for (const choice of Object.values(record.choices || {})) {
      for (const stage of ["reasoning", "answer"]) for (const c of choice[stage].checks) out.push([stage, c]);
    }
    return out;
  }
  function worst(record, stage) {
    let best = null;
    for (const [s, c] of checks(record)) if (s === stage && c.risk_score !== null && (best === null || c.risk_score > best)) best = c.risk_score;
    return best;
  }
  function stageOf(record) {
    if (record.stop) return record.stop.stage;
    const f = checks(record).find(([, c]) => c.flagged || c.error);
    return f ? f[0] : "";
  }
  function categories(record) {
    const set = new Set();
    for (const [, c] of checks(record)) for (const k of c.categories || []) set.add(k);
    return [...set].join(", ");
  }
  function time(t) { return new Date(t * 1000).toLocaleTimeString(); }

  function row(record) {
    const tr = el("tr");
    tr.dataset.requestId = record.request_id;
    const risk = Math.max(...checks(record).map(([, c]) => c.risk_score ?? -1), -1);
    const w = whatIf.get(record.request_id);
    const cells = [time(record.time), record.request_id.slice(0, 12), record.tenant, record.model, record.api, record.outcome,
      stageOf(record), risk < 0 ? "" : risk, categories(record), w ? w.outcome + (w.partial ? "*" : "") : ""];
    cells.forEach((v, i) => {
      const td = el("td", v);
      if (i === 5) td.className = "o-" + record.outcome;
      if (i === 9 && w && w.changed) td.className = "changed o-" + w.outcome;
      tr.append(td);
    });
    if (record.request_id === selected) tr.classList.add("selected");
    tr.addEventListener("click", () => openTimeline(record.request_id));
    return tr;
  }
  function render() {
    const rows = $("rows");
    rows.replaceChildren(...records.map(row));
    $("count").textContent = records.length + " decisions";
    drawOutcomes();
    drawScores();
  }

  // -- live updates (server-sent events over fetch: the key travels as a header) ------
  async function follow() {
    if (stream) stream.abort();
    stream = new AbortController();
    try {
      const response = await api("/console/api/events", { signal: stream.signal });
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      status("Live.");
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let kind = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) kind = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (data) onEvent(kind, JSON.parse(data));
        }
      }
    } catch (e) {
      if (e.name === "AbortError" || e.message === "unauthorized") return;
    }
    status("Reconnecting…");
    setTimeout(follow, 1000);
  }
  function onEvent(kind, doc) {
    if (kind === "decision") {
      if (filtered()) { scheduleRefetch(); return; }
      records.unshift(doc);
      if (records.length > config.keep) records.pop();
      render();
    } else if (kind === "lagged") {
      scheduleRefetch();  // events were dropped for this page: read the list again
    } else if (kind === "label") {
      const r = records.find((x) => x.request_id === doc.request_id);
      if (r) { r.labels = Object.assign(r.labels || {}, { [doc.stage]: doc.verdict }); }
      if (doc.request_id === selected) openTimeline(selected);
    }
  }
  function scheduleRefetch() {
    if (refetch) return;
    refetch = setTimeout(() => { refetch = null; load(); }, 200);
  }

  // -- timeline ------------------------------------------------------------------------
  function verdictText(c) {
    if (c.error) return "guard error " + c.error + " → " + c.action;
    const parts = [];
    for (const v of c.verdicts) {
      let s = v.guard + ": risk " + v.risk_score;
      if (v.judgment !== null && v.judgment !== undefined) s += " (Judgment " + v.judgment + ")";
      if (v.categories && v.categories.length) s += " [" + v.categories.join(", ") + "]";
      const tokens = (v.prompt_tokens ?? 0) + (v.completion_tokens ?? 0);
      if (tokens) s += ", " + tokens + " guard tokens";
      if (v.cache === "hit") s += ", cache hit";
      if (v.windows > 1) s += ", " + v.windows + " windows";
      parts.push(s);
    }
    return parts.join("; ") + " → " + c.action + (c.flagged ? " (flagged, threshold " + c.threshold + ")" : "");
  }
  function event(list, text, cls) { list.append(el("li", text, cls)); }

  async function openTimeline(id) {
    selected = id;
    const record = await (await api("/console/api/decisions/" + encodeURIComponent(id))).json();
    for (const tr of $("rows").children) tr.classList.toggle("selected", tr.dataset.requestId === id);
    $("timeline").hidden = false;
    $("t-id").textContent = record.request_id;
    $("t-summary").textContent = new Date(record.time * 1000).toLocaleString() + " · " + record.tenant + " · " + record.model +
      " · " + record.api + (record.stream ? " (stream)" : "") + " · outcome " + record.outcome + " · " + record.latency_s + " s";
    const list = $("t-events");
    list.replaceChildren();
    for (const c of (record.stages.prompt || { checks: [] }).checks) {
      event(list, "Prompt check (" + Math.round(c.latency_s * 1000) + " ms): " + verdictText(c), c.flagged ? "cut" : "");
    }
    for (const [index, choice] of Object.entries(record.choices)) {
      for (const stage of ["reasoning", "answer"]) {
        for (const c of choice[stage].checks) {
          event(list, "Choice " + index + ", " + stage + " check at token " + c.at_token + " (" + Math.round(c.latency_s * 1000) + " ms): " + verdictText(c));
        }
        if (choice[stage].aborted_at_token !== undefined) {
          event(list, "Cut: " + stage + " stopped at token " + choice[stage].aborted_at_token + " (the flagging check covered " +
            choice[stage].flagged_check_tokens + ")", "cut");
        }
      }
    }
    if (record.stop && record.stop.stage === "prompt") event(list, "Cut: the prompt was stopped (" + record.stop.action + ")", "cut");
    const client = record.client || {};
    let saw = "The client saw: ";
    if (client.error) saw += "HTTP error " + client.error.status + " " + client.error.code + " — " + client.error.message;
    else {
      saw += Object.entries(client.finish_reasons || {}).map(([i, f]) => "choice " + i + " finish_reason " + f).join("; ");
      const released = Object.entries(client.released_tokens || {}).map(([i, r]) => "choice " + i + ": " + r.reasoning + " reasoning and " + r.answer + " answer tokens released");
      if (released.length) saw += "; " + released.join("; ");
    }
    event(list, saw);
    renderLabels(record);
    renderContent(record);
  }

  function renderLabels(record) {
    const box = $("t-labels");
    box.replaceChildren(el("h2", "Was the verdict right?"));
    const stages = new Set(checks(record).filter(([, c]) => !c.error).map(([s]) => s));
    for (const stage of stages) {
      const p = el("p", stage + ": ");
      const current = (record.labels || {})[stage];
      for (const verdict of ["right", "wrong"]) {
        const b = el("button", verdict, current === verdict ? "on" : "");
        b.type = "button";
        b.dataset.stage = stage;
        b.dataset.verdict = verdict;
        b.addEventListener("click", async () => {
          await api("/console/api/decisions/" + encodeURIComponent(record.request_id) + "/labels", {
            method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ stage, verdict }),
          });
          const r = records.find((x) => x.request_id === record.request_id);
          if (r) r.labels = Object.assign(r.labels || {}, { [stage]: verdict });
          record.labels = Object.assign(record.labels || {}, { [stage]: verdict });
          renderLabels(record);
          status("Label saved: " + stage + " " + verdict + ".");
        });
        p.append(b);
      }
      if (current) p.append(el("span", " labelled " + current, "label-state"));
      box.append(p);
    }
  }

  function renderContent(record) {
    const box = $("t-content");
    box.replaceChildren();
    if (!record.content) { box.append(el("p", "No text captured for this request.", "note")); return; }
    box.append(el("h2", "Prompt"), el("div", record.content.prompt ?? "", "text"));
    for (const [i, c] of Object.entries(record.content.choices || {})) {
      if (c.reasoning) box.append(el("h2", "Reasoning (choice " + i + ")"), el("div", c.reasoning, "text"));
      if (c.answer) box.append(el("h2", "Answer (choice " + i + ")"), el("div", c.answer, "text"));
    }
  }

  // -- charts --------------------------------------------------------------------------
  function drawOutcomes() {
    const chart = $("chart-outcomes");
    chart.replaceChildren();
    const W = 520, H = 180, pad = 24, n = 24;
    if (!records.length) { chart.append(svg("text", { x: pad, y: H / 2 }, "no decisions yet")); return; }
    const times = records.map((r) => r.time);
    const t0 = Math.min(...times), t1 = Math.max(...times) + 1e-3;
    const buckets = Array.from({ length: n }, () => ({}));
    for (const r of records) {
      const b = Math.min(n - 1, Math.floor(((r.time - t0) / (t1 - t0)) * n));
      buckets[b][r.outcome] = (buckets[b][r.outcome] || 0) + 1;
    }
    const max = Math.max(...buckets.map((b) => Object.values(b).reduce((a, v) => a + v, 0)), 1);
    const bw = (W - 2 * pad) / n;
    buckets.forEach((b, i) => {
      let y = H - pad;
      for (const [outcome, count] of Object.entries(b)) {
        const h = ((H - 2 * pad) * count) / max;
        y -= h;
        const rect = svg("rect", { x: pad + i * bw + 1, y, width: bw - 2, height: h, fill: COLORS[outcome] || "#999", "data-outcome": outcome });
        rect.append(svg("title", {}, outcome + ": " + count));
        chart.append(rect);
      }
    });
    chart.append(svg("line", { x1: pad, y1: H - pad, x2: W - pad, y2: H - pad, stroke: "#333" }));
    chart.append(svg("text", { x: pad, y: H - 6, "font-size": 10 }, time(t0)));
    chart.append(svg("text", { x: W - pad - 50, y: H - 6, "font-size": 10 }, time(t1)));
    chart.append(svg("text", { x: 2, y: pad, "font-size": 10 }, String(max)));
    const legend = $("legend-outcomes");
    legend.replaceChildren();
    for (const outcome of new Set(records.map((r) => r.outcome))) {
      const s = el("span");
      const i = el("i");
      i.style.background = COLORS[outcome] || "#999";
      s.append(i, document.createTextNode(outcome));
      legend.append(s);
    }
  }

  function drawScores() {
    const chart = $("chart-scores");
    chart.replaceChildren();
    const W = 520, H = 180, pad = 24, bins = 10;
    const series = { prompt: new Array(bins).fill(0), answer: new Array(bins).fill(0) };
    for (const r of records) {
      for (const stage of ["prompt", "answer"]) {
        const s = worst(r, stage);
        if (s !== null) series[stage][Math.min(bins - 1, Math.floor(s / 10))] += 1;
      }
    }
    const max = Math.max(...series.prompt, ...series.answer, 1);
    const x = (score) => pad + ((W - 2 * pad) * score) / 100;
    const bw = (W - 2 * pad) / bins / 2;
    for (const [k, stage] of ["prompt", "answer"].entries()) {
      series[stage].forEach((count, b) => {
        const h = ((H - 2 * pad) * count) / max;
        const rect = svg("rect", { x: x(b * 10) + k * bw, y: H - pad - h, width: bw - 1, height: h, fill: k ? "#4f7cac" : "#e07a5f", "data-stage": stage });
        rect.append(svg("title", {}, stage + " risk " + b * 10 + "-" + (b * 10 + 9) + ": " + count));
        chart.append(rect);
      });
    }
    chart.append(svg("line", { x1: pad, y1: H - pad, x2: W - pad, y2: H - pad, stroke: "#333" }));
    for (const t of [0, 20, 40, 60, 80, 100]) chart.append(svg("text", { x: x(t) - 6, y: H - 8, "font-size": 10 }, String(t)));
    const line = (t, label, dash, color) => {
      chart.append(svg("line", { x1: x(t), y1: pad - 8, x2: x(t), y2: H - pad, stroke: color, "stroke-width": 2, "stroke-dasharray": dash, class: "threshold" }));
      chart.append(svg("text", { x: x(t) + 3, y: pad - 10 + (dash ? 10 : 0), "font-size": 10, fill: color }, label));
    };
    line(config.threshold, "threshold " + config.threshold, "", "#b3261e");
    if (whatIfThreshold !== null && whatIfThreshold !== config.threshold) line(whatIfThreshold, "what if " + whatIfThreshold, "4 3", "#1e6b35");
    const legend = $("legend-scores");
    legend.replaceChildren();
    for (const [stage, color] of [["prompt", "#e07a5f"], ["answer", "#4f7cac"]]) {
      const s = el("span");
      const i = el("i");
      i.style.background = color;
      s.append(i, document.createTextNode(stage));
      legend.append(s);
    }
  }

  // -- what if -------------------------------------------------------------------------
  async function runWhatIf() {
    const q = filters();
    let strictness = $("w-strictness").value;
    if (strictness === "custom") strictness = $("w-threshold").value;
    if (strictness) q.set("strictness", strictness);
    if ($("w-flag-at").value) q.set("flag_at", $("w-flag-at").value);
    if ($("w-enforce").value) q.set("enforce", $("w-enforce").value);
    const doc = await (await api("/console/api/whatif?" + q.toString())).json();
    whatIf = new Map(doc.data.map((r) => [r.request_id, r]));
    whatIfThreshold = doc.data.length ? doc.data[0].threshold ?? null : null;
    const fmt = (o) => Object.entries(o).map(([k, v]) => k + " " + v).join(", ") || "none";
    $("w-summary").textContent = doc.changed + " of " + doc.data.length + " outcomes change. Now: " + fmt(doc.before) +
      ". Then: " + fmt(doc.after) + ". (* only the checks made before the cut are known)";
    render();
  }

  // -- calibration ---------------------------------------------------------------------
  async function runCalibration() {
    const doc = await (await api("/console/api/calibration?" + filters().toString())).json();
    const table = $("c-table");
    table.replaceChildren();
    const head = el("tr");
    for (const h of ["Stage", "Labelled", "Harmful", "Current t", "Precision", "Recall", "Proposed t", "Precision", "Recall"]) head.append(el("th", h));
    table.append(head);
    const add = (name, e) => {
      const tr = el("tr");
      const proposed = e.note ? [e.note, "", ""] : [e.proposed.threshold, e.proposed.precision, e.proposed.recall];
      for (const v of [name, e.items, e.harmful ?? "", e.current.threshold, e.current.precision, e.current.recall, ...proposed]) {
        tr.append(el("td", v));
      }
      table.append(tr);
    };
    for (const [stage, e] of Object.entries(doc.stages)) {
      add(stage, e);
      for (const [code, c] of Object.entries(e.categories || {})) add(stage + " · " + code, c);
    }
    $("c-toml").textContent = doc.labelled ? doc.toml || "# the current thresholds are the best the labels support" : "No labelled records yet.";
  }

  // -- start ---------------------------------------------------------------------------
  async function start() {
    try {
      await load();
    } catch (e) { return; }
    $("console").hidden = false;
    follow();
  }
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, $("admin-key").value);
    $("admin-key").value = "";
    start();
  });
  for (const id of ["f-outcome", "f-stage", "f-since"]) $(id).addEventListener("change", load);
  for (const id of ["f-category", "f-tenant", "f-model"]) $(id).addEventListener("change", load);
  $("w-strictness").addEventListener("change", () => { $("w-threshold").hidden = $("w-strictness").value !== "custom"; });
  $("w-run").addEventListener("click", runWhatIf);
  $("c-run").addEventListener("click", runCalibration);
  if (sessionStorage.getItem(KEY)) start();
})();
