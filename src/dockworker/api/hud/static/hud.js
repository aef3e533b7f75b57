// The HUD's only script: confirmations, revealing masked values, checking JSON payloads, the
// live task page (server-sent events) and the schedule form's preview. No inline script: the
// Content-Security-Policy allows scripts from this origin only.
"use strict";

function confirmations() {
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
}

function reveals() {
  document.querySelectorAll("button[data-reveal]").forEach((button) => {
    const target = document.getElementById(button.dataset.reveal);
    if (!target) return;
    const masked = target.textContent;
    button.addEventListener("click", () => {
      const hidden = target.textContent === masked;
      target.textContent = hidden ? target.dataset.secret : masked;
      button.textContent = hidden ? "Hide" : "Show";
    });
  });
}

function jsonChecks() {
  document.querySelectorAll("textarea[data-json-check]").forEach((area) => {
    const hint = document.getElementById(area.dataset.jsonCheck);
    if (!hint) return;
    const check = () => {
      const text = area.value.trim();
      if (!text || !"{[".includes(text[0])) {
        hint.textContent = "";
        return;
      }
      try {
        JSON.parse(text);
        hint.textContent = "valid JSON";
        hint.className = "hint ok";
      } catch (error) {
        hint.textContent = "not valid JSON (it is sent as text anyway): " + error.message;
        hint.className = "hint warn";
      }
    };
    area.addEventListener("input", check);
    check();
  });
}

function showField(name, value) {
  document.querySelectorAll(`[data-field="${name}"]`).forEach((element) => {
    if (name === "status") {
      const badge = document.createElement("span");
      badge.className = `status status-${value}`;
      badge.textContent = value;
      element.replaceChildren(badge);
    } else {
      element.textContent = value === null || value === "" ? "—" : String(value);
    }
  });
}

function liveTask() {
  const live = document.getElementById("live");
  if (!live || !live.dataset.stream || !window.EventSource) return;
  const log = document.getElementById("log");
  const state = document.getElementById("live-state");
  const progress = document.getElementById("progress");
  const source = new EventSource(live.dataset.stream);
  source.addEventListener("log", (event) => {
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.append(document.createTextNode(JSON.parse(event.data)));
    if (atBottom) log.scrollTop = log.scrollHeight;
  });
  source.addEventListener("task", (event) => {
    const task = JSON.parse(event.data);
    for (const name of ["status", "msg", "percent", "start_time", "end_time", "duration", "log_size", "attempts", "infra_attempts",
                        "cpu_time_ms", "peak_memory_bytes", "cpu_time", "peak_memory"]) {
      showField(name, task[name]);
    }
    if (task.percent !== null) progress.value = task.percent;
    else if (task.active) progress.removeAttribute("value");
    else progress.value = 0;
    document.querySelectorAll('[data-when="active"]').forEach((e) => { e.hidden = !task.active; });
    document.querySelectorAll('[data-when="ended"]').forEach((e) => { e.hidden = task.active; });
  });
  source.addEventListener("end", (event) => {
    source.close();
    state.textContent = `the task ended: ${JSON.parse(event.data).status}`;
    live.dataset.ended = "true";
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CONNECTING) state.textContent = "reconnecting…";
  });
  source.addEventListener("open", () => { state.textContent = "following the log live…"; });
}

function scheduleForm() {
  const form = document.getElementById("schedule-form");
  if (!form) return;
  const kinds = () => {
    const kind = form.querySelector('input[name="kind"]:checked').value;
    form.querySelectorAll("fieldset[data-kind]").forEach((set) => {
      set.hidden = set.dataset.kind !== kind;
      set.disabled = set.dataset.kind !== kind;
    });
  };
  const description = document.getElementById("preview-description");
  const runs = document.getElementById("preview-runs");
  let timer = null;
  let asked = 0;
  const preview = async () => {
    const fields = new URLSearchParams();
    for (const [name, value] of new FormData(form)) {
      if (name !== "csrf" && name !== "payload") fields.append(name, value);
    }
    const mine = ++asked;
    const answer = await fetch(`${form.dataset.preview}?${fields}`, { credentials: "same-origin" });
    const body = await answer.json();
    if (mine !== asked) return;
    if (!answer.ok || body.error) {
      description.textContent = body.error || body.msg;
      description.className = "hint warn";
      runs.replaceChildren();
      return;
    }
    description.textContent = body.description;
    description.className = "";
    runs.replaceChildren(...body.next_runs.map((run) => {
      const item = document.createElement("li");
      const local = document.createElement("small");
      local.textContent = ` ${run.local}`;
      item.append(run.utc, local);
      return item;
    }));
    if (!body.next_runs.length) runs.append(Object.assign(document.createElement("li"), { textContent: "none: no run left" }));
  };
  form.addEventListener("input", () => {
    kinds();
    clearTimeout(timer);
    timer = setTimeout(preview, 300);
  });
  kinds();
  preview();
}

document.addEventListener("DOMContentLoaded", () => {
  confirmations();
  reveals();
  jsonChecks();
  liveTask();
  scheduleForm();
});
