// live.html: one topic's messages, live, through broker-client.js.
"use strict";

(async function () {
  const query = new URLSearchParams(location.search);
  const topic = query.get("topic") || "orders";
  const url = query.get("ws") || `ws://${location.hostname}:8080`;
  const status = document.getElementById("status");
  document.getElementById("topic").textContent = topic;
  const client = new BrokerClient(url);
  const rows = document.getElementById("messages");

  function show(message) {
    const row = document.createElement("tr");
    const headers = [...message.headers].map(([name, value]) => `${name}: ${value}`).join("; ");
    for (const text of [String(message.offset), message.topic, message.text(), headers]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    rows.prepend(row);
    while (rows.children.length > 200) rows.lastChild.remove();
  }

  document.getElementById("publish").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = document.getElementById("text");
    try {
      const offset = await client.publish(topic, input.value, {"Content-Type": "text/plain"});
      document.getElementById("published").textContent = `stored at offset ${offset}`;
      input.value = "";
    } catch (error) {
      document.getElementById("published").textContent = `refused: ${error.message}`;
    }
  });

  try {
    await client.subscribe([topic], show, {start: query.get("start") || "current"});
    status.textContent = `subscribed to ${topic} at ${url}`;
    document.body.classList.add("subscribed");
  } catch (error) {
    status.textContent = `not subscribed: ${error.message}`;
  }
})();
