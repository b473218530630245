/* Submit page: parse the input as it is typed, show the structure, pick mobile atoms, submit. */
"use strict";

(function () {
  const { api, describeError, el, showError, fixed } = window.ZPE;

  const form = document.getElementById("submit-form");
  const textarea = document.getElementById("input-text");
  const fileInput = document.getElementById("input-file");
  const parseStatus = document.getElementById("parse-status");
  const parseError = document.getElementById("parse-error");
  const structure = document.getElementById("structure");
  const facts = document.getElementById("structure-facts");
  const warnings = document.getElementById("warnings");
  const atomsBody = document.querySelector("#atoms-table tbody");
  const mobileSummary = document.getElementById("mobile-summary");
  const deltaInput = document.getElementById("delta");
  const temperatureInput = document.getElementById("temperature");
  const nfreeSelect = document.getElementById("nfree");
  const symmetrySelect = document.getElementById("symmetry");
  const engineSelect = document.getElementById("engine");
  const engineNote = document.getElementById("engine-note");
  const labelInput = document.getElementById("label");
  const selectionNote = document.getElementById("selection-note");
  const viewer = new window.ZPE.StructureViewer(document.getElementById("structure-view"), {
    onPick: toggleAtom,
  });
  const FORM_KEY = "zpe.submit.form"; // the form as last edited, so Back restores it
  const submitButton = document.getElementById("submit-button");
  const submitHint = document.getElementById("submit-hint");
  const submitError = document.getElementById("submit-error");

  let config = null;
  let preview = null; // the last successful parse
  let parsedText = null; // the text it was made from
  let parseSeq = 0;
  let parseTimer = null;
  let submitting = false;
  let lastAttempt = { body: null, key: null }; // same body -> same Idempotency-Key
  // The user's ticks, by atom index, with the element they were made for: kept across
  // edits of the text for atoms that still exist (same index, same element, not fixed).
  let choice = null; // Map index -> {element, mobile}, or null before the first parse
  let pendingMobile = null; // the mobile set of a job being edited, applied at the first parse
  // The server's view of one selection: its SCF counts and its warnings (some, such as a
  // partly frozen free molecule, depend on the ticks): { key, tasks, symmetric, spacegroup, warnings }
  let counts = null;
  let countKeyPending = null;
  let countTimer = null;

  // ---------------------------------------------------------------- configuration

  async function loadConfig() {
    try {
      config = await api("/config");
    } catch (error) {
      showError(submitError, `Could not load the server's options: ${describeError(error)}`);
      return;
    }
    // The server's defaults, except where the user has already typed or chosen a value.
    const defaults = [
      [deltaInput, config.defaults.delta],
      [temperatureInput, config.defaults.temperature],
      [nfreeSelect, config.defaults.nfree],
    ];
    for (const [field, value] of defaults) if (!field.dataset.edited) field.value = String(value);
    engineSelect.replaceChildren(
      ...config.engines.map((name) =>
        el("option", { value: name, selected: name === config.default_engine }, engineLabel(name))
      )
    );
    engineSelect.disabled = config.engines.length < 2;
    engineNote.textContent =
      config.engines.length < 2
        ? `This server computes with the ${config.default_engine} engine only.`
        : "qe runs pw.x; mock is an analytic test potential that answers in milliseconds.";
    updateSummary();
  }

  function engineLabel(name) {
    return { qe: "qe (Quantum ESPRESSO pw.x)", mock: "mock (analytic test potential)" }[name] || name;
  }

  // ---------------------------------------------------------------- parsing

  function scheduleParse(delay) {
    clearTimeout(parseTimer);
    parseTimer = setTimeout(parseNow, delay);
  }

  /** Parse the current text; resolves to true when it is valid. */
  async function parseNow() {
    clearTimeout(parseTimer);
    const text = textarea.value;
    const seq = ++parseSeq;
    if (!text.trim()) {
      preview = null;
      parsedText = null;
      structure.hidden = true;
      showError(parseError, "");
      parseStatus.textContent = "";
      updateSummary();
      return false;
    }
    const size = new Blob([text]).size;
    const limit = config ? config.limits.max_input_bytes : Infinity;
    if (size > limit) {
      preview = null;
      parsedText = null;
      structure.hidden = true;
      parseStatus.textContent = "";
      showError(parseError, `The input is ${megabytes(size)}; inputs are limited to ${megabytes(limit)}.`);
      updateSummary();
      return false;
    }
    parseStatus.textContent = "Reading the input…";
    try {
      const result = await api("/parse", { method: "POST", json: parseBody(text) });
      if (seq !== parseSeq) return textarea.value === parsedText && preview !== null;
      preview = result;
      parsedText = text;
      showError(parseError, "");
      applyChoice(result);
      parseStatus.textContent = `Read ${result.natoms} atom${result.natoms === 1 ? "" : "s"} (${result.formula}).`;
      renderStructure(result);
      return true;
    } catch (error) {
      if (seq !== parseSeq) return false;
      preview = null;
      parsedText = null;
      structure.hidden = true;
      parseStatus.textContent = "";
      showError(parseError, `The input cannot be used: ${describeError(error)}`);
      return false;
    } finally {
      if (seq === parseSeq) updateSummary();
    }
  }

  /** What /parse is asked: the text and the options that warnings depend on (when valid). */
  function parseBody(text) {
    const body = { input_text: text, nfree: Number(nfreeSelect.value) };
    if (engineSelect.value) body.engine = engineSelect.value;
    const delta = Number(deltaInput.value);
    const dl = config ? config.limits.delta : { gt: 0, le: 0.1 };
    if (deltaInput.value && delta > dl.gt && delta <= dl.le) body.delta = delta;
    return body;
  }

  function renderStructure(p) {
    const cell = p.cell.map((row) => row.map((x) => fixed(x, 4)).join("  ")).join("\n");
    const kpoints =
      p.kpoints.mode === "gamma"
        ? "Γ point only"
        : `automatic ${p.kpoints.grid.join(" × ")}, shift ${p.kpoints.shift.join(" ")}`;
    const species = p.species
      .map((s) => `${s.label} (mass ${s.mass}, ${s.pseudopotential})`)
      .join("; ");
    const cutoffs =
      p.ecutwfc === null ? "–" : `${p.ecutwfc} Ry` + (p.ecutrho === null ? "" : ` / ${p.ecutrho} Ry`);
    const rows = [
      ["Formula", p.formula],
      ["Atoms", String(p.natoms)],
      ["Cell (Å)", el("pre", { class: "cell", text: cell })],
      ["k-points", kpoints],
      ["Species", species],
      ["ecutwfc / ecutrho", cutoffs],
    ];
    facts.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    showWarnings(p.warnings);

    atomsBody.replaceChildren(
      ...p.atoms.map((atom) => {
        const box = el("input", {
          type: "checkbox",
          class: "mobile",
          "data-index": String(atom.index),
          "data-element": atom.element,
          "aria-label": `atom ${atom.index} (${atom.label}) is mobile`,
          checked: atom.mobile,
          disabled: atom.fixed,
          title: atom.fixed ? "fixed in the input (if_pos 0 0 0): cannot be displaced" : null,
        });
        box.addEventListener("change", () => {
          rememberChoice();
          updateSummary();
        });
        const fixedText = atom.fixed ? "fixed" : atom.partially_fixed ? "partly fixed" : "";
        return el(
          "tr",
          { class: atom.fixed ? "atom fixed" : "atom", "data-index": String(atom.index) },
          el("td", { class: "atom-index" }, window.ZPE.shownIndex(atom.index)),
          el("td", {}, box),
          el("td", {}, atom.label === atom.element ? atom.label : `${atom.label} (${atom.element})`),
          ...atom.position.map((x) => el("td", { class: "num" }, fixed(x, 5))),
          el("td", { class: "fixed-flag" }, fixedText)
        );
      })
    );
    structure.hidden = false;
    viewer.setStructure(p.atoms, p.cell);
    rememberChoice();
  }

  /** Tick the atoms as the user chose them before, where that still makes sense; say when not. */
  function applyChoice(p) {
    if (pendingMobile !== null) {
      choice = new Map(
        p.atoms.map((a) => [a.index, { element: a.element, mobile: pendingMobile.has(a.index) }])
      );
      pendingMobile = null;
    }
    const lost = [];
    if (choice !== null) {
      for (const atom of p.atoms) {
        const before = choice.get(atom.index);
        if (!before) continue;
        if (before.element !== atom.element || atom.fixed) {
          if (before.mobile) lost.push(atom.index);
          continue;
        }
        atom.mobile = before.mobile;
      }
      for (const [index, before] of choice) {
        if (index >= p.natoms && before.mobile) lost.push(index);
      }
    } else {
      for (const atom of p.atoms) atom.mobile = atom.mobile_default;
    }
    selectionNote.textContent = lost.length
      ? `Your selection changed: atom${lost.length === 1 ? "" : "s"} ${lost.join(", ")} ` +
        "no longer exist, are fixed or are another element now. Check the ticks below."
      : "";
    selectionNote.hidden = !lost.length;
  }

  function rememberChoice() {
    if (!preview) return;
    choice = new Map(
      Array.from(atomsBody.querySelectorAll("input.mobile"), (box) => [
        Number(box.dataset.index),
        { element: box.dataset.element, mobile: box.checked },
      ])
    );
  }

  function toggleAtom(index) {
    const box = atomsBody.querySelector(`input.mobile[data-index="${index}"]`);
    if (!box || box.disabled) return;
    box.checked = !box.checked;
    rememberChoice();
    updateSummary();
  }

  function selectedMobile() {
    return Array.from(atomsBody.querySelectorAll("input.mobile:checked"), (box) =>
      Number(box.dataset.index)
    );
  }

  /** The parse warnings, one item per code; redrawn only when they change. */
  function showWarnings(list) {
    const shown = JSON.stringify(list.map((w) => [w.code, w.message]));
    if (warnings.dataset.shown === shown) return;
    warnings.dataset.shown = shown;
    warnings.replaceChildren(...list.map((w) => el("li", { "data-code": w.code }, w.message)));
  }

  /** The request a selection is checked with: the parsed text, the options, the ticks. */
  function selectionBody() {
    return { ...parseBody(parsedText), mobile: selectedMobile(), symmetry: symmetrySelect.value };
  }

  /** What the server's view of the selection depends on. */
  function countKey() {
    return JSON.stringify(selectionBody());
  }

  /** The server's view of the current selection, or null while it is asked (the plan is the server's). */
  function selectionView() {
    const key = countKey();
    if (counts && counts.key === key) return counts;
    if (countKeyPending !== key) {
      countKeyPending = key;
      clearTimeout(countTimer);
      countTimer = setTimeout(() => fetchCounts(key), 150);
    }
    return null;
  }

  /** Ask the server what the selection costs with symmetry and what it warns about. */
  async function fetchCounts(key) {
    try {
      const result = await api("/parse", { method: "POST", json: selectionBody() });
      if (key !== countKey()) return;
      counts = {
        key,
        tasks: result.tasks,
        symmetric: result.tasks_symmetric,
        spacegroup: result.spacegroup,
        warnings: result.warnings,
      };
    } catch (error) {
      if (key !== countKey()) return;
      // The selection itself is reported by formProblem(); remembered so it is not asked again.
      counts = { key, tasks: null, symmetric: null, spacegroup: null, warnings: null };
    } finally {
      if (countKeyPending === key) countKeyPending = null;
    }
    updateSummary();
  }

  function symmetryText(tasks, view) {
    if (symmetrySelect.value === "off") return " (symmetry off).";
    if (!view || view.symmetric === null) return ".";
    const group = view.spacegroup ? `, ${view.spacegroup}` : "";
    return view.symmetric === tasks
      ? ` (symmetry saves none${group}).`
      : ` without symmetry, ${view.symmetric} with it${group}.`;
  }

  /** Count the selection, show how many SCF tasks it costs and whether it can be submitted. */
  function updateSummary() {
    const problem = formProblem();
    submitButton.disabled = submitting || problem !== null;
    saveForm();
    if (!preview) {
      mobileSummary.textContent = "";
      submitHint.textContent = problem || "";
      return;
    }
    const mobile = selectedMobile();
    viewer.setMobile(mobile);
    const nfree = Number(nfreeSelect.value);
    const tasks = mobile.length ? 1 + 3 * nfree * mobile.length : 0;
    const free = mobile.length === preview.natoms && preview.atoms.every((a) => !a.fixed && !a.partially_fixed);
    const view = mobile.length ? selectionView() : null;
    if (view && view.warnings) showWarnings(view.warnings);
    mobileSummary.textContent =
      `${mobile.length} mobile atom${mobile.length === 1 ? "" : "s"} → ${tasks} SCF calculations` +
      (mobile.length ? symmetryText(tasks, view) : ".") +
      " " +
      (free
        ? "Free molecule: the translations and rotations are left out of the ZPE."
        : "Every real mode of the mobile atoms counts in the ZPE.");
    submitHint.textContent = problem || "";
  }

  /** Mark the option fields that are out of bounds on the fields themselves. */
  function markInvalid() {
    const dl = config ? config.limits.delta : { gt: 0, le: 0.1 };
    const tl = config ? config.limits.temperature : { gt: 0, le: 5000 };
    const delta = Number(deltaInput.value);
    const t = Number(temperatureInput.value);
    deltaInput.setAttribute("aria-invalid", String(!(deltaInput.value && delta > dl.gt && delta <= dl.le)));
    temperatureInput.setAttribute("aria-invalid", String(!(temperatureInput.value && t > tl.gt && t <= tl.le)));
  }

  /** Why the form cannot be submitted now, or null. */
  function formProblem() {
    markInvalid();
    if (!textarea.value.trim()) return "Paste an input to begin.";
    if (!preview) return "Fix the input first (see the message above).";
    const mobile = selectedMobile();
    if (mobile.length === 0) return "Choose at least one mobile atom.";
    const max = config ? config.limits.max_mobile_atoms : Infinity;
    if (mobile.length > max) return `At most ${max} atoms can be mobile; ${mobile.length} are selected.`;
    const delta = Number(deltaInput.value);
    const dl = config ? config.limits.delta : { gt: 0, le: 0.1 };
    if (!deltaInput.value || !(delta > dl.gt && delta <= dl.le)) {
      return `The displacement δ must be more than ${dl.gt} Å and at most ${dl.le} Å.`;
    }
    const t = Number(temperatureInput.value);
    const tl = config ? config.limits.temperature : { gt: 0, le: 5000 };
    if (!temperatureInput.value || !(t > tl.gt && t <= tl.le)) {
      return `The temperature must be more than ${tl.gt} K and at most ${tl.le} K.`;
    }
    return null;
  }

  // ---------------------------------------------------------------- submission

  async function submit(event) {
    event.preventDefault();
    if (submitting) return;
    showError(submitError, "");
    // The text may have changed since the last parse: read it again before anything is sent.
    if (!preview || textarea.value !== parsedText) {
      const ok = await parseNow();
      if (!ok) {
        showError(submitError, "Nothing was submitted: the input has a problem (see above).");
        return;
      }
    }
    const problem = formProblem();
    if (problem) {
      showError(submitError, `Nothing was submitted: ${problem}`);
      return;
    }
    const body = {
      input_text: parsedText,
      mobile: selectedMobile(),
      delta: Number(deltaInput.value),
      temperature: Number(temperatureInput.value),
      nfree: Number(nfreeSelect.value),
      symmetry: symmetrySelect.value,
    };
    if (engineSelect.value) body.engine = engineSelect.value;
    if (labelInput.value.trim()) body.label = labelInput.value.trim();
    const bodyKey = JSON.stringify(body);
    if (lastAttempt.body !== bodyKey) lastAttempt = { body: bodyKey, key: window.ZPE.randomKey() };

    submitting = true;
    submitButton.disabled = true;
    submitButton.textContent = "Submitting…";
    try {
      const created = await api("/jobs", {
        method: "POST",
        json: body,
        headers: { "Idempotency-Key": lastAttempt.key },
      });
      window.location.assign(`/jobs/${encodeURIComponent(created.job_id)}`);
    } catch (error) {
      showError(submitError, `The job was not created: ${describeError(error)}`);
      submitting = false;
      submitButton.textContent = "Start calculation";
      updateSummary();
    }
  }

  // ---------------------------------------------------------------- wiring

  textarea.addEventListener("input", () => {
    preview = null;
    updateSummary();
    scheduleParse(300);
  });
  fileInput.addEventListener("change", async () => {
    const file = fileInput.files && fileInput.files[0];
    if (!file) return;
    const limit = config ? config.limits.max_input_bytes : Infinity;
    if (file.size > limit) {
      // Leave nothing behind that a click could submit: the old text is not what was chosen.
      textarea.value = "";
      preview = null;
      parsedText = null;
      structure.hidden = true;
      parseStatus.textContent = "";
      fileInput.value = "";
      showError(parseError, `${file.name} is ${megabytes(file.size)}; inputs are limited to ${megabytes(limit)}.`);
      updateSummary();
      return;
    }
    textarea.value = await file.text();
    parseNow();
  });
  document.getElementById("select-default").addEventListener("click", () => {
    for (const box of atomsBody.querySelectorAll("input.mobile")) box.checked = !box.disabled;
    rememberChoice();
    updateSummary();
  });
  document.getElementById("select-none").addEventListener("click", () => {
    for (const box of atomsBody.querySelectorAll("input.mobile")) box.checked = false;
    rememberChoice();
    updateSummary();
  });
  window.ZPE.bindOneBased(document.getElementById("one-based"), () => {
    for (const cell of atomsBody.querySelectorAll("td.atom-index")) {
      cell.textContent = window.ZPE.shownIndex(Number(cell.parentElement.dataset.index));
    }
  });
  for (const input of [deltaInput, temperatureInput, nfreeSelect, symmetrySelect, engineSelect, labelInput]) {
    input.addEventListener("input", updateSummary);
    input.addEventListener("change", updateSummary);
  }
  for (const field of [deltaInput, temperatureInput, nfreeSelect]) {
    for (const kind of ["input", "change"]) {
      field.addEventListener(kind, () => {
        field.dataset.edited = "1";
      });
    }
  }
  // The warnings depend on these (a small δ, a loose threshold for pw.x): read again.
  for (const input of [deltaInput, nfreeSelect, engineSelect]) {
    input.addEventListener("change", () => {
      if (textarea.value.trim()) scheduleParse(300);
    });
  }
  form.addEventListener("submit", submit);

  // ---------------------------------------------------------------- the form survives Back

  function megabytes(bytes) {
    return `${(bytes / (1024 * 1024)).toFixed(bytes < 1024 * 1024 ? 2 : 1)} MB`;
  }

  let formReady = false; // nothing is saved before the saved form is restored

  function saveForm() {
    if (!formReady) return;
    const state = {
      text: textarea.value,
      delta: deltaInput.value,
      temperature: temperatureInput.value,
      nfree: nfreeSelect.value,
      symmetry: symmetrySelect.value,
      engine: engineSelect.value,
      label: labelInput.value,
      choice: choice ? Array.from(choice.entries()) : null,
    };
    try {
      sessionStorage.setItem(FORM_KEY, JSON.stringify(state));
    } catch (_) {
      // storage full or disabled: the form still works, Back just forgets it
    }
  }

  function restoreForm(state) {
    textarea.value = state.text || "";
    if (state.delta) deltaInput.value = state.delta;
    if (state.temperature) temperatureInput.value = state.temperature;
    if (state.nfree) nfreeSelect.value = state.nfree;
    if (state.symmetry) symmetrySelect.value = state.symmetry;
    if (state.engine && Array.from(engineSelect.options).some((o) => o.value === state.engine)) {
      engineSelect.value = state.engine;
    }
    labelInput.value = state.label || "";
    choice = state.choice ? new Map(state.choice) : null;
  }

  /** "Edit and resubmit": /?from=JOB_ID fills the form with that job's input and options. */
  async function prefillFromJob(jobId) {
    const job = await api(`/jobs/${encodeURIComponent(jobId)}`);
    const response = await fetch(`${window.ZPE.API}/jobs/${encodeURIComponent(jobId)}/files?kind=input`);
    if (!response.ok) throw await window.ZPE.problemFrom(response);
    const text = await response.text();
    const mobile = new Set(job.mobile_indices);
    restoreForm({
      text,
      delta: String(job.delta),
      temperature: String(job.temperature),
      nfree: String(job.nfree),
      engine: job.engine,
      label: job.label || "",
      choice: null,
    });
    pendingMobile = mobile;
  }

  async function start() {
    await loadConfig();
    const from = new URLSearchParams(window.location.search).get("from");
    if (from) {
      try {
        await prefillFromJob(from);
      } catch (error) {
        showError(submitError, `Could not load job ${from} to edit it: ${describeError(error)}`);
      }
    } else {
      let saved = null;
      try {
        saved = JSON.parse(sessionStorage.getItem(FORM_KEY) || "null");
      } catch (_) {
        saved = null;
      }
      if (saved && saved.text) restoreForm(saved);
    }
    formReady = true;
    if (textarea.value.trim()) parseNow();
    updateSummary();
  }

  start();
})();
