// The upload page: POST /uploads, poll GET /uploads/{id}, then show GET /uploads/{id}/answers.
"use strict";

const POLL_MS = 1000;
const $ = (id) => document.getElementById(id);

function headers() {
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

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (response.ok) return response;
  let body = {};
  try { body = await response.json(); } catch (e) { /* not JSON */ }
  if (response.status === 401) $("token-box").open = true;
  const error = new Error(body.message || `${response.status} ${response.statusText}`);
  error.hint = body.hint || "";
  error.status = response.status;
  throw error;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
}

function showAnswers(page) {
  const body = $("answers").querySelector("tbody");
  body.replaceChildren();
  for (const a of page.answers) {
    const tr = document.createElement("tr");
    cell(tr, a.row_index + 1);
    cell(tr, a.id);
    cell(tr, a.question);
    cell(tr, a.answer);
    cell(tr, a.score === null ? "" : a.score.toFixed(4));
    cell(tr, a.error, "error");
    body.appendChild(tr);
  }
  $("answers-note").textContent = page.total > page.answers.length
    ? `Showing the first ${page.answers.length} of ${page.total} rows; download the CSV for all of them.` : "";
  $("answers-box").hidden = false;
}

function showStatus(s) {
  $("upload-id").textContent = s.upload_id;
  $("object").textContent = s.object;
  const status = $("status");
  status.textContent = s.status + (s.error ? `: ${s.error}` : "");
  status.className = `status ${s.status}`;
  if (s.row_count !== null && s.row_count !== undefined) $("rows").textContent = s.row_count;
  $("answered").textContent = s.answered_count;
  $("status-box").hidden = false;
}

async function poll(uploadId) {
  for (;;) {
    const status = await (await api(`/uploads/${uploadId}`)).json();
    showStatus(status);
    if (status.status === "done") {
      showAnswers(await (await api(`/uploads/${uploadId}/answers`)).json());
      const button = $("download");
      button.hidden = false;
      button.onclick = () => download(uploadId);
      return;
    }
    if (status.status === "failed") {
      showMessage(`The pipeline rejected the file: ${status.error}`);
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

async function download(uploadId) {
  try {
    const blob = await (await api(`/uploads/${uploadId}/answers?format=csv`)).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `${uploadId}.answers.csv`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  } catch (error) {
    showMessage(`${error.message} ${error.hint}`);
  }
}

async function upload(event) {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  $("upload-button").disabled = true;
  $("answers-box").hidden = true;
  $("download").hidden = true;
  showMessage("");
  try {
    const accepted = await (await api("/uploads", { method: "POST", body: form })).json();
    showMessage(`Uploaded ${accepted.filename}: ${accepted.row_count} rows.`, true);
    $("rows").textContent = accepted.row_count;
    await poll(accepted.upload_id);
  } catch (error) {
    showMessage(`${error.message}${error.hint ? " " + error.hint : ""}`);
  } finally {
    $("upload-button").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").value = sessionStorage.getItem("qa-token") || "";
  $("upload-form").addEventListener("submit", upload);
});
