"use strict";
// The service page: a view of /healthz, /device, /luts, /lut/{shape} and /jobs. Every value reaches the
// page through textContent (shapes and errors are text a client sent), never innerHTML.

const TOKEN_KEY = "halp-token";
const MAX_CURVES = 8; // more curves than this are spread over the range, as plots.staircase_plot does
const POLL_ACTIVE_MS = 1500;
const POLL_IDLE_MS = 10000;
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const tokenRequired = document.body.dataset.tokenRequired === "true";
const $ = (id) => document.getElementById(id);

const view = { luts: [], sortKey: "shape", sortDir: 1, device: null, table: null, active: 0, timer: null };

class Refused extends Error {}

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function problem(response) {
  try {
    const body = await response.json();
    return body.detail || body.title || `${response.status} ${response.statusText}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (response.status === 401) throw new Refused(await problem(response));
  if (!response.ok) throw new Error(await problem(response));
  return response.json();
}

function element(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function ago(iso) {
  if (!iso) return "-";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  return duration(seconds) + " ago";
}

function duration(seconds) {
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
  return `${Math.floor(seconds / 86400)} d ${Math.floor((seconds % 86400) / 3600)} h`;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "-";
}

// --- the token ---------------------------------------------------------------------------------

function showLogin(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  clearTimeout(view.timer);
  $("content").hidden = true;
  $("forget-token").hidden = true;
  $("login").hidden = false;
  $("token-error").textContent = message || "";
  $("token-input").focus();
}

async function submitToken(event) {
  event.preventDefault();
  const given = $("token-input").value.trim();
  const response = await fetch("/auth", { headers: { Authorization: `Bearer ${given}` } });
  if (response.ok) {
    sessionStorage.setItem(TOKEN_KEY, given);
    $("token-input").value = "";
    open();
  } else if (response.status === 401) {
    $("token-error").textContent = "Wrong token: this service refused it. Ask whoever runs it for its HALP_API_TOKEN.";
  } else {
    $("token-error").textContent = `The service could not check the token: ${await problem(response)}`;
  }
}

function failed(error) {
  if (error instanceof Refused) return showLogin(`The service refused the token: ${error.message}`);
  $("error").textContent = String(error.message || error);
}

// --- the device --------------------------------------------------------------------------------

function timingText(d) {
  if (d.timing !== "reference") return "absolute";
  return `relative to a reference layer, counted as ${d.reference_ms?.toFixed(4)} ms (drift-compensated)`;
}

function renderDevice(d, health) {
  const rows = [
    ["device", d.accelerator],
    ["backend", `${d.backend} ${d.backend_version}`],
    ["host", d.host || "-"],
    ["fingerprint", d.fingerprint],
    ["precisions", (d.precisions || []).join(", ") || "-"],
    ["channel block", `${d.channel_block} channels per kernel tile`],
    ["timing", timingText(d)],
    ["threads", d.threads ?? "-"],
    ["memory", d.memory_bytes ? `${(d.memory_bytes / 2 ** 30).toFixed(1)} GiB` : "-"],
    ["service", health ? `version ${health.version}, up ${duration(health.uptime_s)}` : "not answering /healthz"],
  ];
  for (const [dtype, why] of Object.entries(d.precisions_refused || {})) rows.push([`${dtype} refused`, why]);
  $("device").replaceChildren(...rows.flatMap(([k, v]) => [element("dt", k), element("dd", v)]));
}

async function refreshHealth() {
  try {
    const response = await fetch("/healthz");
    const health = await response.json();
    $("health").textContent = `healthy, up ${duration(health.uptime_s)}`;
    $("health").className = "badge ok";
    return health;
  } catch {
    $("health").textContent = "unreachable";
    $("health").className = "badge down";
    return null;
  }
}

// --- the tables --------------------------------------------------------------------------------

function renderTables() {
  const needle = $("search").value.trim().toLowerCase();
  const rows = view.luts
    .filter((t) => !needle || t.shape.toLowerCase().includes(needle) || (t.last_job || "").includes(needle))
    .sort((a, b) => {
      const x = a[view.sortKey] ?? "";
      const y = b[view.sortKey] ?? "";
      return (x < y ? -1 : x > y ? 1 : 0) * view.sortDir;
    });
  $("luts").tBodies[0].replaceChildren(
    ...rows.map((t) => {
      const open = element("button", t.shape, { type: "button", title: "show its staircase" });
      open.addEventListener("click", () => showStaircase(t.shape).catch(failed));
      const tr = element("tr", null, { "data-shape": t.shape });
      if (view.table && view.table.shape === t.shape) tr.className = "selected";
      const shapeCell = element("td");
      shapeCell.append(open);
      tr.append(shapeCell, element("td", t.points), element("td", when(t.first_measured)),
        element("td", when(t.last_measured)), element("td", t.last_job ? t.last_job.slice(0, 8) : "-"));
      return tr;
    }),
  );
  for (const th of $("luts").tHead.querySelectorAll("th[data-key]")) {
    th.classList.toggle("sorted", th.dataset.key === view.sortKey);
    th.classList.toggle("desc", th.dataset.key === view.sortKey && view.sortDir < 0);
  }
  const shown = rows.length === view.luts.length ? "" : `, ${rows.length} shown`;
  $("tables-summary").textContent = `${view.luts.length} layer shapes${shown}`;
}

async function loadTables() {
  view.luts = await api("/luts");
  renderTables();
}

function sortBy(key) {
  view.sortDir = view.sortKey === key ? -view.sortDir : 1;
  view.sortKey = key;
  renderTables();
}

// --- the staircase -----------------------------------------------------------------------------

function spread(values, n) {
  if (values.length <= n) return values;
  return Array.from({ length: n }, (_, i) => values[Math.round((i * (values.length - 1)) / (n - 1))]);
}

function drawStaircase() {
  const table = view.table;
  if (typeof Plotly === "undefined") {
    $("staircase-note").textContent = "No plot: the service could not serve Plotly's script (is the plotly " +
      `package installed beside it?). The points are in GET /lut/${table.shape}.`;
    return;
  }
  const axis = $("axis").value;
  const other = axis === "cout" ? "cin" : "cout";
  const curves = new Map();
  for (const p of table.points) {
    if (!curves.has(p[other])) curves.set(p[other], []);
    curves.get(p[other]).push(p);
  }
  const all = [...curves.keys()].sort((a, b) => a - b);
  const shown = spread(all, MAX_CURVES);
  const traces = shown.flatMap((value, i) => {
    const points = curves.get(value).sort((a, b) => a[axis] - b[axis]);
    const xs = points.map((p) => p[axis]);
    const color = COLORS[i % COLORS.length];
    const group = `${other}=${value}`;
    // "hvh" steps at the midpoints both ways, so the band's outline closes on itself
    const band = {
      type: "scatter", mode: "lines", name: `${group} p10-p90`, legendgroup: group, showlegend: false,
      x: [...xs, ...xs.slice().reverse()],
      y: [...points.map((p) => p.p90_ms), ...points.map((p) => p.p10_ms).reverse()],
      fill: "toself", fillcolor: `${color}33`, line: { width: 0, shape: "hvh" }, hoverinfo: "skip",
    };
    const median = {
      type: "scatter", mode: "lines+markers", name: group, legendgroup: group, x: xs,
      y: points.map((p) => p.median_ms), line: { color, shape: "hvh" }, marker: { size: 4 },
      customdata: points.map((p) => [p.p10_ms, p.p90_ms, p.runs]),
      hovertemplate: `${axis} %{x}<br>median %{y:.4f} ms<br>p10-p90 %{customdata[0]:.4f}-%{customdata[1]:.4f} ms` +
        `<br>%{customdata[2]} runs<extra>${group}</extra>`,
    };
    return [band, median];
  });
  const block = view.device ? view.device.channel_block : 8;
  const layout = {
    margin: { t: 20, r: 10 },
    xaxis: {
      title: { text: `${axis === "cout" ? "output" : "input"} channels (${axis}); fine grid: channel block of ${block}` },
      minor: { dtick: block, tick0: 0, showgrid: true, gridcolor: "#f0f0f0" }, zeroline: false,
    },
    yaxis: { title: { text: "latency (ms): median, band p10-p90" }, rangemode: "tozero" },
    legend: { title: { text: other } },
  };
  Plotly.react("staircase", traces, layout, { displaylogo: false, responsive: true });
  const hidden = all.length - shown.length;
  $("staircase-note").textContent =
    `${table.points.length} points measured on ${table.backend} (${table.fingerprint}); ` +
    `${shown.length} of ${all.length} ${other} values drawn` + (hidden ? `, spread over the range` : "");
}

async function showStaircase(shape) {
  view.table = await api(`/lut/${encodeURIComponent(shape)}`);
  $("staircase-title").textContent = `Staircase of ${shape}`;
  $("staircase-panel").hidden = false;
  drawStaircase();
  renderTables();
}

// --- the queue ---------------------------------------------------------------------------------

async function cancelJob(id) {
  try {
    await api(`/jobs/${encodeURIComponent(id)}`, { method: "DELETE" });
  } catch (error) {
    if (error instanceof Refused) return failed(error);
    $("error").textContent = `could not cancel ${id.slice(0, 8)}: ${error.message}`;
  }
  await refreshQueue();
}

function renderJobs(jobs) {
  $("jobs").tBodies[0].replaceChildren(
    ...jobs.map((job) => {
      const tr = element("tr", null, { "data-job": job.id, "data-state": job.state });
      const progress = element("td");
      progress.append(element("progress", null, { value: job.done, max: job.total }), ` ${job.done}/${job.total}`);
      const action = element("td");
      if (job.state === "queued" || job.state === "running") {
        const cancel = element("button", "Cancel", { type: "button", class: "cancel" });
        cancel.addEventListener("click", () => cancelJob(job.id));
        action.append(cancel);
      } else if (job.error) {
        action.append(element("span", job.error.slice(0, 120), { class: "error", title: job.error }));
      }
      tr.append(element("td", job.id.slice(0, 8), { title: job.id }), element("td", job.shape || "-"),
        element("td", job.state, { class: `state-${job.state}` }), progress, element("td", ago(job.created_at)), action);
      return tr;
    }),
  );
  $("queue-summary").textContent = jobs.length ? `${view.active} active, ${jobs.length} recent` : "no jobs yet";
}

async function refreshQueue() {
  const jobs = await api("/jobs?limit=50");
  const active = jobs.filter((j) => j.state === "queued" || j.state === "running").length;
  const finished = active < view.active;
  view.active = active;
  renderJobs(jobs);
  if (finished) {
    await loadTables(); // new points were stored
    if (view.table) await showStaircase(view.table.shape);
  }
}

async function poll() {
  clearTimeout(view.timer);
  try {
    await Promise.all([refreshHealth(), refreshQueue()]);
    $("error").textContent = "";
  } catch (error) {
    failed(error);
    if (error instanceof Refused) return;
  }
  view.timer = setTimeout(poll, view.active ? POLL_ACTIVE_MS : POLL_IDLE_MS);
}

// --- start -------------------------------------------------------------------------------------

async function open() {
  if (tokenRequired && !sessionStorage.getItem(TOKEN_KEY)) return showLogin("");
  $("login").hidden = true;
  $("content").hidden = false;
  $("forget-token").hidden = !tokenRequired;
  try {
    const [device, health] = await Promise.all([api("/device"), refreshHealth()]);
    view.device = device;
    renderDevice(device, health);
    await loadTables();
  } catch (error) {
    return failed(error);
  }
  poll();
}

$("token-form").addEventListener("submit", submitToken);
$("forget-token").addEventListener("click", () => showLogin(""));
$("search").addEventListener("input", renderTables);
$("axis").addEventListener("change", drawStaircase);
for (const th of $("luts").tHead.querySelectorAll("th[data-key]")) th.addEventListener("click", () => sortBy(th.dataset.key));
open();
