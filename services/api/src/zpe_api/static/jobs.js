/* Jobs page: the caller's jobs, newest first, one page per cursor (?cursor=...). */
"use strict";

(function () {
  const Z = window.ZPE;
  const { el } = Z;
  const PAGE_SIZE = 20;

  const params = new URLSearchParams(window.location.search);
  const cursor = params.get("cursor");
  const body = document.querySelector("#jobs-table tbody");

  async function load() {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (cursor) query.set("cursor", cursor);
    let page;
    try {
      page = await Z.api(`/jobs?${query}`);
    } catch (error) {
      Z.showError(document.getElementById("jobs-error"), `The jobs could not be listed: ${Z.describeError(error)}`);
      return;
    }
    body.replaceChildren(
      ...page.jobs.map((job) => {
        const link = el("a", { href: `/jobs/${encodeURIComponent(job.job_id)}` }, job.job_id);
        const summary = job.summary;
        return el(
          "tr",
          { class: "job", "data-job-id": job.job_id },
          el("td", {}, Z.localTime(job.created_at)),
          el("td", {}, link),
          el("td", {}, el("span", { class: `badge ${job.state}` }, job.state)),
          el("td", { class: "num" }, `${job.progress.done} / ${job.progress.total}`),
          el("td", {}, job.engine),
          el("td", { class: "num zpe" }, summary ? Z.fixed(summary.zpe_ev, 6) : "–"),
          el("td", { class: "num" }, summary ? String(summary.n_imaginary) : "–")
        );
      })
    );
    document.getElementById("jobs-empty").hidden = page.jobs.length > 0 || Boolean(cursor);
    document.getElementById("first-page").hidden = !cursor;
    const next = document.getElementById("next-page");
    if (page.next_cursor) {
      next.href = `/jobs?cursor=${encodeURIComponent(page.next_cursor)}`;
      next.hidden = false;
    }
  }

  load();
})();
