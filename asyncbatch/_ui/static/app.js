// The asyncbatch dashboard: a page per hash route, drawn from the JSON API, polled while live.
// Every value from the store goes in through textContent (never innerHTML): payloads,
// messages and keys are the user's data.
"use strict";

const TOKEN_KEY = "asyncbatch-token";
const KINDS = ["transient", "recoverable", "permanent", "fatal"];
const RUN_STATUSES = ["running", "finished", "aborted", "failed", "interrupted", "compensating"];
const COLOURS = {
  succeeded: "#2f9e44", dead_lettered: "#d9480f", compensated: "#7950f2", failed: "#c92a2a",
};
const main = document.getElementById("main");
let token = sessionStorage.getItem(TOKEN_KEY) || "";
let info = { read_only: true };
let timers = [];
let generation = 0; // bumped on every route change: stale polls stop drawing
let keepNotice = false; // an action's result outlives the navigation it causes

// ------------------------------------------------------------------ helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function when(epoch) {
  if (!epoch) return "-";
  const d = new Date(epoch * 1000);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
    `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

function num(n) { return n === null || n === undefined ? "-" : Number(n).toLocaleString("en-US"); }
function rate(r) { return r === null || r === undefined ? "-" : `${num(Math.round(r))}/s`; }
function seconds(s) {
  if (s === null || s === undefined) return "-";
  if (s < 1e-3) return `${(s * 1e6).toFixed(0)} µs`;
  if (s < 1) return `${(s * 1e3).toFixed(s < 0.01 ? 2 : 1)} ms`;
  return `${s.toFixed(s < 10 ? 2 : 1)} s`;
}
function badge(status) { return h("span", { class: `badge ${status}`, text: status }); }

async function api(path, body) {
  const opts = { headers: { Accept: "application/json" } };
  if (body !== undefined) {
    opts.method = "POST";
    opts.headers["Content-Type"] = "application/json";
    opts.headers["X-Asyncbatch-Token"] = token;
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => ({ error: `${r.status} ${r.statusText}` }));
  if (!r.ok) throw new Error(data.error || `${r.status} ${r.statusText}`);
  return data;
}

function notice(text, isError) {
  const n = document.getElementById("notice");
  n.textContent = text;
  n.className = isError ? "error" : "";
  n.hidden = !text;
}

function every(ms, fn) {
  // Poll fn every ms while the page shows this route; skip while the tab is hidden.
  const mine = generation;
  const tick = async () => {
    if (mine !== generation) return;
    if (!document.hidden) {
      try { if ((await fn()) === false) return; } catch (e) { notice(e.message, true); }
    }
    if (mine === generation) timers.push(setTimeout(tick, ms));
  };
  tick();
}

function query() {
  const i = location.hash.indexOf("?");
  return new URLSearchParams(i < 0 ? "" : location.hash.slice(i + 1));
}

function confirmDialog(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

// ------------------------------------------------------------------ charts

function barChart({ series, labels, yFormat, height = 170 }) {
  // Stacked bars: series = [{name, colour, values}], all of one length.
  const W = 640, H = height, left = 54, bottom = 22, top = 8;
  const n = Math.max(1, ...series.map((s) => s.values.length));
  const totals = Array.from({ length: n }, (_, i) => series.reduce((a, s) => a + (s.values[i] || 0), 0));
  const max = Math.max(1e-9, ...totals);
  const bw = (W - left - 6) / n;
  const y = (v) => top + (H - top - bottom) * (1 - v / max);
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img" });
  for (const f of [0, 0.5, 1]) {
    root.append(svg("line", { class: "axis", x1: left, x2: W, y1: y(max * f), y2: y(max * f) }));
    root.append(svg("text", { x: left - 4, y: y(max * f) + 3, "text-anchor": "end" }, yFormat(max * f)));
  }
  for (let i = 0; i < n; i++) {
    let base = 0;
    for (const s of series) {
      const v = s.values[i] || 0;
      if (v > 0) {
        root.append(svg("rect", {
          x: left + i * bw + 0.5, width: Math.max(bw - 1, 1), y: y(base + v),
          height: Math.max(y(base) - y(base + v), 0.5), fill: s.colour,
        }, svg("title", {}, `${labels[i]}: ${yFormat(v)} ${s.name}`)));
      }
      base += v;
    }
    const step = Math.ceil(n / 8);
    if (i % step === 0) {
      root.append(svg("text", { x: left + i * bw + bw / 2, y: H - 6, "text-anchor": "middle" }, labels[i]));
    }
  }
  return root;
}

function legend(series) {
  return h("div", { class: "legend" },
    series.map((s) => h("span", {}, h("i", { style: null, "data-colour": s.colour }), s.name)));
}

function paintLegend(root) {
  // Colours set through the CSSOM: the page's CSP forbids style="" attributes.
  root.querySelectorAll("[data-colour]").forEach((el) => { el.style.background = el.dataset.colour; });
}

// ------------------------------------------------------------------ runs

function progressCell(r) {
  const p = h("progress", { max: r.total || 1 });
  if (r.total) p.value = Math.min(r.done, r.total);
  else if (r.status !== "running") p.value = 1;
  const text = r.total ? `${num(r.done)} / ${num(r.total)}` : num(r.done);
  return h("td", {}, p, " ", h("span", { class: "muted progress-text", text }));
}

function runRow(r) {
  const c = r.counts || {};
  const other = Object.entries(c).reduce((a, [k, v]) => a + (k === "succeeded" || k === "dead_lettered" ? 0 : v), 0);
  return h("tr", { "data-run-id": r.run_id },
    h("td", {}, h("a", { href: `#/run/${encodeURIComponent(r.run_id)}`, text: r.run_id })),
    h("td", {}, badge(r.status)),
    h("td", { class: "muted", text: r.job || "-" }),
    progressCell(r),
    h("td", { class: "num", text: num(c.succeeded || 0) }),
    h("td", { class: "num", text: num(c.dead_lettered || 0) }),
    h("td", { class: "num", text: num(other) }),
    h("td", { class: "num", text: rate(r.rate) }),
    h("td", { text: when(r.created_at) }),
    h("td", { text: when(r.updated_at) }));
}

function viewRuns() {
  const q = query();
  const status = q.get("status") || "";
  const select = h("select", {
    id: "run-status", onchange: (e) => { location.hash = e.target.value ? `#/runs?status=${e.target.value}` : "#/runs"; },
  }, h("option", { value: "", text: "any" }), RUN_STATUSES.map((s) => h("option", { value: s, text: s, selected: s === status })));
  const body = h("tbody", { id: "runs-body" });
  const empty = h("p", { class: "muted", id: "runs-empty", hidden: true, text: "no runs match" });
  main.replaceChildren(
    h("h1", { text: "Runs" }),
    h("div", { class: "filters" }, h("label", {}, "status", select)),
    h("table", { id: "runs" },
      h("thead", {}, h("tr", {}, ["run", "status", "job", "progress", "succeeded", "dead", "other", "rate", "started", "updated"]
        .map((t) => h("th", { class: ["succeeded", "dead", "other", "rate"].includes(t) ? "num" : null, text: t })))),
      body),
    empty);
  every(2000, async () => {
    const data = await api(`/api/runs${status ? `?status=${status}` : ""}`);
    body.replaceChildren(...data.runs.map(runRow));
    empty.hidden = data.runs.length > 0;
  });
}

// ------------------------------------------------------------------ one run

function kv(obj) {
  const dl = h("dl", { class: "kv" });
  for (const [k, v] of Object.entries(obj || {})) {
    dl.append(h("dt", { text: k }), h("dd", { text: typeof v === "object" && v !== null ? JSON.stringify(v) : String(v) }));
  }
  return dl;
}

function drawCharts(box, charts) {
  const labels = charts.throughput.map((_, i) => {
    const t = i * charts.width;
    return t >= 3600 ? `${(t / 3600).toFixed(1)}h` : t >= 60 ? `${Math.round(t / 60)}m` : `${Math.round(t)}s`;
  });
  const tp = barChart({
    series: [{ name: "jobs/s", colour: "#1c7ed6", values: charts.throughput }],
    labels, yFormat: (v) => num(Math.round(v)),
  });
  const edges = charts.durations.edges;
  const binLabels = [`<${seconds(edges[0])}`, ...edges.map((e) => `≥${seconds(e)}`)];
  const statuses = Object.keys(charts.durations.by_status);
  const series = statuses.map((s) => ({ name: s, colour: COLOURS[s] || "#868e96", values: charts.durations.by_status[s] }));
  const lastUsed = Math.max(0, ...series.map((s) => s.values.reduce((a, v, i) => (v ? i : a), 0)));
  const firstUsed = Math.min(lastUsed, ...series.map((s) => s.values.findIndex((v) => v > 0)).filter((i) => i >= 0));
  const trimmed = series.map((s) => ({ ...s, values: s.values.slice(firstUsed, lastUsed + 1) }));
  const hist = barChart({ series: trimmed, labels: binLabels.slice(firstUsed, lastUsed + 1), yFormat: (v) => num(Math.round(v)) });
  box.replaceChildren(
    h("div", { class: "card", id: "throughput-chart" }, h("h2", { text: `Throughput (jobs/s per ${seconds(charts.width)})` }), tp,
      h("p", { class: "note", text: "Jobs by when their outcome was committed." })),
    h("div", { class: "card", id: "latency-chart" }, h("h2", { text: "Job durations" }), hist, legend(trimmed),
      h("p", { class: "note", text: "First attempt's start to the job's end: for a job that succeeded first time, its attempt's latency. Latencies of single successful attempts after retries are not stored." })));
  paintLegend(box);
}

function cell(v) {
  if (v === null || v === undefined) return "-";
  if (typeof v === "number" && !Number.isInteger(v)) return v.toFixed(2);
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}

function reportSections(run) {
  const out = [];
  const report = run.report;
  if (run.status === "running") {
    const live = run.dead_letters;
    out.push(h("h2", { text: "Dead letters so far" }));
    out.push(h("p", { class: "note", text: "Grouped as the error report will group them (kind, type, normalised message). The report itself, with retried failures, breakers and budget, is stored when the run ends." + (live.complete ? "" : ` Grouped from the first ${num(live.sampled)} entries.`) }));
    if (live.groups.length) {
      out.push(h("table", { id: "live-groups" },
        h("thead", {}, h("tr", {}, ["kind", "error", "message (normalised)", "entries", "sample keys", "first seen", "last seen"].map((t) => h("th", { text: t })))),
        h("tbody", {}, live.groups.map((g) => h("tr", {},
          h("td", { text: g.kind }),
          h("td", {}, h("a", {
            href: `#/dlq?run_id=${encodeURIComponent(run.run_id)}&kind=${g.kind}&error_type=${encodeURIComponent(g.error_type)}`,
            title: g.error_type, text: g.error_type.split(".").pop(),
          })),
          h("td", { class: "msg", title: g.example, text: g.fingerprint }),
          h("td", { class: "num", text: num(g.count) }),
          h("td", { class: "keys", text: g.sample_keys.join(", ") }),
          h("td", { class: "when", text: when(g.first_seen) }), h("td", { class: "when", text: when(g.last_seen) }))))));
    } else out.push(h("p", { class: "muted", text: "none" }));
  } else if (!report || !report.groups) {
    out.push(h("p", { class: "note", text: "No error report is stored for this run (it ended before writing one)." }));
  }
  if (report && report.groups) {
    out.push(h("h2", { text: "Errors" }));
    if (report.groups.length === 0) out.push(h("p", { class: "muted", text: "no failed attempts" }));
    else {
      out.push(h("table", { id: "error-groups" },
        h("thead", {}, h("tr", {}, ["kind", "error", "message (normalised)", "attempts", "jobs", "final", "sample keys", "first seen", "last seen"]
          .map((t) => h("th", { text: t })))),
        h("tbody", {}, report.groups.map((g) => h("tr", {},
          h("td", { text: g.kind }), h("td", { title: g.error_type, text: g.error_type.split(".").pop() }),
          h("td", { class: "msg", title: g.example, text: g.fingerprint }),
          h("td", { class: "num", text: num(g.count) }), h("td", { class: "num", text: num(g.jobs) }),
          h("td", { class: "num", text: num(g.final) }), h("td", { class: "keys", text: g.sample_keys.join(", ") }),
          h("td", { class: "when", text: when(g.first_seen) }), h("td", { class: "when", text: when(g.last_seen) }))))));
    }
    const d = report.durations || {};
    if (d.count) {
      out.push(h("p", { class: "note", text: `succeeded jobs' durations: mean ${seconds(d.mean)}, p50 ${seconds(d.p50)}, p95 ${seconds(d.p95)}, p99 ${seconds(d.p99)}, max ${seconds(d.max)}; ${num(report.retries)} retries` }));
    }
    out.push(h("h2", { text: "Breakers" }));
    const breakers = Object.entries(report.breakers || {});
    if (breakers.length === 0) out.push(h("p", { class: "muted", text: "no breakers" }));
    else {
      const fields = [...new Set(breakers.flatMap(([, b]) => Object.keys(b)))];
      out.push(h("table", { id: "breakers" },
        h("thead", {}, h("tr", {}, h("th", { text: "dependency" }), fields.map((f) => h("th", { text: f })))),
        h("tbody", {}, breakers.map(([dep, b]) => h("tr", {}, h("td", { text: dep }),
          fields.map((f) => h("td", { text: cell(b[f]) })))))));
      out.push(h("p", { class: "note", text: "Totals as of the run's end: the store keeps no timeline of breaker state changes (they are events: subscribe with on_event)." }));
    }
    out.push(h("h2", { text: "Error budget" }));
    out.push(report.budget ? kv(report.budget) : h("p", { class: "muted", text: "no budget" }));
    if (report.aborted) out.push(h("p", { class: "note", text: `aborted: ${report.aborted}` }));
  }
  return out;
}

function viewRun(runId) {
  const head = h("div", { class: "card big", id: "run-head" });
  const charts = h("div", { class: "grid", id: "charts" });
  const details = h("div", { id: "details" });
  main.replaceChildren(h("h1", {}, "Run ", h("span", { text: runId })), head, charts, details);
  let last = "";
  let chartsDue = 0;
  every(1000, async () => {
    const run = await api(`/api/runs/${encodeURIComponent(runId)}`);
    const pct = run.total ? ` (${Math.floor((100 * run.done) / run.total)}%)` : "";
    const p = h("progress", { id: "run-progress", max: run.total || 1 });
    if (run.total) p.value = Math.min(run.done, run.total);
    else if (run.status !== "running") p.value = 1;
    head.replaceChildren(
      h("div", {}, badge(run.status), " ", h("span", { class: "muted", text: run.job || "job not importable" })),
      h("div", { class: "stats" },
        h("div", {}, h("b", { id: "run-done", text: num(run.done) }), h("span", { text: run.total ? `of ${num(run.total)} done${pct}` : "done" })),
        Object.entries(run.counts).filter(([, v]) => v).map(([k, v]) => h("div", {}, h("b", { text: num(v) }), h("span", { text: k }))),
        h("div", {}, h("b", { id: "run-rate", text: rate(run.rate) }), h("span", { text: run.status === "running" ? "now" : "average" })),
        h("div", {}, h("b", { text: when(run.created_at) }), h("span", { text: "started" })),
        h("div", {}, h("b", { text: when(run.updated_at) }), h("span", { text: "updated" }))),
      p,
      h("div", { class: "actions" },
        h("a", { href: `#/dlq?run_id=${encodeURIComponent(runId)}`, id: "run-dlq-link", text: `${num(run.dlq_open)} open dead letters →` }),
        run.redrive.ok ? null : h("span", { class: "note", text: `redrive: ${run.redrive.reason}` })));
    const key = JSON.stringify([run.status, run.report]);
    if (key !== last) { details.replaceChildren(...reportSections(run)); last = key; }
    else if (run.status === "running") details.replaceChildren(...reportSections(run));
    if (Date.now() >= chartsDue || run.status !== "running") {
      chartsDue = Date.now() + 10000;
      drawCharts(charts, await api(`/api/runs/${encodeURIComponent(runId)}/charts`));
    }
    return run.status === "running" || run.status === "compensating";
  });
}

// ------------------------------------------------------------------ dead letters

function dlqFilters(q) {
  const f = {};
  for (const k of ["run_id", "kind", "error_type", "status", "since", "until"]) if (q.get(k)) f[k] = q.get(k);
  if (!f.status) f.status = "dead";
  return f;
}

function localInput(epoch) {
  if (!epoch) return "";
  const d = new Date(epoch * 1000 - new Date().getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 16);
}

async function act(kind, ids, after) {
  if (ids.length === 0) return;
  try {
    if (kind === "purge") {
      const ok = await confirmDialog(`Delete ${ids.length} dead letter(s) for good? This cannot be undone.`);
      if (!ok) { notice("nothing purged"); return; }
      const r = await api("/api/dlq/purge", { ids, confirm: true });
      notice(`purged ${r.purged} dead letter(s)`);
    } else {
      notice(`redriving ${ids.length} dead letter(s)…`);
      const r = await api("/api/dlq/redrive", { ids });
      notice(`redrove ${ids.length}: ${r.resolved} resolved, ${r.dead} dead again` + (r.skipped ? `, ${r.skipped} skipped (not dead, or payload kept as repr only)` : ""));
    }
  } catch (e) {
    notice(`${kind} refused: ${e.message}`, true);
  }
  after();
}

function viewDlq() {
  const q = query();
  const f = dlqFilters(q);
  const params = new URLSearchParams(f);
  const body = h("tbody", { id: "dlq-body" });
  const count = h("span", { id: "dlq-count", class: "muted" });
  const more = h("button", { type: "button", id: "dlq-more", hidden: true, text: "load more" });
  const all = h("input", { type: "checkbox", id: "dlq-all", title: "select all shown" });
  const selected = () => [...body.querySelectorAll("input[type=checkbox]:checked")].map((c) => Number(c.value));
  const setHash = (changes) => {
    const p = new URLSearchParams(f);
    for (const [k, v] of Object.entries(changes)) { if (v) p.set(k, v); else p.delete(k); }
    location.hash = `#/dlq?${p}`;
  };
  const sel = (name, options, current) => h("select", { id: `dlq-${name}`, onchange: (e) => setHash({ [name]: e.target.value }) },
    options.map(([v, t]) => h("option", { value: v, text: t, selected: v === (current || "") })));
  const timeInput = (name) => h("input", {
    type: "datetime-local", id: `dlq-${name}`, value: localInput(Number(f[name])),
    onchange: (e) => setHash({ [name]: e.target.value ? String(new Date(e.target.value).getTime() / 1000) : "" }),
  });
  const filters = h("div", { class: "filters" });
  const readOnly = info.read_only;
  const reload = () => viewDlq();
  main.replaceChildren(
    h("h1", { text: "Dead letters" }), filters,
    h("div", { class: "actions" }, count,
      readOnly ? null : h("button", { type: "button", id: "dlq-redrive", class: "primary", onclick: () => act("redrive", selected(), reload), text: "Redrive selected" }),
      readOnly ? null : h("button", { type: "button", id: "dlq-purge", class: "danger", onclick: () => act("purge", selected(), reload), text: "Purge selected" }),
      h("a", { id: "dlq-export", href: `/api/dlq/export?${params}`, download: true, text: "Export JSONL" }),
      readOnly ? h("span", { class: "note", text: "read-only: no redrive or purge" }) : null),
    h("table", { id: "dlq" },
      h("thead", {}, h("tr", {}, h("th", {}, all), ["id", "run", "key", "kind", "error", "message", "attempts", "redrives", "status", "created"]
        .map((t) => h("th", { class: ["id", "attempts", "redrives"].includes(t) ? "num" : null, text: t })))),
      body),
    more);
  all.addEventListener("change", () => body.querySelectorAll("input[type=checkbox]").forEach((c) => { c.checked = all.checked; }));
  let after = null;
  const load = async () => {
    const p = new URLSearchParams(params);
    if (after !== null) p.set("after", after);
    const data = await api(`/api/dlq?${p}`);
    if (after === null) {
      const fc = data.facets;
      const opts = (obj) => [["", "any"], ...Object.entries(obj).map(([k, n]) => [k, `${k || "(none)"} (${n})`])];
      filters.replaceChildren(
        h("label", {}, "run", sel("run_id", opts(fc.run_id), f.run_id)),
        h("label", {}, "kind", sel("kind", [["", "any"], ...KINDS.map((k) => [k, `${k} (${fc.kind[k] || 0})`])], f.kind)),
        h("label", {}, "error type", sel("error_type", opts(fc.error_type), f.error_type)),
        h("label", {}, "status", sel("status", [["dead", "dead"], ["redriven", "redriven"], ["resolved", "resolved"], ["all", "all"]], f.status)),
        h("label", {}, "since", timeInput("since")),
        h("label", {}, "until", timeInput("until")));
      body.replaceChildren();
    }
    for (const e of data.entries) {
      body.append(h("tr", { "data-id": e.id },
        h("td", {}, h("input", { type: "checkbox", value: e.id, "aria-label": `select ${e.id}` })),
        h("td", { class: "num" }, h("a", { href: `#/dlq/${e.id}`, text: e.id })),
        h("td", {}, h("a", { href: `#/run/${encodeURIComponent(e.run_id)}`, text: e.run_id })),
        h("td", { text: e.key }), h("td", { class: "kind", text: e.kind }), h("td", { text: e.error_type }),
        h("td", { class: "msg", title: e.message, text: e.message }),
        h("td", { class: "num", text: e.attempts }), h("td", { class: "num", text: e.redrive_count }),
        h("td", {}, badge(e.status)), h("td", { class: "when", text: when(e.created_at) })));
    }
    const shown = body.children.length;
    count.textContent = `${num(data.total)} match${shown < data.total ? `, ${num(shown)} shown` : ""}`;
    after = data.next_after;
    more.hidden = after === null;
  };
  more.addEventListener("click", () => load().catch((e) => notice(e.message, true)));
  load().catch((e) => notice(e.message, true));
}

function viewEntry(id) {
  main.replaceChildren(h("p", { class: "muted", text: "loading…" }));
  api(`/api/dlq/${id}`).then((e) => {
    const back = () => {
      keepNotice = true; // the purge's result stays on the list it returns to
      location.hash = `#/dlq?run_id=${encodeURIComponent(e.run_id)}`;
    };
    main.replaceChildren(
      h("h1", {}, `Dead letter ${e.id} `, badge(e.status)),
      h("div", { class: "card" }, kv({
        run: e.run_id, key: e.key, kind: e.kind, error: `${e.error_type}: ${e.message}`,
        created: when(e.created_at), redrives: e.redrive_count,
      }),
      info.read_only ? null : h("div", { class: "actions" },
        e.redrive.ok && e.status === "dead"
          ? h("button", { type: "button", id: "entry-redrive", class: "primary", onclick: () => act("redrive", [e.id], () => viewEntry(id)), text: "Redrive" })
          : h("span", { class: "note", text: e.status !== "dead" ? `redrive: only dead entries (this one is ${e.status})` : `redrive: ${e.redrive.reason}` }),
        h("button", { type: "button", id: "entry-purge", class: "danger", onclick: () => act("purge", [e.id], back), text: "Purge" }))),
      h("h2", { text: e.payload_is_repr ? "Payload (repr only: it cannot be redriven)" : "Payload" }),
      h("pre", { id: "entry-payload", text: JSON.stringify(e.payload, null, 2) }),
      h("h2", { text: `Attempts (${e.attempts.length})` }),
      h("table", { id: "attempts" },
        h("thead", {}, h("tr", {}, ["#", "started", "took", "kind", "error", "message"].map((t) => h("th", { text: t })))),
        h("tbody", {}, e.attempts.map((a) => h("tr", {},
          h("td", { class: "num", text: a.number }), h("td", { text: when(a.started_at) }),
          h("td", { class: "num", text: seconds(a.duration) }), h("td", { text: a.kind }),
          h("td", { text: a.error_type }), h("td", { text: a.message }))))),
      h("h2", { text: "Traceback" }),
      h("pre", { id: "entry-traceback", text: e.traceback || "(none kept)" }));
  }).catch((err) => { main.replaceChildren(h("p", { class: "error", text: err.message })); });
}

// ------------------------------------------------------------------ routing

function route() {
  keepNotice = false;
  generation++;
  timers.forEach(clearTimeout);
  timers = [];
  const path = location.hash.replace(/^#/, "").split("?")[0] || "/runs";
  const parts = path.split("/").filter(Boolean);
  document.getElementById("nav-runs").className = parts[0] === "runs" || parts[0] === "run" ? "active" : "";
  document.getElementById("nav-dlq").className = parts[0] === "dlq" ? "active" : "";
  if (parts[0] === "run" && parts[1]) viewRun(decodeURIComponent(parts.slice(1).join("/")));
  else if (parts[0] === "dlq" && parts[1]) viewEntry(parts[1]);
  else if (parts[0] === "dlq") viewDlq();
  else viewRuns();
}

function takeToken() {
  const m = location.hash.match(/^#token=([^&]+)/);
  if (m) {
    token = decodeURIComponent(m[1]);
    sessionStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, "", `${location.pathname}#/runs`);
  }
}

async function start() {
  takeToken();
  try { info = await api("/api/info"); } catch (e) { notice(e.message, true); }
  document.getElementById("store").textContent = `${info.store || ""} · asyncbatch ${info.version || ""}${info.read_only ? " · read-only" : ""}`;
  const button = document.getElementById("token-button");
  const dialog = document.getElementById("token-dialog");
  button.hidden = info.read_only;
  button.textContent = token ? "token set" : "set token";
  button.addEventListener("click", () => { document.getElementById("token-input").value = token; dialog.showModal(); });
  dialog.addEventListener("close", () => {
    if (dialog.returnValue !== "ok") return;
    token = document.getElementById("token-input").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    button.textContent = token ? "token set" : "set token";
  });
  window.addEventListener("hashchange", () => {
    if (!keepNotice) notice("");
    keepNotice = false;
    route();
  });
  route();
}

start();
