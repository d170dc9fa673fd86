// TaskFlow dead-letter console: vanilla JS, no build step, same-origin JSON API only.
// Text from the server is only ever set with textContent (never innerHTML).
"use strict";

const REFRESH_MS = 3000; // poll the list and the open detail (console.REFRESH_S)
const TYPES_EVERY = 10; // refresh the type suggestions every 10th poll
const DEBOUNCE_MS = 250;

const $ = (id) => document.getElementById(id);
const state = { selected: null, detail: null, listSeq: 0, ticks: 0, polling: false };

// -- helpers ------------------------------------------------------------------------------

async function api(method, path, body) {
  const opts = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opts);
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!resp.ok) {
    const detail = (data && (data.detail || data.title)) || resp.statusText;
    throw new Error(`${resp.status} ${detail}`);
  }
  return data;
}

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== null && text !== undefined) node.textContent = String(text);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

function age(iso) {
  if (!iso) return "—";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.floor(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

function firstLine(text) {
  return (text || "").split("\n")[0];
}

function say(text, isError) {
  const box = $("message");
  box.textContent = text;
  box.classList.toggle("error", Boolean(isError));
}

function filters() {
  return {
    type: $("f-type").value.trim(),
    q: $("f-q").value.trim(),
    status: $("f-status").value,
  };
}

function describe(f) {
  const parts = [];
  if (f.type) parts.push(`type = "${f.type}"`);
  if (f.q) parts.push(`error contains "${f.q}"`);
  return parts.length ? parts.join(" and ") : "no filter (every open dead letter)";
}

// -- list ---------------------------------------------------------------------------------

async function loadList() {
  const f = filters();
  const params = new URLSearchParams({ limit: "200" });
  if (f.type) params.set("type", f.type);
  if (f.q) params.set("q", f.q);
  if (f.status) params.set("status", f.status);
  const seq = ++state.listSeq;
  const data = await api("GET", `/api/v1/dlq?${params}`);
  if (seq !== state.listSeq) return; // a newer filter was answered first
  renderRows(data.items, data.next_cursor !== null);
}

function renderRows(items, more) {
  const rows = items.map((d) => {
    const id = d.task_id || d.id;
    const tr = el("tr", null, {
      class: "row",
      tabindex: "0",
      "data-id": id,
      "data-dead-letter": d.id,
      "data-type": d.type || "",
    });
    const error = d.error || d.reason || "";
    tr.append(
      el("td", age(d.failed_at), { title: d.failed_at || "" }),
      el("td", d.type ?? "—"),
      el("td", firstLine(error), { class: "error", title: error }),
      el("td", d.attempts ?? "—", { class: "num" }),
      el("td", d.status, { class: `status ${d.status}` }),
    );
    if (state.selected === id) tr.classList.add("selected");
    tr.addEventListener("click", () => openDetail(id));
    tr.addEventListener("keydown", (event) => {
      if (event.key === "Enter") openDetail(id);
    });
    return tr;
  });
  $("rows").replaceChildren(...rows);
  $("empty").hidden = items.length > 0;
  $("count").textContent = `${items.length}${more ? "+" : ""} shown`;
}

async function loadTypes() {
  const stats = await api("GET", "/api/v1/dlq/stats");
  const options = stats.by_type
    .filter((t) => t.type)
    .map((t) => el("option", null, { value: t.type, label: `${t.type} (${t.counts.all})` }));
  $("types").replaceChildren(...options);
}

// -- detail -------------------------------------------------------------------------------

async function openDetail(id) {
  state.selected = id;
  for (const tr of $("rows").children) tr.classList.toggle("selected", tr.dataset.id === id);
  try {
    await loadDetail();
  } catch (err) {
    say(`Could not load ${id}: ${err.message}`, true);
  }
}

function closeDetail() {
  state.selected = null;
  state.detail = null;
  $("detail").hidden = true;
  for (const tr of $("rows").children) tr.classList.remove("selected");
}

async function loadDetail() {
  const id = state.selected;
  if (!id) return;
  const data = await api("GET", `/api/v1/dlq/${encodeURIComponent(id)}`);
  if (state.selected !== id) return; // another row was opened meanwhile
  state.detail = data;
  renderDetail(data);
}

function field(list, name, value, attrs) {
  list.append(el("dt", name), el("dd", value ?? "—", attrs));
}

function renderDetail(data) {
  const task = data.task;
  const latest = data.dead_letters[0];
  $("detail").hidden = false;
  $("detail-title").textContent = task ? `Task ${task.id}` : `Dead letter ${latest.id}`;

  const list = $("detail-fields");
  list.replaceChildren();
  if (task) {
    field(list, "Status", task.status, { id: "detail-status", class: `status ${task.status}` });
    field(list, "Type", task.type, { id: "detail-type" });
    field(list, "Priority", task.priority);
    field(list, "Attempts", `${task.attempts} (max ${task.max_attempts} per run)`);
    field(list, "Created", task.created_at);
    field(list, "Last error", task.last_error);
  } else {
    field(list, "Status", "no stored task", { id: "detail-status" });
    field(list, "Subject", latest.subject);
  }
  field(list, "Trace id", latest.trace_id);

  let payload;
  if (task) payload = JSON.stringify(task.payload, null, 2);
  else payload = latest.raw ? `raw message (base64):\n${latest.raw}` : "(none)";
  $("detail-payload").textContent = payload;

  const executions = data.executions.map((e) => {
    const tr = el("tr", null, { "data-attempt": String(e.attempt) });
    tr.append(
      el("td", e.attempt, { class: "num" }),
      el("td", e.status, { class: `status ${e.status}` }),
      el("td", e.worker_id),
      el("td", e.started_at ? new Date(e.started_at).toLocaleTimeString() : "—", {
        title: e.started_at || "",
      }),
      el("td", e.duration_ms === null ? "—" : Math.round(e.duration_ms), { class: "num" }),
      el("td", firstLine(e.error), { class: "error", title: e.error || "" }),
    );
    return tr;
  });
  $("detail-executions").tBodies[0].replaceChildren(...executions);

  const letters = data.dead_letters.map((d) => {
    const tr = el("tr");
    tr.append(
      el("td", age(d.failed_at), { title: d.failed_at || "" }),
      el("td", d.status, { class: `status ${d.status}` }),
      el("td", d.reason),
      el("td", firstLine(d.error), { class: "error", title: d.error || "" }),
    );
    return tr;
  });
  $("detail-letters").tBodies[0].replaceChildren(...letters);

  $("detail-replay").disabled = !(task && ["failed", "cancelled"].includes(task.status));
  $("detail-discard").disabled = !data.dead_letters.some((d) => d.status === "open");
}

// -- actions ------------------------------------------------------------------------------

async function replayOne() {
  const task = state.detail && state.detail.task;
  if (!task) return;
  $("detail-replay").disabled = true;
  try {
    const out = await api("POST", `/api/v1/dlq/${task.id}/replay`);
    say(`Replayed task ${task.id}: it is ${out.task.status} again.`);
  } catch (err) {
    say(`Replay failed: ${err.message}`, true);
  }
  await refresh();
}

async function discardSelected() {
  if (!state.selected) return;
  $("detail-discard").disabled = true;
  try {
    const out = await api("POST", `/api/v1/dlq/${encodeURIComponent(state.selected)}/discard`);
    say(`Discarded ${out.items.length} dead letter(s).`);
  } catch (err) {
    say(`Discard failed: ${err.message}`, true);
  }
  await refresh();
}

function confirmDialog(text) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  return new Promise((resolve) => {
    const done = (answer) => {
      $("confirm-ok").onclick = null;
      $("confirm-cancel").onclick = null;
      dialog.onclose = null;
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    $("confirm-ok").onclick = () => done(true);
    $("confirm-cancel").onclick = () => done(false);
    dialog.onclose = () => done(false);
    dialog.showModal();
  });
}

async function replayMatching() {
  const f = filters();
  const body = { type: f.type || null, q: f.q || null };
  try {
    const count = await api("POST", "/api/v1/dlq/replay", { ...body, dry_run: true });
    if (count.tasks === 0) {
      say(`Nothing to replay: no failed task has an open dead letter matching ${describe(f)}.`);
      return;
    }
    const ok = await confirmDialog(
      `Replay ${count.tasks} task(s) (${count.dead_letters} open dead letter(s)) ` +
        `matching ${describe(f)}?`,
    );
    if (!ok) {
      say("Replay cancelled.");
      return;
    }
    const out = await api("POST", "/api/v1/dlq/replay", { ...body, dry_run: false });
    const more = out.remaining ? ` ${out.remaining} more still match: run it again.` : "";
    say(`Replayed ${out.tasks} task(s).${more}`);
  } catch (err) {
    say(`Replay failed: ${err.message}`, true);
  }
  await refresh();
}

// -- polling ------------------------------------------------------------------------------

async function refresh() {
  await loadList();
  if (state.selected) await loadDetail();
  $("refreshed").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

async function tick() {
  if (state.polling) return; // never two polls at once on a slow server
  state.polling = true;
  try {
    if (state.ticks++ % TYPES_EVERY === 0) await loadTypes();
    await refresh();
  } catch (err) {
    $("refreshed").textContent = `refresh failed (${err.message}); retrying`;
  } finally {
    state.polling = false;
  }
}

function debounce(fn, ms) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

function start() {
  const reload = () => loadList().catch((err) => say(`Could not load: ${err.message}`, true));
  $("filters").addEventListener("submit", (event) => event.preventDefault());
  $("f-type").addEventListener("input", debounce(reload, DEBOUNCE_MS));
  $("f-q").addEventListener("input", debounce(reload, DEBOUNCE_MS));
  $("f-status").addEventListener("change", reload);
  $("replay-all").addEventListener("click", replayMatching);
  $("detail-close").addEventListener("click", closeDetail);
  $("detail-replay").addEventListener("click", replayOne);
  $("detail-discard").addEventListener("click", discardSelected);
  tick();
  setInterval(tick, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", start);
