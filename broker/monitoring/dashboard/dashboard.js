// The broker's live dashboard: polls the monitoring endpoints once a second
// and draws what they say; no library, no network beyond this broker.
"use strict";

const POLL_MS = 1000;
const TOPIC_ROWS = 50;

function number(value) {
  if (value === null || value === undefined) return "–";
  if (Math.abs(value) >= 1e6) return (value / 1e6).toFixed(2) + "M";
  if (Math.abs(value) >= 1e4) return (value / 1e3).toFixed(1) + "k";
  return Number.isInteger(value) ? String(value) : value.toFixed(1);
}

function bytes(value) {
  if (value === null || value === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return value.toFixed(unit ? 1 : 0) + " " + units[unit];
}

function duration(seconds) {
  if (seconds < 60) return seconds.toFixed(0) + " s";
  if (seconds < 3600) return (seconds / 60).toFixed(0) + " min";
  if (seconds < 86400) return (seconds / 3600).toFixed(1) + " h";
  return (seconds / 86400).toFixed(1) + " d";
}

function setText(id, text) { document.getElementById(id).textContent = text; }

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
}

function fillTable(id, rows, columns, emptyText) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren();
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = columns;
    td.className = "empty";
    td.textContent = emptyText;
    tr.appendChild(td);
    body.appendChild(tr);
    return;
  }
  for (const values of rows) {
    const tr = document.createElement("tr");
    for (const [text, className] of values) cell(tr, text, className);
    body.appendChild(tr);
  }
}

function lagClass(seconds) {
  if (seconds >= 10) return "far-behind";
  if (seconds >= 1) return "behind";
  return "";
}

function drawPlot(history) {
  const svg = document.getElementById("plot");
  // Drawn at the plot's own width, so that its text is never stretched.
  const width = Math.max(200, Math.round(svg.getBoundingClientRect().width) || 800);
  const height = 200, top = 14, bottom = 20;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const points = history.slice(-300);
  const peak = Math.max(1, ...points.map((p) => Math.max(p.published, p.delivered)));
  const parts = [];
  for (let i = 0; i <= 4; i += 1) {
    const y = top + ((height - top - bottom) * i) / 4;
    parts.push(`<line x1="0" x2="${width}" y1="${y}" y2="${y}"></line>`);
    parts.push(`<text x="4" y="${y - 2}">${number((peak * (4 - i)) / 4)}</text>`);
  }
  const line = (key) => points.map((p, i) => {
    const x = points.length > 1 ? (width * i) / (points.length - 1) : width;
    const y = top + (height - top - bottom) * (1 - p[key] / peak);
    return x.toFixed(1) + "," + y.toFixed(1);
  }).join(" ");
  if (points.length) {
    parts.push(`<polyline class="published" points="${line("published")}"></polyline>`);
    parts.push(`<polyline class="delivered" points="${line("delivered")}"></polyline>`);
    parts.push(`<text x="${width - 80}" y="${height - 5}">last ${duration(points.length)}</text>`);
  } else {
    parts.push(`<text x="${width / 2 - 60}" y="${height / 2}">no samples yet</text>`);
  }
  svg.innerHTML = parts.join("");
}

function render(varz, topicz, connz) {
  setText("server", varz.server);
  const state = document.getElementById("state");
  state.textContent = varz.state;
  state.className = "state " + varz.state;
  setText("rate-published", number(varz.rates.published));
  setText("rate-delivered", number(varz.rates.delivered));
  setText("connections", number(varz.connections.total));
  setText("topics", number(varz.topics));
  setText("in-flight", number(varz.in_flight));
  setText("rss", bytes(varz.rss_bytes));
  setText("uptime", duration(varz.uptime_seconds));
  drawPlot(varz.history || []);

  setText("topics-note", topicz.total > topicz.items.length
    ? `${topicz.total} topics; the ${topicz.items.length} busiest shown` : "");
  fillTable("topic-table", topicz.items.map((t) => [
    [t.name], [number(t.messages)], [number(t.rate)], [bytes(t.bytes)],
    [t.first_offset + "–" + t.next_offset], [String(t.subscribers.length)],
    [number(t.lag), t.lag ? "behind" : ""],
  ]), 7, "no topics yet");

  const readers = [];
  for (const t of topicz.items) {
    for (const s of t.subscribers) readers.push({ topic: t.name, ...s });
  }
  readers.sort((a, b) => b.lag_messages - a.lag_messages || b.lag_seconds - a.lag_seconds);
  fillTable("subscriber-table", readers.slice(0, 100).map((s) => [
    [s.topic], ["#" + s.connection + " " + s.peer], [s.user || "–"], [String(s.position)],
    [number(s.lag_messages), lagClass(s.lag_seconds)],
    [s.lag_seconds.toFixed(1), lagClass(s.lag_seconds)],
  ]), 6, "no subscribers");

  setText("connections-note", connz.total > connz.items.length
    ? `${connz.total} connections; ${connz.items.length} shown` : "");
  fillTable("connection-table", connz.items.map((c) => [
    [String(c.id)], [c.peer], [c.role], [c.user || "–"],
    [number(c.messages_in) + " msg"], [number(c.messages_out) + " msg"],
    [String(c.in_flight)], [c.pending_output === null ? "–" : bytes(c.pending_output)],
    [duration(c.seconds)],
  ]), 9, "no connections");
}

// The reports beside this page, named without any user:password@ the page's
// address was opened with (fetch refuses such URLs); the browser sends the
// monitor's credentials it already holds for this origin.
const BASE = location.origin + location.pathname;

async function fetchJSON(path) {
  const response = await fetch(new URL(path, BASE), { cache: "no-store" });
  if (!response.ok && response.status !== 503) throw new Error(path + ": " + response.status);
  return response.json();
}

async function poll() {
  try {
    const [varz, topicz, connz] = await Promise.all([
      fetchJSON("varz?history=1"),
      fetchJSON(`topicz?sort=rate&limit=${TOPIC_ROWS}`),
      fetchJSON("connz?sort=messages_out&limit=50"),
    ]);
    render(varz, topicz, connz);
    document.body.dataset.updated = String(Date.now());
  } catch (error) {
    const state = document.getElementById("state");
    state.textContent = "unreachable";
    state.className = "state down";
  }
  setTimeout(poll, POLL_MS);
}

if (typeof module !== "undefined") {
  module.exports = { number, bytes, duration, render };
} else {
  poll();
}
