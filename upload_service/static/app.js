// The upload page: POST /uploads for each chosen or dropped file, the history from GET /uploads
// (polled while a visible upload is in progress), and GET /uploads/{id}/answers page by page.
"use strict";

const PAGE_SIZE = 20;          // uploads per history page
const UPLOAD_CONCURRENCY = 3;  // files sent at once
const POLL_MIN_MS = 1000;      // polling starts here and slows down while nothing changes ...
const POLL_MAX_MS = 10000;
const IDLE_STOP_MS = 15 * 60 * 1000;  // ... and stops after this long without any change

const $ = (id) => document.getElementById(id);
const maxUploadBytes = Number(document.body.dataset.maxUploadBytes) || 0;

const state = {
  pending: [],        // this page's uploads not in the history (yet): {key, filename, size, status, ...}
  history: [],        // the current history page (GET /uploads items)
  cursors: [null],    // cursors[i] fetches history page i
  page: 0,
  nextCursor: null,
  hints: new Map(),   // upload_id -> how to fix a rejection (the history keeps only the message)
  answers: null,      // {uploadId, filename, offset, nextOffset, previous: [offsets of the pages before]}
  poll: { timer: null, delay: POLL_MIN_MS, lastChange: Date.now(), signature: "" },
  listRequests: 0,    // GET /uploads requests issued: a slower, older answer must not win
};
let nextKey = 1;

// ---------------------------------------------------------------------------- the API
function authHeaders() {
  const token = $("token").value.trim();
  if (token) sessionStorage.setItem("qa-token", token);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function showMessage(text, ok = false) {
  const box = $("message");
  box.textContent = text;
  box.className = ok ? "ok" : "";
  box.hidden = !text;
}

async function api(path) {
  const response = await fetch(path, { headers: authHeaders() });
  if (response.ok) return response;
  let body = {};
  try { body = await response.json(); } catch (e) { /* not JSON */ }
  if (response.status === 401) $("token-box").open = true;
  const error = new Error(body.message || `${response.status} ${response.statusText}`);
  error.hint = response.status === 401 ? "Enter your API key under API key." : body.hint || "";
  throw error;
}

function describeError(error) {
  return `${error.message}${error.hint ? " " + error.hint : ""}`;
}

function formatBytes(n) {
  if (n === null || n === undefined) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

// ---------------------------------------------------------------------------- uploading
function sendFile(file, row) {
  // XMLHttpRequest rather than fetch: it reports upload progress.
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/uploads");
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) {
        row.sent = event.loaded / event.total;
        render();
      }
    };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON: a proxy's page */ }
      resolve({ status: xhr.status, body });
    };
    xhr.onerror = () => resolve({ status: 0, body: null });
    const form = new FormData();
    form.append("file", file);
    xhr.send(form);
  });
}

async function uploadOne(file) {
  const row = { key: `local-${nextKey++}`, filename: file.name, size: file.size, status: "uploading", sent: 0 };
  state.pending.unshift(row);
  if (maxUploadBytes && file.size > maxUploadBytes) {
    // Refused here, unsent: over the limit the server (or Cloud Run's front end) would refuse it anyway.
    Object.assign(row, { status: "rejected", error: `${file.name} is ${formatBytes(file.size)}, over the limit of `
      + `${formatBytes(maxUploadBytes)} per file. Split it into smaller files, or copy it to the bucket's `
      + "incoming/ folder directly (README: large files)." });
    render();
    return;
  }
  render();
  const { status, body } = await sendFile(file, row);
  const recorded = body && (body.upload_id || (body.details && body.details.upload_id));
  if (recorded) {
    // In the history now (stored, or rejected with its reason): the history row replaces this one.
    if (body.hint) state.hints.set(recorded, body.hint);
    state.pending.splice(state.pending.indexOf(row), 1);
    return;
  }
  let error;
  if (status === 0) error = "The server could not be reached; check the connection and upload again.";
  else if (status === 401) error = "The server needs your API key: enter it under API key and upload again.";
  else if (status === 413) error = `Too large for the server (HTTP 413): at most ${formatBytes(maxUploadBytes)} `
    + "per file. Split the file, or copy it to the bucket's incoming/ folder directly.";
  else error = body ? describeError({ message: body.message, hint: body.hint }) : `HTTP ${status}`;
  Object.assign(row, { status: "rejected", error });
}

async function uploadAll(files) {
  const queue = Array.from(files);
  if (!queue.length) return;
  showMessage("");
  $("upload-button").disabled = true;
  const worker = async () => {
    while (queue.length) {
      await uploadOne(queue.shift());
      await showPage(0);  // the new upload (or its rejection) joins the history's first page
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(UPLOAD_CONCURRENCY, queue.length) }, worker));
  } finally {
    $("upload-button").disabled = false;
    $("files").value = "";
  }
}

// ---------------------------------------------------------------------------- the history
function progressOf(item) {
  if (item.status === "uploading") {
    return { value: item.sent || 0, max: 1, text: `sending ${Math.round((item.sent || 0) * 100)}%` };
  }
  if (item.status === "rejected" || item.status === "failed") return null;
  const total = item.row_count;
  if (total === null || total === undefined) return { value: 0, max: 1, text: "" };
  const done = item.status === "done" ? total : item.processed_count;
  const errors = item.error_count ? `, ${item.error_count} with a row error` : "";
  return { value: done, max: Math.max(total, 1), text: `${done} / ${total} rows${errors}` };
}

function statusLabel(item) {
  if (item.stalled) return { text: "waiting for the pipeline", cls: "stalled" };
  const labels = { uploading: "uploading", uploaded: "uploaded", received: "answering", done: "done",
                   failed: "failed", rejected: "rejected" };
  return { text: labels[item.status] || item.status, cls: item.status };
}

function actionsOf(item) {
  const actions = [];
  if (item.status === "done") actions.push(["show-answers", "Answers"], ["download-csv", "Download CSV"]);
  if (item.stalled) actions.push(["check-again", "Check again"]);
  return actions;
}

function cellsFor(tr) {
  if (!tr.cells.length) for (const cls of ["name", "state", "progress", "time", "actions"]) {
    const td = document.createElement("td");
    td.className = cls;
    tr.appendChild(td);
  }
  return tr.cells;
}

function fillRow(tr, item) {
  const [name, stateCell, progressCell, time, actions] = cellsFor(tr);
  tr.dataset.filename = item.filename;
  tr.dataset.status = item.status;
  if (item.upload_id) tr.dataset.uploadId = item.upload_id;
  name.textContent = item.filename;
  if (item.size !== null && item.size !== undefined) {
    const size = document.createElement("small");
    size.textContent = ` (${formatBytes(item.size)})`;
    name.appendChild(size);
  }

  const label = statusLabel(item);
  const badge = document.createElement("span");
  badge.className = `status ${label.cls}`;
  badge.textContent = label.text;
  stateCell.replaceChildren(badge);
  const detail = item.stalled ? item.note
    : item.error ? item.error + (state.hints.has(item.upload_id) ? " " + state.hints.get(item.upload_id) : "")
    : "";
  if (detail) {
    const div = document.createElement("div");
    div.className = `detail ${item.stalled ? "note" : "problem"}`;
    div.textContent = detail;
    stateCell.appendChild(div);
  }

  const progress = progressOf(item);
  progressCell.replaceChildren();
  if (progress) {
    const bar = document.createElement("progress");
    bar.max = progress.max;
    bar.value = progress.value;
    bar.setAttribute("aria-label", `progress of ${item.filename}`);
    const count = document.createElement("span");
    count.className = "count";
    count.textContent = progress.text;
    progressCell.append(bar, " ", count);
  }

  time.textContent = item.uploaded_at ? new Date(item.uploaded_at).toLocaleString() : "";

  // Rebuilt only when the set of actions changes, so that a focused button keeps the focus.
  const wanted = actionsOf(item);
  const signature = wanted.map((a) => a[0]).join(",");
  if (actions.dataset.signature !== signature) {
    actions.replaceChildren(...wanted.map(([cls, text]) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = cls;
      button.textContent = text;
      button.setAttribute("aria-label", `${text}: ${item.filename}`);
      return button;
    }));
    actions.dataset.signature = signature;
  }
}

function render() {
  const body = $("uploads").tBodies[0];
  const items = [...(state.page === 0 ? state.pending : []), ...state.history];
  const existing = new Map(Array.from(body.rows, (tr) => [tr.dataset.key, tr]));
  items.forEach((item, index) => {
    const key = item.upload_id || item.key;
    let tr = existing.get(key);
    if (!tr) {
      tr = document.createElement("tr");
      tr.className = "upload-row";
      tr.dataset.key = key;
    }
    existing.delete(key);
    fillRow(tr, item);
    if (body.rows[index] !== tr) body.insertBefore(tr, body.rows[index] || null);
  });
  for (const tr of existing.values()) tr.remove();
  $("uploads-empty").hidden = items.length > 0;
  $("uploads-newer").disabled = state.page === 0;
  $("uploads-older").disabled = !state.nextCursor;
  $("uploads-page").textContent = state.page > 0 || state.nextCursor ? `page ${state.page + 1}` : "";
}

async function showPage(page) {
  const request = ++state.listRequests;
  try {
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (state.cursors[page]) params.set("cursor", state.cursors[page]);
    const list = await (await api(`/uploads?${params}`)).json();
    if (request !== state.listRequests) return;
    state.page = page;
    state.history = list.uploads;
    state.nextCursor = list.next_cursor;
    state.cursors[page + 1] = list.next_cursor;
    render();
    schedulePolling();
  } catch (error) {
    $("uploads-status").textContent = `The history could not be loaded: ${describeError(error)}`;
  }
}

// ---------------------------------------------------------------------------- polling
function needsPolling(item) {
  return item.status === "received" || (item.status === "uploaded" && !item.stalled);
}

function schedulePolling() {
  const poll = state.poll;
  clearTimeout(poll.timer);
  const signature = JSON.stringify(state.history.map((i) => [i.upload_id, i.status, i.processed_count, i.stalled]));
  if (signature !== poll.signature) {
    poll.signature = signature;
    poll.lastChange = Date.now();
    poll.delay = POLL_MIN_MS;
  } else {
    poll.delay = Math.min(poll.delay * 1.5, POLL_MAX_MS);
  }
  const active = state.history.filter(needsPolling);
  if (!active.length) {
    $("uploads-status").textContent = "";
    return;
  }
  if (Date.now() - poll.lastChange > IDLE_STOP_MS) {
    $("uploads-status").textContent = "No change for 15 minutes, so the page stopped checking; press Refresh "
      + "to check again.";
    return;
  }
  $("uploads-status").textContent = `${active.length} upload(s) in progress; updating.`;
  poll.timer = setTimeout(() => showPage(state.page), poll.delay);
}

async function checkAgain(uploadId) {
  try {
    const item = await (await api(`/uploads/${uploadId}`)).json();
    const index = state.history.findIndex((i) => i.upload_id === uploadId);
    if (index >= 0) state.history[index] = item;
    if (item.stalled) {
      item.note = `${item.note} (checked again at ${new Date().toLocaleTimeString()})`;
    }
    render();
    schedulePolling();
  } catch (error) {
    showMessage(describeError(error));
  }
}

// ---------------------------------------------------------------------------- answers
function contextCell(tr, answer) {
  const td = document.createElement("td");
  const details = document.createElement("details");
  const summary = document.createElement("summary");
  summary.textContent = "show";
  summary.setAttribute("aria-label", `context of row ${answer.row_index + 1}`);
  const text = document.createElement("p");
  text.className = "context";
  // answer_start/answer_end count code points (Python); JavaScript strings count UTF-16 units.
  const chars = Array.from(answer.context);
  if (answer.answer_start !== null && answer.answer_end !== null) {
    const mark = document.createElement("mark");
    mark.textContent = chars.slice(answer.answer_start, answer.answer_end).join("");
    text.append(chars.slice(0, answer.answer_start).join(""), mark, chars.slice(answer.answer_end).join(""));
  } else {
    text.textContent = answer.context;
  }
  details.append(summary, text);
  td.appendChild(details);
  tr.appendChild(td);
}

function cell(tr, value, className) {
  const td = document.createElement("td");
  td.textContent = value === null || value === undefined ? "" : String(value);
  if (className) td.className = className;
  tr.appendChild(td);
}

// A page may hold fewer rows than asked for (the server caps its size in bytes too), so the page
// after is at next_offset and the pages before are remembered, not computed.
async function showAnswers(uploadId, filename, offset = 0, previous = []) {
  const limit = Number($("answers-page-size").value);
  try {
    const page = await (await api(`/uploads/${uploadId}/answers?offset=${offset}&limit=${limit}`)).json();
    const isNew = !state.answers || state.answers.uploadId !== uploadId;
    state.answers = { uploadId, filename, offset, nextOffset: page.next_offset, previous };
    const body = $("answers").querySelector("tbody");
    body.replaceChildren(...page.answers.map((a) => {
      const tr = document.createElement("tr");
      cell(tr, a.row_index + 1);
      cell(tr, a.id);
      cell(tr, a.question);
      cell(tr, a.answer, "answer");
      cell(tr, a.score === null ? "" : a.score.toFixed(4));
      cell(tr, a.error, "error");
      contextCell(tr, a);
      return tr;
    }));
    $("answers-file").textContent = filename;
    const last = offset + page.answers.length;
    $("answers-range").textContent = page.total
      ? `Rows ${offset + 1}–${last} of ${page.total}` : "No rows.";
    $("answers-prev").disabled = !previous.length;
    $("answers-next").disabled = page.next_offset === null || page.next_offset === undefined;
    $("answers-box").hidden = false;
    if (isNew) $("answers-title").focus();
  } catch (error) {
    showMessage(describeError(error));
  }
}

async function download(uploadId, filename) {
  try {
    const blob = await (await api(`/uploads/${uploadId}/answers?format=csv`)).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = filename.replace(/\.csv$/i, "") + ".answers.csv";
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  } catch (error) {
    showMessage(describeError(error));
  }
}

// ---------------------------------------------------------------------------- wiring
function onTableClick(event) {
  const button = event.target.closest("button");
  const tr = event.target.closest("tr");
  if (!button || !tr || !tr.dataset.uploadId) return;
  const { uploadId, filename } = tr.dataset;
  if (button.classList.contains("show-answers")) showAnswers(uploadId, filename);
  else if (button.classList.contains("download-csv")) download(uploadId, filename);
  else if (button.classList.contains("check-again")) checkAgain(uploadId);
}

function wireDropZone() {
  const zone = $("drop-zone");
  // A file dropped anywhere else would make the browser leave the page to open it.
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (event) => event.preventDefault());
  zone.addEventListener("dragover", () => zone.classList.add("dragging"));
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    zone.classList.remove("dragging");
    uploadAll(event.dataTransfer.files);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").value = sessionStorage.getItem("qa-token") || "";
  // Another key is another client, with another history.
  $("token").addEventListener("change", () => { state.cursors = [null]; showPage(0); });
  $("limit").textContent = maxUploadBytes ? formatBytes(maxUploadBytes) : "the server's limit";
  $("upload-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!$("files").files.length) {
      showMessage("Choose one or more CSV files first (or drop them on the box).");
      return;
    }
    uploadAll($("files").files);
  });
  wireDropZone();
  $("uploads").addEventListener("click", onTableClick);
  $("refresh").addEventListener("click", () => { state.poll.signature = ""; showPage(state.page); });
  $("uploads-newer").addEventListener("click", () => showPage(Math.max(0, state.page - 1)));
  $("uploads-older").addEventListener("click", () => showPage(state.page + 1));
  $("answers-prev").addEventListener("click", () => {
    const a = state.answers;
    showAnswers(a.uploadId, a.filename, a.previous[a.previous.length - 1], a.previous.slice(0, -1));
  });
  $("answers-next").addEventListener("click", () => {
    const a = state.answers;
    showAnswers(a.uploadId, a.filename, a.nextOffset, [...a.previous, a.offset]);
  });
  $("answers-page-size").addEventListener("change", () => {
    const a = state.answers;
    if (a) showAnswers(a.uploadId, a.filename, 0);
  });
  $("answers-close").addEventListener("click", () => { $("answers-box").hidden = true; state.answers = null; });
  $("download").addEventListener("click", () => {
    const a = state.answers;
    if (a) download(a.uploadId, a.filename);
  });
  showPage(0);
});
