// TaskFlow console: the read-only schedule table (GET /api/v1/console/schedules).
// Schedules are managed over the ingest API, the client and the CLI; this only shows them.
// Text from the server is only ever set with textContent (never innerHTML).
"use strict";

(() => {
  const REFRESH_MS = 3000; // as the dead-letter list (console.REFRESH_S)
  let polling = false;

  function cell(text, attrs) {
    const node = document.createElement("td");
    node.textContent = text === null || text === undefined ? "—" : String(text);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    return node;
  }

  function when(iso) {
    if (!iso) return "—";
    const s = (Date.parse(iso) - Date.now()) / 1000;
    const n = Math.abs(s);
    const span =
      n < 60 ? `${Math.floor(n)}s` : n < 3600 ? `${Math.floor(n / 60)}m`
        : n < 86400 ? `${Math.floor(n / 3600)}h` : `${Math.floor(n / 86400)}d`;
    return s >= 0 ? `in ${span}` : `${span} ago`;
  }

  function row(s) {
    const tr = document.createElement("tr");
    tr.setAttribute("data-name", s.name);
    const cadence = s.cron !== null ? s.cron : `every ${s.every}`;
    const status = s.last_run_status;
    tr.append(
      cell(s.name),
      cell(s.task.type),
      cell(cadence, { class: "cadence" }),
      cell(s.timezone),
      cell(s.paused ? "paused" : "active", { class: s.paused ? "status paused" : "status" }),
      cell(when(s.next_fire_at), { title: s.next_fire_at || "" }),
      cell(when(s.last_fire_at), { title: s.last_fire_at || "" }),
      cell(status, { class: status ? `status ${status}` : "" }),
    );
    return tr;
  }

  async function load() {
    if (polling) return;
    polling = true;
    try {
      const resp = await fetch("/api/v1/console/schedules", {
        headers: { Accept: "application/json" },
      });
      if (!resp.ok) throw new Error(`${resp.status} ${resp.statusText}`);
      const data = await resp.json();
      document.getElementById("schedule-rows").replaceChildren(...data.items.map(row));
      document.getElementById("schedules-empty").hidden = data.items.length > 0;
      document.getElementById("schedules-count").textContent =
        `${data.items.length}${data.more ? "+" : ""} shown`;
    } catch (err) {
      document.getElementById("schedules-count").textContent =
        `refresh failed (${err.message}); retrying`;
    } finally {
      polling = false;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    load();
    setInterval(load, REFRESH_MS);
  });
})();
