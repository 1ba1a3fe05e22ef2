// Tanvrit Compute console: the live parts of server-rendered pages. No dependencies.
//
// - [data-live] table bodies are refreshed from their URL (server-rendered, escaped rows).
// - #log follows GET /v0/jobs/{id}/logs?follow=true (SSE). Each event's id is the byte
//   offset past its data, so a reconnect resumes at exactly that offset: nothing repeated,
//   nothing lost. Log text is only ever inserted as text nodes; ANSI colour codes become
//   classes on spans, never markup.
// - forms with data-confirm ask first; forms with data-autosubmit submit on change.
"use strict";

(function () {
  const LIVE_INTERVAL_MS = 2000;

  function startLive(element) {
    const url = element.getAttribute("data-live");
    let busy = false;
    let refreshes = 0;
    let timer = null;
    async function refresh() {
      if (busy || document.hidden) return;
      busy = true;
      try {
        const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
        if (response.status === 401) { window.location.assign("/ui/sign-in"); return; }
        if (response.ok) {
          // The fragment is rendered by the server's autoescaping templates; parsing it in an
          // inert <template> runs nothing, and the CSP forbids inline script besides.
          const template = document.createElement("template");
          template.innerHTML = await response.text();
          element.replaceChildren(template.content);
          element.setAttribute("data-refreshes", String(++refreshes));
          // A fragment that will not change again (a finished job) says so.
          if (element.querySelector("[data-stop-live]")) clearInterval(timer);
        }
      } catch (_) {
        // Offline for a moment: the next tick tries again.
      } finally {
        busy = false;
      }
    }
    timer = setInterval(refresh, LIVE_INTERVAL_MS);
  }

  // --- ANSI SGR → spans ----------------------------------------------------------------
  const FG = ["black", "red", "green", "yellow", "blue", "magenta", "cyan", "white"];

  function AnsiWriter(target) {
    this.target = target;
    this.pending = "";   // an escape sequence cut in two by a chunk boundary
    this.style = { fg: null, bg: null, bold: false, dim: false, italic: false, underline: false };
  }

  AnsiWriter.prototype.apply = function (params) {
    const codes = params === "" ? [0] : params.split(";").map((p) => (p === "" ? 0 : parseInt(p, 10)));
    const s = this.style;
    for (let i = 0; i < codes.length; i++) {
      const c = codes[i];
      if (c === 0) { s.fg = s.bg = null; s.bold = s.dim = s.italic = s.underline = false; }
      else if (c === 1) s.bold = true;
      else if (c === 2) s.dim = true;
      else if (c === 3) s.italic = true;
      else if (c === 4) s.underline = true;
      else if (c === 22) s.bold = s.dim = false;
      else if (c === 23) s.italic = false;
      else if (c === 24) s.underline = false;
      else if (c >= 30 && c <= 37) s.fg = "fg-" + FG[c - 30];
      else if (c >= 90 && c <= 97) s.fg = "fg-bright-" + FG[c - 90];
      else if (c === 39) s.fg = null;
      else if (c >= 40 && c <= 47) s.bg = "bg-" + FG[c - 40];
      else if (c >= 100 && c <= 107) s.bg = "bg-bright-" + FG[c - 100];
      else if (c === 49) s.bg = null;
      else if ((c === 38 || c === 48) && codes[i + 1] === 5) {
        const n = codes[i + 2];
        const name = n < 8 ? FG[n] : n < 16 ? "bright-" + FG[n - 8] : null;
        if (name) { if (c === 38) s.fg = "fg-" + name; else s.bg = "bg-" + name; }
        i += 2;
      } else if ((c === 38 || c === 48) && codes[i + 1] === 2) {
        i += 4; // 24-bit colour: kept as the default colour (the CSP allows no inline styles)
      }
    }
  };

  AnsiWriter.prototype.emit = function (text) {
    if (!text) return;
    const s = this.style;
    const classes = [];
    if (s.fg) classes.push(s.fg);
    if (s.bg) classes.push(s.bg);
    if (s.bold) classes.push("ansi-bold");
    if (s.dim) classes.push("ansi-dim");
    if (s.italic) classes.push("ansi-italic");
    if (s.underline) classes.push("ansi-underline");
    if (classes.length === 0) {
      this.target.appendChild(document.createTextNode(text));
    } else {
      const span = document.createElement("span");
      span.className = classes.join(" ");
      span.textContent = text;
      this.target.appendChild(span);
    }
  };

  // ESC [ params final: SGR when final is "m"; every other CSI, and OSC ... BEL/ST, is dropped.
  const SEQUENCE = /\x1b(?:\[([0-9;?]*)([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])/g;

  AnsiWriter.prototype.write = function (chunk) {
    let text = this.pending + chunk;
    this.pending = "";
    const lastEsc = text.lastIndexOf("\x1b");
    if (lastEsc !== -1) {
      const tail = text.slice(lastEsc);
      SEQUENCE.lastIndex = 0;
      const match = SEQUENCE.exec(tail);
      if (!match || match.index !== 0) {
        // Unfinished: keep it for the next chunk (bounded, so a stray ESC cannot hold text back forever).
        if (tail.length < 64) { this.pending = tail; text = text.slice(0, lastEsc); }
      }
    }
    let at = 0;
    SEQUENCE.lastIndex = 0;
    let match;
    while ((match = SEQUENCE.exec(text)) !== null) {
      this.emit(text.slice(at, match.index));
      if (match[2] === "m") this.apply(match[1]);
      at = SEQUENCE.lastIndex;
    }
    this.emit(text.slice(at));
  };

  // --- the log follower ------------------------------------------------------------------
  function followLog(pre) {
    const jobId = pre.getAttribute("data-job");
    const status = document.getElementById("log-status");
    const writer = new AnsiWriter(pre);
    let offset = 0;        // bytes of the log received so far
    let source = null;
    let retryMs = 500;
    let finished = false;
    let connects = 0;

    function setStatus(text) { if (status) status.textContent = text; }

    function open() {
      const url = "/v0/jobs/" + encodeURIComponent(jobId) + "/logs?follow=true&offset=" + offset;
      source = new EventSource(url);
      connects += 1;
      pre.setAttribute("data-connects", String(connects));
      source.onopen = function () { retryMs = 500; setStatus("live"); };
      source.addEventListener("log", function (event) {
        const end = parseInt(event.lastEventId, 10);
        const text = JSON.parse(event.data);
        if (!Number.isFinite(end) || end <= offset) return; // already shown
        offset = end;
        const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        writer.write(text);
        if (atBottom) pre.scrollTop = pre.scrollHeight;
        pre.setAttribute("data-offset", String(offset));
      });
      source.addEventListener("end", function (event) {
        finished = true;
        source.close();
        const info = JSON.parse(event.data);
        setStatus("finished: " + info.state + (info.exitCode === null || info.exitCode === undefined ? "" : " (exit " + info.exitCode + ")"));
        pre.setAttribute("data-finished", info.state);
      });
      source.onerror = function () {
        if (finished) return;
        // Our own reconnect, from the offset we hold, rather than EventSource's: it also covers
        // the cases in which EventSource gives up (a failed reconnect closes it for good).
        source.close();
        setStatus("reconnecting…");
        setTimeout(async function () {
          try {
            // A stream refused for good (the session ended) is not retried: sign in again.
            const probe = await fetch("/v0/jobs/" + encodeURIComponent(jobId), { credentials: "same-origin" });
            if (probe.status === 401) { window.location.assign("/ui/sign-in"); return; }
          } catch (_) {
            // Still offline: reopen anyway, and back off again if that fails.
          }
          open();
        }, retryMs);
        retryMs = Math.min(retryMs * 2, 10000);
      };
    }
    open();
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(startLive);
    const log = document.getElementById("log");
    if (log) followLog(log);
    // Delegated, so rows replaced by a live refresh keep their behaviour.
    document.addEventListener("submit", function (event) {
      const form = event.target;
      if (form instanceof HTMLFormElement && form.hasAttribute("data-confirm") &&
          !window.confirm(form.getAttribute("data-confirm"))) {
        event.preventDefault();
      }
    });
    document.addEventListener("change", function (event) {
      const form = event.target instanceof Element ? event.target.closest("form[data-autosubmit]") : null;
      if (form) form.submit();
    });
  });
})();
