/* Jobs page: the caller's jobs, newest first, one page per cursor (?cursor=...). */
"use strict";

(function () {
  const Z = window.ZPE;
  const { el } = Z;
  const PAGE_SIZE = 20;

  const params = new URLSearchParams(window.location.search);
  const cursor = params.get("cursor");
  const search = (params.get("q") || "").trim();
  const body = document.querySelector("#jobs-table tbody");
  const compareButton = document.getElementById("compare-button");
  document.getElementById("search").value = search;
  document.getElementById("clear-search").hidden = !search;

  function chosen() {
    return Array.from(body.querySelectorAll("input.compare:checked"), (box) => box.value);
  }

  compareButton.addEventListener("click", () => {
    window.location.assign(`/compare?ids=${chosen().map(encodeURIComponent).join(",")}`);
  });

  async function load() {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (cursor) query.set("cursor", cursor);
    if (search) query.set("q", search);
    let page;
    try {
      page = await Z.api(`/jobs?${query}`);
    } catch (error) {
      Z.showError(document.getElementById("jobs-error"), `The jobs could not be listed: ${Z.describeError(error)}`);
      return;
    }
    body.replaceChildren(
      ...page.jobs.map((job) => {
        const link = el(
          "a",
          { href: `/jobs/${encodeURIComponent(job.job_id)}`, class: "job-link" },
          job.label ? el("span", { class: "job-label" }, job.label) : null,
          el("code", { class: "job-id" }, job.job_id)
        );
        const summary = job.summary;
        const box = el("input", {
          type: "checkbox",
          class: "compare",
          value: job.job_id,
          disabled: job.state !== "done",
          "aria-label": `compare ${job.label || job.job_id}`,
        });
        box.addEventListener("change", () => {
          compareButton.disabled = chosen().length < 2;
        });
        return el(
          "tr",
          { class: "job", "data-job-id": job.job_id },
          // The classes place the cells on a phone, where each row becomes a small card
          // (style.css); data-label names a value there, as the hidden header would.
          el("td", { class: "pick" }, box),
          el("td", { class: "when" }, Z.localTime(job.created_at)),
          el("td", { class: "job" }, link),
          el("td", { class: "formula" }, job.formula),
          el("td", { class: "state" }, el("span", { class: `badge ${job.state}` }, job.state)),
          el("td", { class: "num tasks", "data-label": "tasks" }, `${job.progress.done} / ${job.progress.total}`),
          el("td", { class: "engine" }, job.engine),
          el("td", { class: "num zpe", "data-label": "ZPE (eV)" }, summary ? Z.fixed(summary.zpe_ev, 6) : "–"),
          el("td", { class: "num imaginary", "data-label": "imaginary" }, summary ? String(summary.n_imaginary) : "–")
        );
      })
    );
    document.getElementById("jobs-empty").hidden = page.jobs.length > 0 || Boolean(cursor);
    document.getElementById("first-page").hidden = !cursor;
    const next = document.getElementById("next-page");
    if (page.next_cursor) {
      const more = new URLSearchParams({ cursor: page.next_cursor });
      if (search) more.set("q", search);
      next.href = `/jobs?${more}`;
      next.hidden = false;
    }
  }

  load();
})();
