// The broker's live dashboard: polls the monitoring endpoints once a second
// and draws what they say; no library, no network beyond this broker.
"use strict";

const POLL_MS = 1000;
const TOPIC_ROWS = 50;

const WHOLE = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const TENTHS = new Intl.NumberFormat("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 1 });

// One way for every figure: whole numbers with thousands separators (rates
// below 10 a second with one decimal), millions as 1.46M.
function number(value) {
  if (value === null || value === undefined) return "–";
  if (Math.abs(value) >= 1e6) return (value / 1e6).toFixed(2) + "M";
  if (!Number.isInteger(value) && Math.abs(value) < 10) return TENTHS.format(value);
  return WHOLE.format(value);
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

function scaled(value, peak, logScale) {
  // The share of the plot's height `value` takes: linear, or log10(1 + v).
  if (!logScale) return value / peak;
  return Math.log10(1 + value) / Math.log10(1 + peak);
}

function drawPlot(history) {
  const logScale = document.getElementById("log-scale").checked;
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
    const share = (4 - i) / 4;
    const label = logScale ? Math.pow(10, share * Math.log10(1 + peak)) - 1 : peak * share;
    parts.push(`<text x="4" y="${y - 2}">${number(Math.round(label))}</text>`);
  }
  const line = (key) => points.map((p, i) => {
    const x = points.length > 1 ? (width * i) / (points.length - 1) : width;
    const y = top + (height - top - bottom) * (1 - scaled(p[key], peak, logScale));
    return x.toFixed(1) + "," + y.toFixed(1);
  }).join(" ");
  if (points.length) {
    // Delivered first, published dashed on top: equal lines both show.
    parts.push(`<polyline class="delivered" points="${line("delivered")}"></polyline>`);
    parts.push(`<polyline class="published" points="${line("published")}"></polyline>`);
    parts.push(`<text x="${width - 80}" y="${height - 5}">last ${duration(points.length)}</text>`);
  } else {
    parts.push(`<text x="${width / 2 - 60}" y="${height / 2}">no samples yet</text>`);
  }
  svg.innerHTML = parts.join("");
}

// Totals whose rate the cards show, by card, from two polls apart.
const RATE_CARDS = {
  "rate-acks": (v) => v.totals.acks,
  "rate-nacks": (v) => v.totals.nacks,
  "rate-redeliveries": (v) => v.totals.redeliveries,
  "rate-dead-letters": (v) => v.totals.dead_letters,
  "rate-sign-ins": (v) => v.totals.authentication_failures,
};
let previous = null;

function showRates(varz) {
  const now = { at: Date.now(), varz };
  for (const [id, total] of Object.entries(RATE_CARDS)) {
    if (previous === null || now.at <= previous.at) { setText(id, "–"); continue; }
    const seconds = (now.at - previous.at) / 1000;
    setText(id, number(Math.max(0, total(varz) - total(previous.varz)) / seconds));
  }
  previous = now;
}

// Actions, for a user with the admin right (the page asks the admin API
// once; without the right the buttons stay hidden and the API says no).
function button(text, title, action, danger) {
  const b = document.createElement("button");
  b.textContent = text;
  b.title = title;
  if (danger) b.className = "danger";
  b.addEventListener("click", action);
  return b;
}

function actionCell(row, buttons) {
  const td = document.createElement("td");
  td.className = "admin";
  for (const b of buttons) td.appendChild(b);
  row.appendChild(td);
}

function segment(text) { return encodeURIComponent(text); }

async function act(question, method, path, body) {
  if (!window.confirm(question)) return;
  const status = document.getElementById("action-status");
  try {
    const response = await fetch(new URL("admin/" + path, BASE), {
      method,
      headers: { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
    const answer = await response.json();
    status.textContent = response.ok ? "done: " + method + " " + decodeURIComponent(path)
      : "refused: " + answer.error;
  } catch (error) {
    status.textContent = "failed: " + error;
  }
  document.body.dataset.acted = String(Date.now());
}

function topicActions(name) {
  return [
    button("purge", "drop every message of " + name, () => act(
      `Drop every message of topic ${name}?`, "POST", `topics/${segment(name)}/purge`, {}), true),
    button("delete", "delete " + name + " (nobody may be reading it)", () => act(
      `Delete topic ${name} and its messages?`, "DELETE", `topics/${segment(name)}`), true),
  ];
}

function consumerActions(c) {
  if (!c.durable || c.position === undefined) return [];
  const where = `consumers/${segment(c.topic)}/${segment(c.name)}`;
  return [
    button("reset", "move it to an offset", () => {
      const offset = window.prompt(`Reset ${c.name} of ${c.topic} to which offset?`, "0");
      if (offset === null || !/^[0-9]+$/.test(offset)) return;
      act(`Reset ${c.name} of ${c.topic} to offset ${offset}?`, "POST", where + "/reset",
        { offset: Number(offset) });
    }),
    button("forget", "forget this durable consumer", () => act(
      `Forget durable consumer ${c.name} of ${c.topic}?`, "DELETE", where), true),
  ];
}

function connectionActions(c) {
  return [button("close", "close this connection", () => act(
    `Close connection ${c.id} (${c.peer})?`, "DELETE", `connections/${c.id}`), true)];
}

function fillActionTable(id, items, columns, emptyText, values, actions) {
  fillTable(id, items.map(values), columns, emptyText);
  if (!items.length) return;
  const rows = document.querySelectorAll("#" + id + " tbody tr");
  items.forEach((item, index) => actionCell(rows[index], actions(item)));
}

async function probeAdmin() {
  try {
    const response = await fetch(new URL("admin/topics", BASE), { cache: "no-store" });
    document.body.classList.toggle("admin", response.ok);
  } catch (error) {
    document.body.classList.remove("admin");
  }
}

function render(varz, topicz, connz, consumerz) {
  setText("server", varz.server);
  const state = document.getElementById("state");
  state.textContent = varz.state;
  state.className = "state " + varz.state;
  setText("rate-published", number(varz.rates.published));
  setText("rate-delivered", number(varz.rates.delivered));
  showRates(varz);
  setText("connections", number(varz.connections.total));
  setText("topics", number(varz.topics));
  setText("in-flight", number(varz.in_flight));
  setText("rss", bytes(varz.rss_bytes));
  setText("uptime", duration(varz.uptime_seconds));
  drawPlot(varz.history || []);

  setText("topics-note", topicz.total > topicz.items.length
    ? `${topicz.total} topics; the ${topicz.items.length} busiest shown` : "");
  fillActionTable("topic-table", topicz.items, 8, "no topics yet", (t) => [
    [t.name], [number(t.messages)], [number(t.rate)], [bytes(t.bytes)],
    [t.first_offset + "–" + t.next_offset], [String(t.subscribers.length)],
    [number(t.lag), t.lag ? "behind" : ""],
  ], (t) => topicActions(t.name));

  fillActionTable("consumer-table", consumerz.consumers, 7, "no consumer groups", (c) => [
    [c.topic], [c.name], [c.durable ? "yes" : "no"], [number(c.members)],
    [c.position === undefined ? "–" : number(c.position)],
    [c.lag === undefined ? "–" : number(c.lag), c.lag ? "behind" : ""],
  ], consumerActions);

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
  fillActionTable("connection-table", connz.items, 10, "no connections", (c) => [
    [String(c.id)], [c.peer], [c.door === "mqtt" ? `MQTT ${c.client_id}` : c.role], [c.user || "–"],
    [number(c.messages_in) + " msg"], [number(c.messages_out) + " msg"],
    [String(c.in_flight)], [c.pending_output === null ? "–" : bytes(c.pending_output)],
    [duration(c.seconds)],
  ], connectionActions);
}

// The reports beside this page, named without any user:password@ the page's
// address was opened with (fetch refuses such URLs); the browser sends the
// monitor's credentials it already holds for this origin.
const BASE = typeof location === "undefined" ? "http://localhost/" : location.origin + location.pathname;

async function fetchJSON(path) {
  const response = await fetch(new URL(path, BASE), { cache: "no-store" });
  if (!response.ok && response.status !== 503) throw new Error(path + ": " + response.status);
  return response.json();
}

async function poll() {
  try {
    const [varz, topicz, connz, consumerz] = await Promise.all([
      fetchJSON("varz?history=1"),
      fetchJSON(`topicz?sort=rate&limit=${TOPIC_ROWS}`),
      fetchJSON("connz?sort=messages_out&limit=50"),
      fetchJSON("consumerz"),
    ]);
    render(varz, topicz, connz, consumerz);
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
  probeAdmin();
  poll();
}
