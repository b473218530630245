/* Job page: poll the status politely (ETag, Retry-After, back-off), then show the result. */
"use strict";

(function () {
  const Z = window.ZPE;
  const { el, svg, fixed, duration, describeError, showError } = Z;

  const jobId = decodeURIComponent(window.location.pathname.split("/").filter(Boolean)[1] || "");
  const base = `/jobs/${encodeURIComponent(jobId)}`;

  const $ = (id) => document.getElementById(id);
  const stateBadge = $("state");
  const stateText = $("state-text");
  const progressBar = $("progress-bar");
  const cancelButton = $("cancel-button");
  const pollNote = $("poll-note");
  const jobError = $("job-error");

  // Polling: never faster than the server's Retry-After; slower while nothing changes.
  const MIN_DELAY_MS = 1000;
  const MAX_QUIET_DELAY_MS = 15000;
  const MAX_ERROR_DELAY_MS = 60000;
  let etag = null;
  let status = null;
  let fetchedAt = 0; // performance.now() when `status` arrived
  let quietPolls = 0; // 304s in a row
  let failures = 0; // failed polls in a row
  let timer = null;
  let finished = false;
  let lastTaskStates = 0;

  $("job-id").textContent = jobId;
  document.title = `ZPE job ${jobId}`;
  $("resubmit-link").href = `/?from=${encodeURIComponent(jobId)}`;
  $("input-link").href = `${Z.API}${base}/files?kind=input`;

  function schedule(ms) {
    clearTimeout(timer);
    timer = finished ? null : setTimeout(poll, ms);
  }

  function quietDelay(retryAfter) {
    const backoff = Math.min(MAX_QUIET_DELAY_MS, MIN_DELAY_MS * 1.5 ** quietPolls);
    return Math.max(retryAfter === null ? 0 : retryAfter * 1000, backoff);
  }

  function errorDelay(retryAfter) {
    const backoff = Math.min(MAX_ERROR_DELAY_MS, 2000 * 2 ** (failures - 1));
    const jitter = backoff * 0.2 * Math.random();
    return Math.max(retryAfter === null ? 0 : retryAfter * 1000, backoff + jitter);
  }

  async function poll() {
    timer = null;
    if (finished) return;
    const headers = { Accept: "application/json" };
    if (etag) headers["If-None-Match"] = etag;
    let response;
    try {
      response = await fetch(Z.API + base, { headers, cache: "no-store" });
    } catch (error) {
      failures += 1;
      const wait = errorDelay(null);
      pollNote.textContent = `Cannot reach the server (${error.message}); trying again in ${duration(wait / 1000)}.`;
      schedule(wait);
      return;
    }
    const retryAfter = Z.retryAfterSeconds(response.headers.get("Retry-After"));
    if (response.status === 304) {
      failures = 0;
      quietPolls += 1;
      const wait = quietDelay(retryAfter);
      pollNote.textContent = `No change; next check in ${duration(wait / 1000)}.`;
      schedule(wait);
      return;
    }
    if (!response.ok) {
      const problem = await Z.problemFrom(response);
      const transient = response.status >= 500 || response.status === 429 || response.status === 408;
      if (!transient) {
        finished = true;
        stateBadge.textContent = "error";
        stateBadge.className = "badge failed";
        stateText.textContent = response.status === 404 ? "No such job." : "The job cannot be shown.";
        showError(jobError, describeError(problem));
        pollNote.textContent = "";
        return;
      }
      failures += 1;
      const wait = errorDelay(retryAfter);
      pollNote.textContent = `${describeError(problem)} — trying again in ${duration(wait / 1000)}.`;
      schedule(wait);
      return;
    }
    failures = 0;
    quietPolls = 0;
    etag = response.headers.get("ETag");
    status = await response.json();
    fetchedAt = performance.now();
    render();
    if (Z.TERMINAL.includes(status.state)) {
      finished = true;
      pollNote.textContent = "";
      refreshTaskStates(true);
      onTerminal();
      return;
    }
    // The status changed: read the task states now, so both counts are of the same moment.
    refreshTaskStates(true);
    const wait = quietDelay(retryAfter);
    pollNote.textContent = `Updates every few seconds (next in ${duration(wait / 1000)}).`;
    schedule(wait);
  }

  /** Tasks by state: a costlier call, so at most every 5 s and once at the end. */
  async function refreshTaskStates(force) {
    const now = performance.now();
    if (!force && now - lastTaskStates < 5000) return;
    lastTaskStates = now;
    try {
      const body = await Z.api(`${base}/tasks`);
      const parts = Object.entries(body.states)
        .sort((a, b) => b[1] - a[1])
        .map(([state, count]) => `${count} ${STATE_NAMES[state] || state}`);
      $("task-states").textContent = parts.join(" · ") || "–";
    } catch (error) {
      $("task-states").textContent = `unavailable (${describeError(error)})`;
    }
  }

  const EV_TO_KCALMOL = Z.EV_TO_KJMOL / 4.184;

  /** The first non-empty line of a message (the rest goes behind a disclosure). */
  function firstLine(text) {
    return (text || "").split("\n").find((line) => line.trim()) || "";
  }

  // A leased task is one a worker is computing: say so in the words of the page.
  const STATE_NAMES = { leased: "running" };

  const STATE_WORDS = {
    queued: "Waiting for a worker to pick up the first task.",
    running: "Computing: each task is one SCF calculation.",
    done: "Finished.",
    failed: "The job failed.",
    cancelled: "The job was cancelled.",
  };

  function render() {
    const s = status;
    stateBadge.textContent = s.state;
    stateBadge.className = `badge ${s.state}`;
    stateText.textContent = STATE_WORDS[s.state] || s.state;
    const { done, total, reused } = s.progress;
    progressBar.max = Math.max(total, 1);
    progressBar.value = done;
    $("progress-text").textContent =
      `${done} / ${total}` + (reused ? ` (${reused} reused from earlier jobs)` : "");
    $("engine").textContent = s.engine;
    $("formula").textContent = s.formula;
    $("job-label").textContent = s.label || "–";
    // No-break spaces: a value never splits from its unit on a narrow screen.
    $("parameters").textContent = `δ = ${s.delta}\u00a0Å, nfree = ${s.nfree}, T = ${s.temperature}\u00a0K`;
    $("job-title").textContent = s.label ? `${s.label} (${s.formula})` : `${s.formula} job`;
    document.title = `${s.label || s.formula} · ${s.state} · ZPE job ${jobId.slice(0, 8)}`;
    $("mobile").textContent =
      `${s.mobile_indices.map(Z.shownIndex).join(", ")} (of ${s.natoms} atoms)`;
    $("created").textContent = Z.localTime(s.created_at);
    cancelButton.hidden = Z.TERMINAL.includes(s.state);
    if (s.error) {
      // The message first, in one line; the engine's output tail behind a disclosure.
      showError(jobError, `${firstLine(s.error.message)} (code: ${s.error.code}, source: ${s.error.source})`);
      const rest = [s.error.message.includes("\n") ? s.error.message : "", s.error.detail || ""]
        .filter(Boolean)
        .join("\n");
      $("error-detail").hidden = !rest;
      $("error-detail-text").textContent = rest;
    }
    tick();
  }

  /** Elapsed time and the estimate of the time left, advanced between polls. */
  function tick() {
    if (!status) return;
    const s = status;
    const running = !Z.TERMINAL.includes(s.state) && s.started_at !== null;
    let elapsed = s.elapsed_seconds;
    if (running && elapsed !== null) elapsed += (performance.now() - fetchedAt) / 1000;
    $("elapsed").textContent = elapsed === null ? "not started yet" : duration(elapsed);
    const { done, total, reused } = s.progress;
    const computed = done - reused;
    let eta = "–";
    if (s.state === "done") eta = "none";
    else if (running && computed > 0 && elapsed) eta = `about ${duration((elapsed / computed) * (total - done))}`;
    else if (!Z.TERMINAL.includes(s.state)) eta = "estimating…";
    $("eta").textContent = eta;
  }

  async function onTerminal() {
    if (status.state !== "done") return;
    try {
      renderResult(await Z.api(`${base}/result`));
    } catch (error) {
      showError(jobError, `The result could not be loaded: ${describeError(error)}`);
    }
  }

  function renderResult(r) {
    // Four decimals in eV: finite differences of pw.x forces carry no more than that.
    $("zpe-ev").textContent = fixed(r.zpe_ev, 4);
    $("zpe-kcalmol").textContent = fixed(r.zpe_ev * EV_TO_KCALMOL, 2);
    $("zpe-ev").dataset.value = String(r.zpe_ev);
    $("zpe-kjmol").textContent = fixed(r.zpe_kjmol ?? r.zpe_ev * Z.EV_TO_KJMOL, 2);
    $("s-vib").textContent = fixed(r.s_vib_jmol_k, 4);
    $("temperature").textContent = String(r.temperature);
    $("mode-selection").textContent = `Mode selection: ${r.mode_selection}.`;
    const rigid = rigidModes(r);
    const imaginary = r.modes.filter((m) => m.imaginary && !rigid.has(m.index));
    if (imaginary.length) {
      $("imaginary-note").hidden = false;
      $("imaginary-note").textContent =
        `${imaginary.length} imaginary mode${imaginary.length === 1 ? "" : "s"} ` +
        `(${imaginary.map(Z.wavenumber).join(", ")} cm⁻¹), not counted in the ZPE: ` +
        "the structure may not be at a minimum (relax it, or check δ).";
    }
    renderWarnings(r);
    // The other frequency set next to the one used (free molecules: raw and Eckart-projected).
    const usedProjected = r.frequency_set === "projected";
    const other = usedProjected ? r.freqs_cm : r.projected_freqs_cm;
    const hasOther = Array.isArray(other) && other.length === r.modes.length;
    $("other-set-col").hidden = !hasOther;
    $("other-set-col").textContent = usedProjected ? "Raw, ASE (cm⁻¹)" : "Projected, Eckart (cm⁻¹)";
    $("frequency-set").textContent = r.frequency_set_note
      ? `Frequency set: ${r.frequency_set} — ${r.frequency_set_note}.`
      : "";
    $("modes-table").querySelector("tbody").replaceChildren(
      ...r.modes.map((m) => {
        const isRigid = rigid.has(m.index);
        const rigidWords = m.imaginary ? "excluded: translation/rotation (imaginary)" : "excluded: translation/rotation";
        const note = isRigid
          ? el("span", { class: "flag excluded" }, rigidWords)
          : m.imaginary
            ? el("span", { class: "flag imaginary" }, "imaginary — not counted")
            : m.counted
              ? el("span", { class: "flag counted" }, "✓ counted")
              : el("span", { class: "flag excluded" }, "not counted");
        const kind = isRigid ? "excluded" : m.imaginary ? "imaginary" : m.counted ? "counted" : "excluded";
        return el(
          "tr",
          { class: `mode ${kind}`, "data-imaginary": String(m.imaginary), "data-counted": String(m.counted) },
          el("td", { class: "mode-index", "data-index": String(m.index) }, Z.shownIndex(m.index)),
          el("td", { class: "num" }, Z.wavenumber(m)),
          // An imaginary mode has no quantum hν: show none rather than 0.000.
          el("td", { class: "num" }, m.imaginary ? "–" : fixed(m.energy_ev * 1000, 3)),
          hasOther
            ? el("td", { class: "num other-set" }, Z.wavenumber({ frequency_cm: other[m.index], imaginary: other[m.index] < 0 }))
            : null,
          el("td", {}, note)
        );
      })
    );
    drawSpectrum(r.modes, rigid);
    setUpModeViewer(r);
    const files = `${Z.API}${base}/files?kind=`;
    $("download-summary").href = `${files}summary`;
    $("download-csv").href = `${files}freqs`;
    $("download-json").href = `${files}result`;
    $("download-thermo").href = `${files}thermo`;
    $("download-vibrations").href = `${files}vibrations`;
    $("download-modes").href = `${files}modes`;
    $("result").hidden = false;
    if (r.thermochemistry) renderThermo(r.thermochemistry);
  }

  /** The result's warnings in words (imaginary modes beyond the threshold, frozen atoms…). */
  function renderWarnings(r) {
    const list = $("result-warnings");
    const warnings = Array.isArray(r.warnings) ? r.warnings : [];
    list.replaceChildren(...warnings.map((w) => el("li", { class: "result-warning" }, w)));
    list.hidden = warnings.length === 0;
    // The older, shorter note would repeat the first warning.
    if (warnings.some((w) => w.includes("imaginary"))) $("imaginary-note").hidden = true;
  }

  const THERMO_ROWS = {
    ideal_gas: [
      ["E_elec (reference SCF)", "potential_energy_ev", "eV", 6],
      ["ZPE", "zpe_ev", "eV", 6],
      ["E_elec + ZPE", "potential_energy_plus_zpe_ev", "eV", 6],
      ["Enthalpy H", "enthalpy_ev", "eV", 6],
      ["Entropy S", "entropy_ev_per_k", "eV/K", 8],
      ["Gibbs energy G", "gibbs_energy_ev", "eV", 6],
    ],
    harmonic: [
      ["E_elec (reference SCF)", "potential_energy_ev", "eV", 6],
      ["ZPE", "zpe_ev", "eV", 6],
      ["E_elec + ZPE", "potential_energy_plus_zpe_ev", "eV", 6],
      ["Internal energy U", "internal_energy_ev", "eV", 6],
      ["Entropy S", "entropy_ev_per_k", "eV/K", 8],
      ["Helmholtz energy F", "helmholtz_energy_ev", "eV", 6],
    ],
  };

  /** The thermochemistry table, then the G(T) or F(T) plot from thermo.csv. */
  async function renderThermo(t) {
    const gas = t.model === "ideal_gas";
    $("thermo-model").textContent = gas
      ? `Ideal gas (ASE IdealGasThermo) at ${t.temperature} K and ${t.pressure} Pa: ${t.geometry}, ` +
        `point group ${t.point_group}, rotational symmetry number ${t.symmetry_number} (${t.symmetry_number_source}).`
      : `Harmonic (ASE HarmonicThermo) at ${t.temperature} K: every counted mode is a vibration (adsorbate or fixed atoms).`;
    const rows = (THERMO_ROWS[t.model] || []).map(([label, key, unit, digits]) =>
      el("tr", { "data-key": key },
        el("th", { scope: "row" }, label),
        el("td", { class: "num" }, `${fixed(t[key], digits)}\u00a0${unit}`))
    );
    $("thermo-table").querySelector("tbody").replaceChildren(...rows);
    $("thermo-plot-what").textContent = gas ? "The Gibbs energy G(T)" : "The Helmholtz energy F(T)";
    $("thermo").hidden = false;
    try {
      const response = await fetch(`${Z.API}${base}/files?kind=thermo`, { cache: "no-store" });
      if (!response.ok) throw await Z.problemFrom(response);
      drawThermo(parseCsv(await response.text()), gas ? "gibbs_energy_ev" : "helmholtz_energy_ev", t);
    } catch (error) {
      $("thermo-plot-what").textContent = `The plot could not be drawn: ${describeError(error)}.`;
    }
  }

  function parseCsv(text) {
    const [head, ...lines] = text.trim().split(/\r?\n/);
    const names = head.split(",");
    return lines.map((line) => {
      const cells = line.split(",").map(Number);
      return Object.fromEntries(names.map((n, i) => [n, cells[i]]));
    });
  }

  // The plots are drawn in CSS pixels of their box (redrawn when it changes size), so
  // their text keeps its size on a phone instead of shrinking with a fixed viewBox.
  const TICK_SPACING_PX = 64; // between tick labels along x: "1000" is about 30 px wide
  const plots = new Map(); // plot id -> () => redraw

  function drawWhenSized(id, draw) {
    const plot = $(id);
    plots.set(id, draw);
    draw(plot);
    if (window.ResizeObserver && !plot.dataset.observed) {
      plot.dataset.observed = "1";
      let width = null;
      new ResizeObserver(() => {
        const now = Math.round(plot.getBoundingClientRect().width);
        if (now > 0 && now !== width) {
          width = now;
          plots.get(id)(plot);
        }
      }).observe(plot);
    }
  }

  /** The width to draw a plot at: its box in CSS pixels (720 while it is not laid out). */
  function plotWidth(plot) {
    const width = Math.round(plot.getBoundingClientRect().width);
    return width > 0 ? Math.max(240, width) : 720;
  }

  /** A line plot of one column of thermo.csv against T, drawn by hand in SVG. */
  function drawThermo(rows, column, t) {
    drawWhenSized("thermo-plot", (plot) => drawThermoAt(plot, rows, column, t));
  }

  function drawThermoAt(plot, rows, column, t) {
    const W = plotWidth(plot);
    const H = 250;
    const right = 16;
    const top = 14;
    const bottom = H - 46;
    const points = rows.filter((r) => Number.isFinite(r.temperature_k) && Number.isFinite(r[column]));
    if (points.length < 2) return;
    const ts = points.map((r) => r.temperature_k);
    const ys = points.map((r) => r[column]);
    const [tmin, tmax] = [Math.min(...ts), Math.max(...ts)];
    const [ymin, ymax] = [Math.min(...ys), Math.max(...ys)];
    const span = ymax - ymin || 1;
    const yStep = niceStep(span, Math.max(3, Math.floor((bottom - top) / 34)));
    const yDigits = Math.max(0, -Math.floor(Math.log10(yStep)));
    const yTicks = [];
    for (let v = Math.ceil(ymin / yStep) * yStep; v <= ymax + 1e-12; v += yStep) yTicks.push(v);
    const yLabels = yTicks.map((v) => v.toFixed(yDigits));
    // Room for the longest y label (about 7 px a character at 12 px) and the axis title.
    const left = 36 + 7 * Math.max(...yLabels.map((l) => l.length));
    const x = (v) => left + ((v - tmin) / (tmax - tmin)) * (W - left - right);
    const y = (v) => bottom - ((v - ymin) / span) * (bottom - top);
    const parts = [
      svg("line", { class: "axis", x1: left, x2: W - right, y1: bottom, y2: bottom }),
      svg("line", { class: "axis", x1: left, x2: left, y1: top, y2: bottom }),
    ];
    const tStep = niceStep(tmax - tmin, Math.max(2, Math.floor((W - left - right) / TICK_SPACING_PX)));
    for (let v = Math.ceil(tmin / tStep) * tStep; v <= tmax + 1e-9; v += tStep) {
      parts.push(svg("line", { class: "tick", x1: x(v), x2: x(v), y1: bottom, y2: bottom + 5 }));
      parts.push(svg("text", { class: "tick-label", x: x(v), y: bottom + 19, "text-anchor": "middle", text: String(Math.round(v)) }));
    }
    yTicks.forEach((v, i) => {
      parts.push(svg("line", { class: "tick", x1: left - 5, x2: left, y1: y(v), y2: y(v) }));
      parts.push(svg("text", { class: "tick-label", x: left - 8, y: y(v) + 4, "text-anchor": "end", text: yLabels[i] }));
    });
    parts.push(svg("text", { class: "axis-title", x: (left + W - right) / 2, y: H - 8, "text-anchor": "middle", text: "temperature (K)" }));
    parts.push(svg("text", { class: "axis-title", x: 14, y: (top + bottom) / 2, "text-anchor": "middle", transform: `rotate(-90 14 ${(top + bottom) / 2})`, text: `${column === "gibbs_energy_ev" ? "G" : "F"} (eV)` }));
    const path = points.map((r, i) => `${i ? "L" : "M"}${x(r.temperature_k).toFixed(2)},${y(r[column]).toFixed(2)}`).join(" ");
    parts.push(svg("path", { class: "curve", d: path }));
    const here = points.find((r) => Math.abs(r.temperature_k - t.temperature) < 1e-9);
    if (here) {
      parts.push(
        svg("circle", { class: "here", cx: x(here.temperature_k), cy: y(here[column]), r: 4 },
          svg("title", { text: `${t.temperature} K: ${fixed(here[column], 6)} eV` }))
      );
    }
    plot.setAttribute("viewBox", `0 0 ${W} ${H}`);
    plot.dataset.points = String(points.length);
    plot.replaceChildren(...parts);
  }

  /** Modes excluded as translations/rotations: the result says so, or the lowest |ν| ones. */
  function rigidModes(r) {
    if (r.modes.every((m) => typeof m.excluded === "boolean")) {
      return new Set(r.modes.filter((m) => m.excluded).map((m) => m.index));
    }
    const byMagnitude = [...r.modes].sort(
      (a, b) => Math.abs(a.frequency_cm) - Math.abs(b.frequency_cm) || a.index - b.index
    );
    return new Set(byMagnitude.slice(0, r.excluded_modes || 0).map((m) => m.index));
  }

  /** A round step (1, 2 or 5 times a power of ten) that cuts ``span`` into at most ``count`` parts. */
  function niceStep(span, count) {
    const raw = span / count;
    const power = 10 ** Math.floor(Math.log10(raw));
    const unit = [1, 2, 5, 10].find((m) => m * power >= raw) || 10;
    return unit * power;
  }

  /** ``value`` rounded down to two significant digits (a tick label that stays inside the axis). */
  function roundDown(value) {
    const power = 10 ** (Math.floor(Math.log10(value)) - 1);
    return Math.floor(value / power) * power;
  }

  /** A stick spectrum: one line per mode, drawn by hand in SVG. */
  function drawSpectrum(modes, rigid) {
    drawWhenSized("spectrum", (plot) => drawSpectrumAt(plot, modes, rigid));
  }

  function drawSpectrumAt(plot, modes, rigid) {
    const W = plotWidth(plot);
    const H = 220;
    const left = 18;
    const right = 18;
    const top = 18;
    const baseline = H - 46;
    const width = W - left - right;
    const real = modes.filter((m) => !m.imaginary);
    const imag = modes.filter((m) => m.imaginary);
    const maxReal = Math.max(100, ...real.map((m) => m.frequency_cm));
    const maxImag = imag.length ? Math.max(...imag.map((m) => Math.abs(m.frequency_cm))) : 0;
    const step = niceStep(maxReal * 1.04, Math.max(2, Math.floor(width / TICK_SPACING_PX)));
    const xmax = Math.ceil((maxReal * 1.04) / step) * step;
    // The imaginary side gets at least NEGATIVE_PX, so its tick label clears the one at 0.
    const NEGATIVE_PX = 46;
    const xmin = imag.length ? -Math.max(maxImag * 1.04, (xmax * NEGATIVE_PX) / (width - NEGATIVE_PX)) : 0;
    const x = (nu) => left + ((nu - xmin) / (xmax - xmin)) * width;
    const label = (t) => (t < 0 ? `${Math.abs(Math.round(t))}i` : String(Math.round(t)));
    const ticks = [];
    for (let t = Math.ceil(xmin / step) * step; t <= xmax + 1e-9; t += step) ticks.push(t);
    if (imag.length && ticks[0] >= 0) {
      // The imaginary side is narrower than one step: still give it a labelled tick.
      ticks.unshift(-xmin >= 10 ? -roundDown(-xmin) : -Math.floor(-xmin));
    }
    const parts = [svg("line", { class: "axis", x1: left, x2: W - right, y1: baseline, y2: baseline })];
    for (const t of ticks) {
      parts.push(svg("line", { class: "tick", x1: x(t), x2: x(t), y1: baseline, y2: baseline + 5 }));
      parts.push(svg("text", { class: t < 0 ? "tick-label neg" : "tick-label", x: x(t), y: baseline + 19, "text-anchor": "middle", text: label(t) }));
    }
    parts.push(svg("text", { class: "axis-title", x: W / 2, y: H - 6, "text-anchor": "middle", text: "wavenumber (cm⁻¹)" }));
    // Degenerate modes (within 1 cm⁻¹ of each other) share a stick: say how many.
    const groups = [];
    for (const m of real.filter((r) => r.counted).sort((a, b) => a.frequency_cm - b.frequency_cm)) {
      const last = groups[groups.length - 1];
      if (last && m.frequency_cm - last[last.length - 1].frequency_cm < 1) last.push(m);
      else groups.push([m]);
    }
    for (const group of groups.filter((g) => g.length > 1)) {
      const nu = group[0].frequency_cm;
      parts.push(svg("text", { class: "degeneracy", x: x(nu), y: Math.max(10, top - 3), "text-anchor": "middle", text: `×${group.length}` }));
    }
    const tall = top;
    const short = top + (baseline - top) / 2;
    for (const m of real) {
      const cls = m.counted ? "stick counted" : "stick excluded";
      parts.push(
        svg("line", { class: cls, x1: x(m.frequency_cm), x2: x(m.frequency_cm), y1: baseline, y2: m.counted ? tall : short },
          svg("title", { text: `mode ${Z.shownIndex(m.index)}: ${Z.wavenumber(m)} cm⁻¹ (${m.counted ? "counted" : "excluded"})` }))
      );
    }
    for (const m of imag) {
      const pos = -Math.abs(m.frequency_cm);
      parts.push(
        svg("line", { class: rigid.has(m.index) ? "imag-stick excluded" : "imag-stick", x1: x(pos), x2: x(pos), y1: baseline, y2: short },
          svg("title", { text: `mode ${Z.shownIndex(m.index)}: ${Z.wavenumber(m)} cm⁻¹ (imaginary, not counted)` }))
      );
    }
    plot.setAttribute("viewBox", `0 0 ${W} ${H}`);
    plot.replaceChildren(...parts);
  }

  /** The structure on a canvas; a click on a frequency row animates that mode. */
  function setUpModeViewer(r) {
    const canvas = $("mode-view");
    const usable = Array.isArray(r.positions) && r.modes.some((m) => Array.isArray(m.displacement));
    canvas.closest("figure").hidden = !usable;
    if (!usable) return;
    const fixedSet = new Set(r.fixed_indices || []);
    const viewer = new Z.StructureViewer(canvas);
    viewer.setStructure(
      r.symbols.map((element, i) => ({ element, position: r.positions[i], fixed: fixedSet.has(i) })),
      r.cell
    );
    viewer.setMobile(r.mobile_indices);
    const rows = $("modes-table").querySelectorAll("tbody tr");
    r.modes.forEach((m, k) => {
      const row = rows[k];
      if (!row || !Array.isArray(m.displacement)) return;
      row.classList.add("animatable");
      row.tabIndex = 0;
      row.title = "Animate this mode";
      const play = () => {
        // The mode moves the mobile atoms only; every other atom stays put.
        const vectors = r.symbols.map(() => [0, 0, 0]);
        r.mobile_indices.forEach((atom, j) => {
          vectors[atom] = m.displacement[j];
        });
        for (const other of rows) other.classList.remove("playing");
        row.classList.add("playing");
        viewer.animate(vectors);
        $("mode-caption").textContent = `Mode ${Z.shownIndex(m.index)}: ${Z.wavenumber(m)} cm⁻¹` +
          (m.imaginary ? " (imaginary: the motion that lowers the energy)" : "") + ".";
      };
      row.addEventListener("click", play);
      row.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          play();
        }
      });
    });
  }

  Z.bindOneBased($("one-based"), () => {
    for (const cell of document.querySelectorAll("td.mode-index")) {
      cell.textContent = Z.shownIndex(Number(cell.dataset.index));
    }
    if (status) render();
  });

  cancelButton.addEventListener("click", async () => {
    const ok = window.confirm(
      "Cancel this job? SCFs already finished are kept: submitting the same input again " +
        "reuses them instead of computing them again."
    );
    if (!ok) return;
    cancelButton.disabled = true;
    try {
      await Z.api(`${base}/cancel`, { method: "POST" });
      showError(jobError, "");
    } catch (error) {
      showError(jobError, `Could not cancel: ${describeError(error)}`);
    } finally {
      cancelButton.disabled = false;
    }
    etag = null;
    schedule(0);
  });

  setInterval(() => {
    if (!finished) tick();
  }, 1000);

  poll();
})();
