"use strict";
// Upload without leaving the page, then follow the job until it is finished or failed.
const form = document.getElementById("upload");
const $ = (id) => document.getElementById(id);

async function errorText(response) {
  try {
    const body = await response.json();
    return body.description || body.title || response.statusText;
  } catch {
    return response.statusText;
  }
}

function showError(message) {
  $("job").hidden = false;
  $("job-state").textContent = "failed";
  $("job-error").textContent = message;
  $("job-error").hidden = false;
}

async function follow(id) {
  for (;;) {
    const response = await fetch(`/status?id=${encodeURIComponent(id)}`);
    if (!response.ok) return showError(await errorText(response));
    const task = await response.json();
    $("job-state").textContent = task.stateName;
    if (task.stateName === "failed") return showError(task.error || "processing failed");
    if (task.stateName === "finished") {
      const url = `/getImage?id=${encodeURIComponent(id)}`;
      $("result-image").src = url;
      $("download").href = url;
      $("result").hidden = false;
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  $("job-error").hidden = true;
  $("result").hidden = true;
  const response = await fetch("/submitTask", { method: "POST", body: new FormData(form) });
  if (!response.ok) return showError(await errorText(response));
  const id = (await response.text()).trim();
  $("job-id").textContent = id;
  $("job-state").textContent = "queued";
  $("job").hidden = false;
  follow(id);
});
