/* Compare page: finished jobs side by side (?ids=a,b,...), differences to the first. */
"use strict";

(function () {
  const Z = window.ZPE;
  const { el } = Z;
  const ids = (new URLSearchParams(window.location.search).get("ids") || "")
    .split(",")
    .map((id) => id.trim())
    .filter(Boolean)
    .slice(0, 12);
  const head = document.querySelector("#compare-table thead tr");
  const body = document.querySelector("#compare-table tbody");
  const errorBox = document.getElementById("compare-error");

  /** The free energy the result reports (G for a gas, F for an adsorbate), if any. */
  function freeEnergy(result) {
    const t = result && result.thermochemistry;
    if (!t) return null;
    const value = t.gibbs_energy_ev ?? t.helmholtz_energy_ev;
    return typeof value === "number" ? { value, name: t.gibbs_energy_ev !== undefined ? "G" : "F" } : null;
  }

  function delta(value, first, digits) {
    if (typeof value !== "number" || typeof first !== "number") return "–";
    const d = value - first;
    return `${d >= 0 ? "+" : "−"}${Math.abs(d).toFixed(digits)}`;
  }

  async function load() {
    if (ids.length < 1) {
      Z.showError(errorBox, "No jobs to compare: pick two or more finished jobs on the Jobs page.");
      return;
    }
    let jobs;
    try {
      jobs = await Promise.all(
        ids.map(async (id) => {
          const status = await Z.api(`/jobs/${encodeURIComponent(id)}`);
          const result = status.state === "done" ? await Z.api(`/jobs/${encodeURIComponent(id)}/result`) : null;
          return { status, result };
        })
      );
    } catch (error) {
      Z.showError(errorBox, `The jobs could not be loaded: ${Z.describeError(error)}`);
      return;
    }
    document.title = `Compare ${jobs.map((j) => j.status.label || j.status.formula).join(" / ")}`;
    head.replaceChildren(
      el("th", { scope: "col" }, "Job"),
      ...jobs.map((j) =>
        el(
          "th",
          { scope: "col" },
          el("a", { href: `/jobs/${encodeURIComponent(j.status.job_id)}` }, j.status.label || j.status.formula),
          el("div", { class: "muted job-id" }, j.status.job_id.slice(0, 12))
        )
      )
    );
    const first = jobs[0];
    const zpe = (j) => (j.result ? j.result.zpe_ev : null);
    const g = (j) => (freeEnergy(j.result) ? freeEnergy(j.result).value : null);
    const rows = [
      ["Formula", (j) => j.status.formula],
      ["State", (j) => j.status.state],
      ["δ (Å), nfree, T (K)", (j) => `${j.status.delta}, ${j.status.nfree}, ${j.status.temperature}`],
      ["Mobile atoms", (j) => j.status.mobile_indices.join(", ")],
      ["ZPE (eV)", (j) => Z.fixed(zpe(j), 4)],
      ["ZPE (kJ/mol)", (j) => Z.fixed(zpe(j) === null ? null : zpe(j) * Z.EV_TO_KJMOL, 2)],
      ["Δ ZPE (meV)", (j) => (j === first ? "—" : delta(zpe(j) === null ? null : zpe(j) * 1000, zpe(first) === null ? null : zpe(first) * 1000, 1))],
      ["G or F (eV)", (j) => (freeEnergy(j.result) ? `${freeEnergy(j.result).name} = ${freeEnergy(j.result).value.toFixed(4)}` : "–")],
      ["Δ G or F (meV)", (j) => (j === first ? "—" : delta(g(j) === null ? null : g(j) * 1000, g(first) === null ? null : g(first) * 1000, 1))],
      ["Imaginary modes", (j) => (j.status.summary ? String(j.status.summary.n_imaginary) : "–")],
    ];
    body.replaceChildren(
      ...rows.map(([name, cell]) =>
        el("tr", {}, el("th", { scope: "row" }, name), ...jobs.map((j) => el("td", { class: "num" }, cell(j))))
      )
    );
  }

  load();
})();
