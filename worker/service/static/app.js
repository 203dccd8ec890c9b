// Small enhancements; every page works without them: the check page's live message preview, the run
// page's live progress (server-sent events, the table refreshed when the run changes state), and the
// runs list refreshed every 2 s while a run in it is open.
"use strict";
(() => {
  const $ = (selector, root = document) => root.querySelector(selector);
  const fill = (text, fields) =>
    text.replace(/\{([^{}|]*)(?:\|([^{}]*))?\}/g, (_, name, fallback) => fields[fieldName(name)] || fallback || "");
  // The server's field_name: lower case, runs of other characters than letters and digits become _.
  const fieldName = (name) => name.toLowerCase().replace(/[^\p{L}\p{N}]+/gu, "_").replace(/^_+|_+$/g, "");

  function livePreview() {
    const out = $("#preview-text"), input = $("[data-preview]");
    if (!out || !input) return;
    const fields = JSON.parse(out.dataset.fields || "{}"), url = out.dataset.url || "";
    const show = () => { out.textContent = [fill(input.value.trim(), fields), url].filter(Boolean).join(" "); };
    input.addEventListener("input", show);
    show();
  }

  function showProgress(s) {
    const total = s.total || 0;
    const percent = s.done ? 100 : (total ? Math.min(100, Math.floor((s.final * 100) / total)) : 0);
    $("#bar").value = percent;
    $("#progress-text").textContent = `${percent}% · ${s.final} of ${total} rows final`;
    const badge = $("#state");
    badge.textContent = s.state;
    badge.className = `badge ${s.state}`;
    document.querySelectorAll("[data-sum]").forEach((el) => {
      el.textContent = el.dataset.sum.split(" ").reduce((n, key) => n + (s.counts[key] || 0), 0);
    });
    document.querySelectorAll("#status-chart li[data-status]").forEach((li) => {
      const n = s.counts[li.dataset.status] || 0;
      li.hidden = n === 0;
      li.querySelector("rect.fill").setAttribute("width", total ? ((n * 100) / total).toFixed(2) : 0);
      li.querySelector(".n").textContent = n;
    });
  }

  async function refreshParts() {
    const response = await fetch(location.href, { headers: { Accept: "text/html" } });
    if (!response.ok) return;
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    for (const id of ["meta", "controls", "errors", "recipients"]) {
      const part = fresh.getElementById(id), old = document.getElementById(id);
      if (part && old) old.replaceWith(part);
    }
  }

  function liveRun() {
    const main = $("main[data-events]");
    if (!main || main.dataset.done === "true" || !window.EventSource) return;
    let state = main.dataset.state, finished = false;
    const events = new EventSource(main.dataset.events);
    const finish = () => {
      if (finished) return;
      finished = true;
      events.close();
      main.dataset.done = "true";
      refreshParts();
    };
    events.addEventListener("progress", (event) => {
      const s = JSON.parse(event.data);
      showProgress(s);
      if (s.done) return finish();
      if (s.state !== state) { state = s.state; refreshParts(); }
    });
    events.addEventListener("done", (event) => {
      if (event.data) showProgress(JSON.parse(event.data));
      finish();
    });
  }

  function liveRuns() {
    const tick = async () => {
      if (!$("#runs[data-live]")) return;
      const response = await fetch(location.pathname, { headers: { Accept: "text/html" } });
      const fresh = response.ok && new DOMParser().parseFromString(await response.text(), "text/html");
      const part = fresh && fresh.getElementById("runs");
      if (part) $("#runs").replaceWith(part);
      setTimeout(tick, 2000);
    };
    setTimeout(tick, 2000);
  }

  document.addEventListener("DOMContentLoaded", () => { livePreview(); liveRun(); liveRuns(); });
})();
