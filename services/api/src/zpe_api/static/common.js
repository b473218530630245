/* Shared helpers of the ZPE web UI: API calls, problem details, formatting, DOM. */
"use strict";

(function () {
  const API = "/calc/zpe";
  const EV_TO_KJMOL = 96.48533212331002;
  const TERMINAL = ["done", "failed", "cancelled"];

  /** An error answer of the API (RFC 9457 problem details with a stable `code`). */
  class ProblemError extends Error {
    constructor(status, problem) {
      super(problem.detail || problem.title || `HTTP ${status}`);
      this.status = status;
      this.code = problem.code || `http_${status}`;
      this.detail = problem.detail || problem.title || "";
      this.problem = problem;
    }
  }

  /** Read a problem body from a failed response, whatever its content type. */
  async function problemFrom(response) {
    let body = null;
    const text = await response.text().catch(() => "");
    try {
      body = JSON.parse(text);
    } catch (_) {
      body = null;
    }
    if (!body || typeof body !== "object") {
      body = { detail: text.trim().slice(0, 300) || response.statusText, code: `http_${response.status}` };
    }
    return new ProblemError(response.status, body);
  }

  /** Call the API; resolve to the JSON body, reject with a ProblemError (or a network error). */
  async function api(path, options = {}) {
    const headers = { Accept: "application/json", ...(options.headers || {}) };
    const init = { method: options.method || "GET", headers, cache: "no-store" };
    if (options.json !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.json);
    }
    const response = await fetch(API + path, init);
    if (!response.ok) {
      throw await problemFrom(response);
    }
    return response.json();
  }

  /** Words for an error: the server's message and its code, or what went wrong on the way. */
  function describeError(error) {
    if (error instanceof ProblemError) {
      return `${error.detail} (code: ${error.code})`;
    }
    return `Cannot reach the server: ${error && error.message ? error.message : error}`;
  }

  /** Build an element; children are nodes or strings (always inserted as text, never HTML). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key in node && typeof value !== "string") node[key] = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** An SVG element with attributes. */
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") node.textContent = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children.flat()) {
      if (child) node.append(child);
    }
    return node;
  }

  function showError(node, message) {
    node.textContent = message;
    node.hidden = !message;
  }

  function fixed(value, digits) {
    return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "–";
  }

  /** "2 h 3 min", "4 min 5 s", "6 s". */
  function duration(seconds) {
    if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "–";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }

  function localTime(epochSeconds) {
    if (typeof epochSeconds !== "number") return "–";
    return new Date(epochSeconds * 1000).toLocaleString();
  }

  /** Below this |ν| (cm⁻¹) a frequency is a numerical zero: shown as 0, neither real nor "i". */
  const ZERO_CM = 0.005;

  /** A frequency for people: imaginary modes as "123.45i", numerical zeros as "0". */
  function wavenumber(mode) {
    if (Math.abs(mode.frequency_cm) < ZERO_CM) return "0";
    const value = Math.abs(mode.frequency_cm).toFixed(2);
    return mode.imaginary ? `${value}i` : value;
  }

  /** The seconds of a Retry-After header (delay or HTTP date), or null. */
  function retryAfterSeconds(header) {
    if (!header) return null;
    const trimmed = header.trim();
    if (/^\d+$/.test(trimmed)) return Number(trimmed);
    const when = Date.parse(trimmed);
    return Number.isNaN(when) ? null : Math.max(0, (when - Date.now()) / 1000);
  }

  /** A random key for Idempotency-Key (works outside secure contexts too). */
  function randomKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // Atoms and modes counted from 0 (the API's mobile list) or from 1 (pw.x, VESTA,
  // Avogadro): the reader's choice, remembered in this browser.
  const ONE_BASED_KEY = "zpe.oneBased";

  function oneBased() {
    try {
      return localStorage.getItem(ONE_BASED_KEY) === "1";
    } catch (_) {
      return false;
    }
  }

  /** An atom or mode index as the reader counts: 0-based (the API's) or 1-based. */
  function shownIndex(index) {
    return String(index + (oneBased() ? 1 : 0));
  }

  /** Wire a checkbox to the choice; ``onChange`` redraws what shows indices. */
  function bindOneBased(checkbox, onChange) {
    checkbox.checked = oneBased();
    checkbox.addEventListener("change", () => {
      try {
        localStorage.setItem(ONE_BASED_KEY, checkbox.checked ? "1" : "0");
      } catch (_) {
        // storage disabled: the choice lasts for this page only
      }
      onChange();
    });
  }

  window.ZPE = {
    shownIndex,
    bindOneBased,
    API,
    EV_TO_KJMOL,
    TERMINAL,
    ProblemError,
    problemFrom,
    api,
    describeError,
    el,
    svg,
    showError,
    fixed,
    duration,
    localTime,
    wavenumber,
    retryAfterSeconds,
    randomKey,
  };
})();
