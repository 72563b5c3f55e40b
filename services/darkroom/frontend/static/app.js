"use strict";
// Darkroom's page: build the op text, upload with progress, follow the job, remember recent jobs.
// Without this script the form still posts the image to /submitTask and shows the job id.
document.documentElement.classList.add("js");

const $ = (id) => document.getElementById(id);
const RECENT_KEY = "darkroom.recentJobs";
const RECENT_MAX = 12;
const TASK_ID = /^[A-Za-z0-9_-]{22}$/;
const POLL_FIRST_MS = 250;
const POLL_MAX_MS = 2000;
const POLL_GROWTH = 1.5;
// Each /status request waits up to this long for the state to change (long polling).
const LONG_POLL_SECONDS = 25;
const MAX_SERVER_ERRORS = 10;
// The event stream's connection may fail this many times in a row before the page polls instead.
const MAX_STREAM_ERRORS = 3;
// States after which a job changes no more (the stream closes after their event).
const ENDED_STATES = new Set(["finished", "failed", "cancelled"]);

const form = $("upload");
const fileInput = $("uploadfile");
const localImages = new Map(); // job id -> object URL of the file this page uploaded
let chosenUrl = null; // object URL of the chosen file, until it is uploaded
let following = 0; // bumped for every job shown, so an older poll loop stops
let shownId = null; // the job the panel shows

// ---------------------------------------------------------------------------------------------
// Operations: the builder writes the pipeline text; the text box may then be edited by hand.

const ARGUMENTS = {
  "op-resize": ["resize-w", "resize-h", "resize-mode"],
  "op-thumbnail": ["thumbnail-size"],
  "op-blur": ["blur-radius"],
  "op-watermark": ["watermark-text", "watermark-position", "watermark-opacity"],
};

function pipelineText() {
  const on = (id) => $(id).checked;
  const steps = [];
  if (on("op-swap")) steps.push("swap");
  if (on("op-grayscale")) steps.push("grayscale");
  if (on("op-resize")) {
    const mode = $("resize-mode").value === "fit" ? "" : `:${$("resize-mode").value}`;
    steps.push(`resize:${$("resize-w").value}x${$("resize-h").value}${mode}`);
  }
  if (on("op-thumbnail")) steps.push(`thumbnail:${$("thumbnail-size").value}`);
  if ($("rotate").value !== "0") steps.push(`rotate:${$("rotate").value}`);
  if (on("op-flip")) steps.push("flip");
  if (on("op-flop")) steps.push("flop");
  if (on("op-blur")) steps.push(`blur:${$("blur-radius").value}`);
  if (on("op-sharpen")) steps.push("sharpen");
  if (on("op-watermark")) {
    // Commas and colons separate steps and arguments: the master refuses them in the text.
    const text = $("watermark-text").value.trim();
    steps.push(`watermark:${text}:${$("watermark-position").value}:${$("watermark-opacity").value}`);
  }
  const format = $("format").value;
  if (format !== "png") steps.push(`${format}:${$("quality").value}`);
  if (on("op-keep-metadata")) steps.push("keep-metadata");
  // An empty op means the default (swap), so "no operation" is said as a plain PNG conversion.
  return steps.join(",") || "png";
}

function syncBuilder() {
  for (const [box, ids] of Object.entries(ARGUMENTS)) {
    for (const id of ids) $(id).disabled = !$(box).checked;
  }
  $("quality").disabled = $("format").value === "png";
  $("op").value = pipelineText();
}

$("builder").addEventListener("input", (event) => {
  if (event.target.id !== "op") syncBuilder();
});

// ---------------------------------------------------------------------------------------------
// Choosing a file: the chooser (the drop zone is its label) or drag and drop anywhere.

function chooseFile() {
  const file = fileInput.files[0];
  $("drop-file").textContent = file ? `${file.name} · ${formatBytes(file.size)}` : "";
  if (chosenUrl && ![...localImages.values()].includes(chosenUrl)) URL.revokeObjectURL(chosenUrl);
  chosenUrl = file && file.type.startsWith("image/") ? URL.createObjectURL(file) : null;
  if (!file) return;
  following++;
  clearError();
  showJobPanel({ name: file.name });
  setBefore(chosenUrl, "No preview for this file type.");
  setAfter(null, "Press “Process image” to start.");
}

fileInput.addEventListener("change", chooseFile);

const drop = $("drop");
window.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("dragging");
});
window.addEventListener("dragleave", (event) => {
  if (!event.relatedTarget) drop.classList.remove("dragging");
});
window.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("dragging");
  const files = event.dataTransfer && event.dataTransfer.files;
  if (!files || files.length === 0) return;
  fileInput.files = files;
  chooseFile();
});

// ---------------------------------------------------------------------------------------------
// Uploading: XMLHttpRequest, for its upload progress events.

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const file = fileInput.files[0];
  if (file) upload(file, $("op").value.trim());
});

function upload(file, op) {
  clearError();
  following++;
  shownId = null; // no job id until the upload is answered: nothing to cancel yet
  const preview = chosenUrl;
  const xhr = new XMLHttpRequest();
  const body = new FormData();
  // The op goes first: the server then streams the file through instead of spooling it.
  if (op) body.append("op", op);
  body.append("uploadfile", file, file.name);
  xhr.open("POST", "/submitTask");
  xhr.upload.addEventListener("progress", (event) => {
    if (event.lengthComputable) setProgress(event.loaded / event.total);
  });
  xhr.addEventListener("load", () => {
    setBusy(false);
    if (xhr.status !== 200) {
      uploadFailed(describeError(xhr.status, xhr.statusText, xhr.responseText));
      return;
    }
    const job = { id: xhr.responseText.trim(), name: file.name, op, time: Date.now() };
    if (preview) localImages.set(job.id, preview);
    remember(job);
    showJob(job);
  });
  xhr.addEventListener("error", () => {
    setBusy(false);
    uploadFailed("The upload failed: the server could not be reached.");
  });
  setBusy(true);
  setProgress(0);
  showJobPanel({ name: file.name, op });
  setState("uploading");
  setBefore(preview, "No preview for this file type.");
  setAfter(null, "Uploading…");
  xhr.send(body);
}

function uploadFailed(message) {
  setState(null);
  setAfter(null, "Nothing was processed.");
  showError(message);
}

function setBusy(busy) {
  $("submit").disabled = busy;
  form.setAttribute("aria-busy", String(busy));
  $("progress-row").hidden = !busy;
}

function setProgress(fraction) {
  const percent = Math.round(fraction * 100);
  $("progress").value = percent;
  $("progress-text").textContent = `${percent} %`;
}

// ---------------------------------------------------------------------------------------------
// Following a job: its live events (/events, Server-Sent Events) show each state and processing
// stage as it comes; once it has ended, /status gives the final facts and the result is shown.
// Without EventSource, or when the stream fails for good, the page long-polls /status instead.

function showJob(job) {
  following++;
  shownId = job.id;
  clearError();
  showJobPanel(job);
  setBefore(localImages.get(job.id), "The original stays on the device that uploaded it.");
  setAfter(null, "Waiting for the result…");
  markCurrent(job.id);
  follow(job.id, following);
}

async function follow(id, generation) {
  if (typeof EventSource === "function") await streamEvents(id, generation);
  // The job has ended (one /status answer now shows it), or the stream failed: poll.
  if (generation === following) await poll(id, generation);
}

// Resolves once the job has ended or the stream failed for good (or another job is shown).
function streamEvents(id, generation) {
  return new Promise((resolve) => {
    const source = new EventSource(`/events?id=${encodeURIComponent(id)}`);
    let errors = 0; // connections in a row that failed before opening
    const done = () => {
      source.close();
      resolve();
    };
    const current = () => {
      if (generation === following) return true;
      done(); // another job is shown: this stream is of no use
      return false;
    };
    source.addEventListener("open", () => {
      errors = 0;
    });
    source.addEventListener("state", (event) => {
      if (!current()) return;
      const { state } = JSON.parse(event.data);
      if (state === "in progress") $("job-stages").replaceChildren(); // a new attempt
      setState(state);
      if (ENDED_STATES.has(state)) done();
    });
    source.addEventListener("stage", (event) => {
      if (current()) showStage(JSON.parse(event.data));
    });
    source.addEventListener("error", () => {
      if (!current()) return;
      // CLOSED: the server refused the stream (busy, unknown job), EventSource gives up;
      // CONNECTING: it reconnects by itself, with Last-Event-ID, unless that keeps failing.
      if (source.readyState === EventSource.CLOSED || ++errors >= MAX_STREAM_ERRORS) done();
    });
  });
}

function showStage(stage) {
  const item = document.createElement("li");
  const took = document.createElement("span");
  took.className = "took";
  took.textContent = ` ${formatMilliseconds(stage.durationMs)}`;
  item.append(stage.stage, took);
  item.dataset.stage = stage.stage;
  $("job-stages").append(item);
}

// The old way, kept for browsers without EventSource and for streams that fail: long-poll /status
// until it is finished or failed. The server answers when the state changes, or at once when it
// is busy: then the page waits, backing off, and asks again.
async function poll(id, generation) {
  let delay = POLL_FIRST_MS;
  let errors = 0; // in a row: unreachable, or a 5xx while a service restarts
  let known = null; // the state last shown: the server answers once the job leaves it
  while (generation === following) {
    let response = null;
    let url = `/status?id=${encodeURIComponent(id)}`;
    if (known) url += `&wait=${LONG_POLL_SECONDS}&state=${encodeURIComponent(known)}`;
    try {
      response = await fetch(url, { cache: "no-store" });
    } catch {
      // the network failed; counted below like a 5xx
    }
    if (generation !== following) return;
    if (response && response.ok) {
      errors = 0;
      const task = await response.json();
      if (generation !== following) return;
      showTask(task);
      if (task.stateName === "finished" || task.stateName === "failed") {
        followWebhook(id, generation, task.webhook);
      }
      if (task.stateName === "finished") return showResult(id);
      if (task.stateName === "failed") return setAfter(null, "No result: the job failed.");
      if (task.stateName === "cancelled") return setAfter(null, "No result: the job was cancelled.");
      if (task.stateName !== known) {
        known = task.stateName;
        delay = POLL_FIRST_MS;
        continue; // changed: ask again at once, waiting for the next change
      }
    } else if (response && response.status < 500) {
      setState(null);
      setAfter(null, "No result.");
      return showError(describeError(response.status, response.statusText, await response.text()));
    } else if (++errors >= MAX_SERVER_ERRORS) {
      return showError("The server is not answering; choose the job again to retry.");
    }
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * POLL_GROWTH, POLL_MAX_MS);
  }
}

function showTask(task) {
  setState(task.stateName);
  $("job-id").textContent = task.id;
  $("job-pipeline").textContent = task.pipeline;
  const created = Date.parse(task.createdAt);
  const seconds = task.finishedAt ? (Date.parse(task.finishedAt) - created) / 1000 : null;
  const took = seconds === null ? "" : ` · took ${seconds.toFixed(1)} s`;
  const attempts = task.attempts > 1 ? ` · ${task.attempts} attempts` : "";
  $("job-time").textContent = formatTime(created) + took + attempts;
  const failed = task.stateName === "failed";
  $("job-reason").textContent = failed ? `Failed: ${task.error || "no reason given"}` : "";
  // What the job's status tells of the result: metadata removed, an animation kept, ...
  $("job-notes").textContent = failed ? "" : (task.notes || []).join(" · ");
  showWebhook(task.webhook);
}

// ---------------------------------------------------------------------------------------------
// A job uploaded with webhook=URL: its delivery, which goes on after the job ended.

const WEBHOOK_POLLS = 20; // once a second at most, then the page stops following it
const WEBHOOK_POLL_MS = 1000;

function showWebhook(webhook) {
  const line = $("job-webhook");
  if (!webhook) {
    line.textContent = "";
    return;
  }
  const last = webhook.last.length ? webhook.last[webhook.last.length - 1] : null;
  const outcome = last ? ` (last: ${last.status ?? last.error})` : "";
  const tries = webhook.attempts === 1 ? "1 attempt" : `${webhook.attempts} attempts`;
  line.textContent = `Webhook to ${webhook.url}: ${webhook.state}, ${tries}${outcome}`;
}

async function followWebhook(id, generation, webhook) {
  for (let poll = 0; webhook && webhook.state === "pending" && poll < WEBHOOK_POLLS; poll++) {
    await new Promise((resolve) => setTimeout(resolve, WEBHOOK_POLL_MS));
    if (generation !== following) return;
    let response = null;
    try {
      response = await fetch(`/status?id=${encodeURIComponent(id)}`, { cache: "no-store" });
    } catch {
      continue; // the network failed: ask again at the next turn
    }
    if (!response.ok || generation !== following) return;
    webhook = (await response.json()).webhook;
    if (generation === following) showWebhook(webhook);
  }
}

function showResult(id) {
  const url = `/getImage?id=${encodeURIComponent(id)}`;
  const after = $("after");
  after.onload = () => {
    after.hidden = false;
    $("after-note").hidden = true;
  };
  after.onerror = () => setAfter(null, "The result cannot be shown here; download it instead.");
  after.src = url;
  $("download").href = url;
  $("download").hidden = false;
}

// ---------------------------------------------------------------------------------------------
// The job panel

function showJobPanel(job) {
  $("job").hidden = false;
  $("job-facts").hidden = false;
  $("job-id").textContent = job.id || "–";
  $("job-pipeline").textContent = job.op || "–";
  $("job-file").textContent = job.name || "–";
  $("job-time").textContent = job.time ? formatTime(job.time) : "–";
  $("job-reason").textContent = "";
  $("job-stages").replaceChildren();
  $("download").hidden = true;
  $("download").removeAttribute("href");
  setState(job.id ? "queued" : null);
}

function setState(name) {
  const badge = $("job-state");
  badge.hidden = !name;
  badge.textContent = name || "";
  badge.dataset.state = name || "";
  $("cancel-job").hidden = !name || !shownId || ENDED_STATES.has(name);
}

// Cancelling: POST /cancel; the poll loop's long poll sees the change and shows it too.
async function cancelJob() {
  const id = shownId;
  if (!id) return;
  const button = $("cancel-job");
  button.disabled = true;
  try {
    const response = await fetch(`/cancel?id=${encodeURIComponent(id)}`, { method: "POST" });
    const body = await response.text();
    if (id !== shownId) return;
    if (response.ok) showTask(JSON.parse(body));
    else showError(describeError(response.status, response.statusText, body));
  } catch {
    showError("The job could not be cancelled: the server could not be reached.");
  } finally {
    button.disabled = false;
  }
}

$("cancel-job").addEventListener("click", cancelJob);

function setBefore(url, note) {
  $("before-size").textContent = "";
  $("before").hidden = !url;
  if (url) $("before").src = url;
  else $("before").removeAttribute("src");
  $("before-note").hidden = Boolean(url);
  $("before-note").textContent = note;
}

function setAfter(url, note) {
  const after = $("after");
  after.onload = after.onerror = null;
  $("after-size").textContent = "";
  after.hidden = !url;
  if (url) after.src = url;
  else after.removeAttribute("src");
  $("after-note").hidden = Boolean(url);
  $("after-note").textContent = note;
}

function showError(message) {
  $("error").textContent = message;
}

function clearError() {
  $("error").textContent = "";
}

function describeError(status, statusText, body) {
  try {
    const error = JSON.parse(body);
    const text = [error.title, error.description].filter(Boolean).join(": ");
    if (text) return text;
  } catch {
    // not JSON: fall through to the status line
  }
  return `The server answered ${status} ${statusText}`.trim();
}

// ---------------------------------------------------------------------------------------------
// Recent jobs, kept in this browser's localStorage

function recentJobs() {
  try {
    const jobs = JSON.parse(localStorage.getItem(RECENT_KEY) || "[]");
    return Array.isArray(jobs) ? jobs.filter(isJob) : [];
  } catch {
    return [];
  }
}

function isJob(job) {
  return Boolean(job) && TASK_ID.test(job.id) && Number.isFinite(job.time);
}

function saveRecent(jobs) {
  try {
    localStorage.setItem(RECENT_KEY, JSON.stringify(jobs));
  } catch {
    // storage full or disabled: the list just is not kept
  }
  renderRecent();
}

function remember(job) {
  saveRecent([job, ...recentJobs().filter((other) => other.id !== job.id)].slice(0, RECENT_MAX));
}

function renderRecent() {
  const jobs = recentJobs();
  $("recent").hidden = jobs.length === 0;
  $("recent-list").replaceChildren(...jobs.map(recentItem));
}

function recentItem(job) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "recent-job";
  button.dataset.id = job.id;
  const name = document.createElement("span");
  name.className = "recent-name";
  name.textContent = job.name || job.id;
  const op = document.createElement("code");
  op.textContent = job.op || "swap";
  const time = document.createElement("time");
  time.dateTime = new Date(job.time).toISOString();
  time.textContent = formatTime(job.time);
  const meta = document.createElement("span");
  meta.className = "recent-meta";
  meta.append(op, time);
  button.append(name, meta);
  button.addEventListener("click", () => showJob(job));
  const item = document.createElement("li");
  item.append(button);
  return item;
}

function markCurrent(id) {
  for (const button of $("recent-list").querySelectorAll("button")) {
    if (button.dataset.id === id) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
  }
}

$("clear-recent").addEventListener("click", () => saveRecent([]));

// ---------------------------------------------------------------------------------------------

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function formatMilliseconds(ms) {
  if (!Number.isFinite(ms)) return "";
  return ms < 1000 ? `${ms.toFixed(ms < 10 ? 1 : 0)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

function formatTime(ms) {
  const date = new Date(ms);
  if (date.toDateString() === new Date().toDateString()) {
    return date.toLocaleTimeString([], { timeStyle: "short" });
  }
  return date.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

for (const id of ["before", "after"]) {
  $(id).addEventListener("load", (event) => {
    const image = event.target;
    $(`${id}-size`).textContent = `${image.naturalWidth} × ${image.naturalHeight}`;
  });
}

$("builder").hidden = false;
$("job").hidden = false;
syncBuilder();
renderRecent();
if (fileInput.files.length) chooseFile(); // a file kept by the browser across a reload
