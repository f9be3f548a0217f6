// The stand-in API's dashboard. Every piece of task content goes into the page through textContent,
// never as HTML: a task named "<img src=x onerror=alert(1)>" shows as text.
"use strict";

const TaskBadgerDashboard = (() => {
  const POLL_MS = 500;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function seconds(from, to) {
    if (!from) return null;
    const end = to ? Date.parse(to) : Date.now();
    return Math.max(0, (end - Date.parse(from)) / 1000);
  }

  function duration(secs) {
    if (secs === null) return "–";
    if (secs < 1) return `${Math.round(secs * 1000)} ms`;
    if (secs < 60) return `${secs.toFixed(1)} s`;
    const m = Math.floor(secs / 60);
    if (m < 60) return `${m} min ${Math.round(secs % 60)} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }

  function progressCell(task) {
    const cell = el("td", "progress-cell");
    if (task.value === null || task.value === undefined) {
      cell.append(el("span", "muted", "–"));
      return cell;
    }
    const max = task.value_max || 0;
    const percent = max > 0 ? Math.min(100, Math.floor((100 * task.value) / max)) : null;
    const bar = el("span", "progress");
    const fill = el("span", "bar");
    fill.style.width = `${percent === null ? 0 : percent}%`;
    bar.append(fill);
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuenow", String(percent === null ? task.value : percent));
    cell.append(bar, el("span", "percent", percent === null ? `${task.value}` : `${percent}%`));
    return cell;
  }

  function tagsCell(tags) {
    const cell = el("td", "tags");
    for (const [key, value] of Object.entries(tags || {})) cell.append(el("span", "tag", `${key}=${value}`));
    return cell;
  }

  function row(task, isChild) {
    const tr = el("tr", isChild ? "child" : "");
    tr.dataset.taskId = task.id;
    tr.dataset.status = task.status;
    const name = el("td", "name");
    const link = el("a", "", task.name);
    link.href = task.url;
    name.append(link);
    const status = el("td");
    status.append(el("span", `status ${task.status}`, task.status));
    tr.append(
      name, status, progressCell(task),
      el("td", "wait", duration(seconds(task.created, task.start_time))),
      el("td", "runtime", task.start_time ? duration(seconds(task.start_time, task.end_time)) : "–"),
      tagsCell(task.tags),
      el("td", "monitor muted", task.monitor_id || ""),
    );
    return tr;
  }

  // The server filters and orders: newest first, each child right under its parent (oldest first).
  function render(payload, filtered) {
    const tasks = payload.tasks;
    document.getElementById("tasks").replaceChildren(...tasks.map((task) => row(task, task.parent !== null)));
    const total = payload.total.toLocaleString();
    document.getElementById("count").textContent = payload.more
      ? `newest ${tasks.length} ${filtered ? "matching " : ""}of ${total} tasks`
      : `${tasks.length} of ${total} tasks`;
    document.getElementById("empty").hidden = payload.total !== 0;
  }

  // Fetch url() now, then every POLL_MS; the returned function fetches again at once (the url changed).
  // A response for a url that is no longer current is dropped, and the current one fetched.
  function poll(url, onData) {
    const live = document.getElementById("live");
    let last = null;
    let wake = null;
    (async () => {
      for (;;) {
        const target = url();
        try {
          const response = await fetch(target, { cache: "no-store" });
          const text = await response.text();
          if (!response.ok) throw new Error(JSON.parse(text).detail || `HTTP ${response.status}`);
          if (target === url() && `${target} ${text}` !== last) {
            last = `${target} ${text}`;
            onData(JSON.parse(text));
          }
          live.textContent = `live · updated ${new Date().toLocaleTimeString()}`;
        } catch (err) {
          live.textContent = err instanceof TypeError ? "the stand-in API is not answering" : String(err.message);
        }
        if (target !== url()) continue;
        await new Promise((resolve) => { wake = resolve; setTimeout(resolve, POLL_MS); });
        wake = null;
      }
    })();
    return () => { if (wake) wake(); };
  }

  function list() {
    const status = document.getElementById("status-filter");
    const name = document.getElementById("name-filter");
    const filters = () => {
      const params = new URLSearchParams();
      if (status.value) params.set("status", status.value);
      if (name.value.trim()) params.set("name", name.value.trim());
      return params;
    };
    const url = () => `/_dashboard/tasks${filters().size ? `?${filters()}` : ""}`;
    const refresh = poll(url, (payload) => {
      document.getElementById("where").textContent = `${payload.organization} / ${payload.project} · stand-in API`;
      render(payload, filters().size > 0);
    });
    status.addEventListener("change", refresh);
    name.addEventListener("input", refresh);
  }

  function field(list, label, value) {
    list.append(el("dt", "", label), el("dd", "", value === null || value === undefined || value === "" ? "–" : value));
  }

  function detail() {
    const id = location.pathname.replace(/\/$/, "").split("/").pop();
    poll(() => `/_dashboard/tasks/${encodeURIComponent(id)}`, (task) => {
      document.getElementById("title").textContent = task.name;
      document.title = `${task.name} — Task Badger local dashboard`;
      const fields = document.getElementById("fields");
      fields.replaceChildren();
      for (const key of ["id", "status", "value", "value_max", "value_percent", "queue", "external_id", "parent",
        "monitor_id", "created", "updated", "start_time", "end_time", "time_to_start", "max_runtime",
        "stale_timeout", "public_url"]) {
        field(fields, key, task[key]);
      }
      field(fields, "tags", Object.entries(task.tags || {}).map(([k, v]) => `${k}=${v}`).join(", "));
      document.getElementById("data").textContent = JSON.stringify(task.data, null, 2);
      const exception = task.data && typeof task.data === "object" ? task.data.exception : null;
      document.getElementById("failure").hidden = !exception;
      document.getElementById("traceback").textContent = exception || "";
    });
  }

  return { list, detail };
})();

document.addEventListener("DOMContentLoaded", () => {
  if (document.getElementById("tasks")) TaskBadgerDashboard.list();
  if (document.getElementById("fields")) TaskBadgerDashboard.detail();
});
