// Palisade's dashboard page. Data from the admin listener: /dashboard/api/overview (history,
// routes, rules, top identities), /metrics (challenges, attack mode, store), /v1/blocks,
// /v1/keys, /v1/identities/... (explain), and /dashboard/api/stream (live decisions, SSE).
// Every call carries the session cookie and the X-Palisade-Dashboard header.
"use strict";

const H = { "x-palisade-dashboard": "1" };
const $ = (s) => document.querySelector(s);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
};
const num = (n) => (n ?? 0).toLocaleString("en-US");
const pct = (a, b) => (b ? (100 * a / b).toFixed(1) + "%" : "–");

async function api(path, opts = {}) {
  const r = await fetch(path, { credentials: "same-origin", ...opts, headers: { ...H, ...(opts.headers || {}) } });
  if (r.status === 401) { location.reload(); throw new Error("signed out"); }
  if (!r.ok) throw new Error(path + ": " + r.status + " " + (await r.text()));
  return r.headers.get("content-type")?.includes("json") ? r.json() : r.text();
}

// --- charts -----------------------------------------------------------------------------------
const COLORS = { allow: "#3b7a57", tag: "#0b57d0", delay: "#c58a00", challenge: "#e07b00", limit: "#b3261e", block: "#7a1f1a", unauthorized: "#8e44ad", other: "#888" };
let actionsChart, latencyChart;

function chartWidth(id) { return Math.max(300, $(id).clientWidth - 8); }

function drawCharts(o) {
  const xs = o.series.map((p) => p.t);
  const byAction = o.actions.map((_, i) => o.series.map((p) => p.actions[i]));
  const data = [xs, ...byAction];
  if (!actionsChart) {
    actionsChart = new uPlot({
      width: chartWidth("#chart-actions"), height: 220,
      series: [{}, ...o.actions.map((a) => ({ label: a, stroke: COLORS[a] || "#555", width: 1.5, value: (u, v) => v == null ? "–" : num(v) }))],
      axes: [{}, { size: 60 }],
    }, data, $("#chart-actions"));
  } else actionsChart.setData(data);
  const lat = [xs, o.series.map((p) => p.p50_ms), o.series.map((p) => p.p99_ms)];
  if (!latencyChart) {
    latencyChart = new uPlot({
      width: chartWidth("#chart-latency"), height: 180,
      series: [{}, { label: "p50", stroke: "#3b7a57", width: 1.5 }, { label: "p99", stroke: "#b3261e", width: 1.5 }],
      scales: { y: { distr: 3 } }, axes: [{}, { size: 60 }],
    }, lat, $("#chart-latency"));
  } else latencyChart.setData(lat);
}
window.addEventListener("resize", () => {
  actionsChart?.setSize({ width: chartWidth("#chart-actions"), height: 220 });
  latencyChart?.setSize({ width: chartWidth("#chart-latency"), height: 180 });
});

// --- tables -----------------------------------------------------------------------------------
function fill(id, rows) { const b = $(id + " tbody"); b.replaceChildren(...rows); }

let attack = {};
let dim = "ip";
let overview;

function drawTop() {
  const dims = Object.keys(overview.top);
  if (!dims.includes(dim) && dims.length) dim = dims[0];
  $("#dims").replaceChildren(...dims.map((d) => el("button", { class: d === dim ? "on" : "", onclick: () => { dim = d; drawTop(); } }, d)));
  fill("#top", (overview.top[dim] || []).map((r) => el("tr", { class: "click", onclick: () => explain(dim, r.value) },
    el("td", {}, r.value), el("td", { class: "num" }, num(r.refusals)), el("td", { class: "num" }, num(r.requests)),
    el("td", { class: "num" }, r.max_score), el("td", {}, r.rules.join(", ")), el("td", {}, r.signals.join(", ")))));
}

async function explain(d, value) {
  $("#explain").hidden = false;
  $("#explain-title").textContent = d + " " + value;
  $("#explain-body").textContent = "…";
  try {
    const path = "/v1/identities/" + d.split("/").map(encodeURIComponent).join("/") + "/" + encodeURIComponent(value);
    const [who, recent] = await Promise.all([
      api(path),
      d === "ip" ? api("/v1/decisions?limit=20&client_ip=" + encodeURIComponent(value)) : Promise.resolve(null),
    ]);
    $("#explain-body").textContent = JSON.stringify(recent ? { ...who, recent_decisions: recent.decisions } : who, null, 2);
  } catch (e) { $("#explain-body").textContent = String(e); }
}

async function refresh() {
  try {
    overview = await api("/dashboard/api/overview");
    const metrics = await api("/metrics");
    attack = {};
    const challenges = {};
    let storeHealthy = null;
    for (const line of metrics.split("\n")) {
      let m = line.match(/^palisade_under_attack\{route="([^"]*)"\} (\d+)/);
      if (m) attack[m[1]] = m[2] === "1";
      m = line.match(/^palisade_challenges_total\{([^}]*)\} ([\d.e+]+)/);
      if (m) { const res = (m[1].match(/result="([^"]*)"/) || [])[1]; challenges[res] = (challenges[res] || 0) + Number(m[2]); }
      m = line.match(/^palisade_shared_store_healthy (\d+)/);
      if (m) storeHealthy = m[1] === "1";
    }
    $("#status").textContent = `v${overview.version} · ${overview.mode} mode · store ${overview.store} · ${num(overview.recent)} decisions in memory`;
    drawCharts(overview);
    fill("#routes", overview.routes.filter((r) => r.requests).map((r) => el("tr", {},
      el("td", {}, r.route), el("td", { class: "num" }, num(r.requests)), el("td", { class: "num" }, pct(r.refused, r.requests)),
      el("td", {}, attack[r.route] ? "ON" : ""))));
    fill("#rules", overview.rules.map((r) => el("tr", {}, el("td", {}, r.rule), el("td", { class: "num" }, num(r.count)))));
    drawTop();
    fill("#health", [
      ...Object.entries(challenges).map(([k, v]) => el("tr", {}, el("td", {}, "challenges " + k), el("td", { class: "num" }, num(v)))),
      el("tr", {}, el("td", {}, "shared store"), el("td", {}, storeHealthy === null ? "embedded" : storeHealthy ? "healthy" : "UNREACHABLE")),
      el("tr", {}, el("td", {}, "routes in attack mode"), el("td", {}, Object.entries(attack).filter(([, v]) => v).map(([k]) => k).join(", ") || "none")),
    ]);
    await Promise.all([blocks(), keys()]);
  } catch (e) { $("#status").textContent = String(e); }
}

async function blocks() {
  const b = await api("/v1/blocks");
  fill("#blocks", b.blocks.map((x) => {
    const i = x.key.indexOf(":");
    const [d, v] = [x.key.slice(0, i), x.key.slice(i + 1)];
    return el("tr", {}, el("td", {}, d), el("td", {}, v), el("td", {}, x.until), el("td", {}, x.reason || ""),
      el("td", {}, el("button", { onclick: async () => { await api("/v1/blocks/remove", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ dimension: d, value: v }) }); blocks(); } }, "Lift")));
  }));
}

async function keys() {
  const k = await api("/v1/keys");
  fill("#keys", (k.keys || []).slice(0, 200).map((x) => el("tr", {},
    el("td", {}, x.name || x.id), el("td", {}, x.account || ""), el("td", {}, x.status || ""),
    el("td", {}, x.usage ? JSON.stringify(x.usage) : ""))));
}

$("#block-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = new FormData(e.target);
  const body = { dimension: f.get("dimension"), value: f.get("value"), ttl: f.get("ttl") || undefined, reason: f.get("reason") || undefined };
  try { await api("/v1/blocks", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) }); e.target.reset(); blocks(); }
  catch (err) { alert(err); }
});

// --- live stream: up to 10,000 rows, only the visible ones in the DOM ------------------------
const ROW = 18, KEEP = 10000;
let rows = [], paused = false, source, skipped = 0;
const live = $("#live"), spacer = $("#live-spacer");

function drawLive() {
  spacer.style.height = rows.length * ROW + "px";
  const first = Math.max(0, Math.floor(live.scrollTop / ROW) - 5);
  const last = Math.min(rows.length, first + Math.ceil(live.clientHeight / ROW) + 10);
  const kids = [spacer];
  for (let i = first; i < last; i++) {
    const d = rows[rows.length - 1 - i];
    const r = el("div", { class: "row a-" + d.action }, `${d.time.slice(11, 23)}  ${d.action.padEnd(12)} ${String(d.score).padStart(3)}  ${d.rule.padEnd(28)} ${d.client_ip.padEnd(16)} ${d.method} ${d.path}  ${d.status}`);
    r.style.top = i * ROW + "px";
    kids.push(r);
  }
  live.replaceChildren(...kids);
  $("#live-count").textContent = `${num(rows.length)} shown${skipped ? `, ${num(skipped)} skipped (too fast)` : ""}`;
}
live.addEventListener("scroll", () => requestAnimationFrame(drawLive));

let pending = false;
function connect(params) {
  source?.close();
  rows = []; skipped = 0; drawLive();
  source = new EventSource("/dashboard/api/stream?" + new URLSearchParams(params));
  source.onmessage = (m) => {
    if (paused) return;
    try { rows.push(JSON.parse(m.data)); } catch { return; }
    if (rows.length > KEEP) rows.splice(0, rows.length - KEEP);
    if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; drawLive(); }); }
  };
  source.addEventListener("skipped", (m) => { skipped += Number(m.data); });
}
$("#live-filter").addEventListener("submit", (e) => {
  e.preventDefault();
  const f = new FormData(e.target);
  connect(Object.fromEntries([...f.entries()].filter(([, v]) => v)));
});
$("#live-pause").addEventListener("click", (e) => { paused = !paused; e.target.textContent = paused ? "Resume" : "Pause"; });

connect({});
refresh();
setInterval(refresh, 5000);
