// Evals: the list of evals, and one eval's runs side by side (e.g. a base model against a fine-tuned one): a bar
// chart of each run's mean score per testing criterion, and a table of runs with progress while they are graded.
import { ApiError, UI, api, download, listAll } from "../api.js";
import { alertBox, badge, clear, emptyState, formatRelative, h, pageHeader, poller, progressBar, setProgress } from "../dom.js";

const ACTIVE = new Set(["queued", "in_progress"]);
const COLORS = ["#94a3b8", "#4f46e5", "#0f766e", "#c2410c", "#a21caf", "#ca8a04"];

export function renderList(main) {
  let alive = true;
  const area = h("div", { class: "table-wrap" }, h("p", { class: "muted" }, "Loading evals…"));
  clear(main, pageHeader("Evals"), h("section", { class: "card" }, area));
  (async () => {
    try {
      const evals = await listAll("/v1/evals");
      if (!alive) return;
      if (!evals.length) {
        clear(area, emptyState("No evals yet", "Create one with `ftserve evals create eval.json` or POST /v1/evals."));
        return;
      }
      clear(
        area,
        table(
          "Evals",
          ["Eval", "Name", "Criteria", "Created"],
          evals.map((e) => [
            h("a", { href: `${UI}/evals/${encodeURIComponent(e.id)}`, "data-link": "", class: "mono" }, e.id),
            e.name || "—",
            e.testing_criteria.map((c) => c.name).join(", "),
            formatRelative(e.created_at),
          ]),
        ),
      );
    } catch (err) {
      if (alive) clear(area, alertBox(`Could not load evals: ${err.message}`));
    }
  })();
  return () => {
    alive = false;
  };
}

export function render(main, { params, search }) {
  if (!params.length) return renderList(main);
  const evalId = params[0];
  let chart = null;
  const canvas = h("canvas", { id: "eval-chart", role: "img", "aria-label": "Mean score per criterion, per run" });
  const summary = h("p", { class: "chart-summary", id: "eval-summary", "aria-live": "polite" });
  const runsArea = h("div", { class: "table-wrap" }, h("p", { class: "muted" }, "Loading runs…"));
  const status = h("div");
  const heading = pageHeader("Eval");
  clear(
    main,
    heading,
    status,
    h(
      "section",
      { class: "card chart-card", "aria-labelledby": "eval-chart-heading" },
      h("div", { class: "card-head" }, h("h2", { id: "eval-chart-heading" }, "Mean score per criterion"), summary),
      h("div", { class: "chart-box" }, canvas),
    ),
    h("section", { class: "card", "aria-labelledby": "eval-runs-heading" }, h("h2", { id: "eval-runs-heading" }, "Runs"), runsArea),
  );
  const bars = new Map();

  async function load() {
    try {
      const [evaluation, runs] = await Promise.all([api(`/v1/evals/${encodeURIComponent(evalId)}`), listAll(`/v1/evals/${encodeURIComponent(evalId)}/runs`)]);
      heading.querySelector("h1").textContent = evaluation.name ? `Eval: ${evaluation.name}` : `Eval ${evalId}`;
      clear(status);
      drawChart(evaluation, runs);
      drawRuns(runs, search.get("run"));
      return runs.some((r) => ACTIVE.has(r.status));
    } catch (err) {
      const message = err instanceof ApiError && err.status === 404 ? `There is no eval ${evalId}.` : `Could not load the eval: ${err.message}`;
      clear(status, alertBox(message));
      return false;
    }
  }

  function drawChart(evaluation, runs) {
    const labels = evaluation.testing_criteria.map((c) => c.name);
    const datasets = runs.map((run, i) => {
      const per = Object.fromEntries(run.per_testing_criteria_results.map((r) => [r.testing_criteria, r.mean_score]));
      return {
        label: `${run.model}${run.name && run.name !== run.model ? ` (${run.name})` : ""}`,
        data: labels.map((name) => per[name] ?? 0),
        backgroundColor: COLORS[i % COLORS.length],
        runId: run.id,
      };
    });
    summary.textContent = datasets
      .map((d) => `${d.label}: ${labels.map((name, i) => `${name} ${d.data[i].toFixed(3)}`).join(", ")}`)
      .join(" · ");
    canvas.setAttribute("aria-label", `Mean score per criterion, per run. ${summary.textContent}`);
    if (!window.Chart) return;
    if (chart) {
      chart.data.labels = labels;
      chart.data.datasets = datasets;
      chart.update();
      return;
    }
    chart = makeChart(canvas, labels, datasets);
  }

  function drawRuns(runs, highlighted) {
    if (!runs.length) {
      clear(runsArea, emptyState("No runs yet", "Start one per model with `ftserve evals run EVAL_ID -m BASE -m ft:...`."));
      return;
    }
    const rows = runs.map((run) => {
      const counts = run.result_counts;
      const graded = counts.passed + counts.failed + counts.errored;
      let bar = bars.get(run.id);
      if (!bar) {
        bar = progressBar(graded, counts.total, `Items graded of run ${run.id}`);
        bars.set(run.id, bar);
      } else setProgress(bar, graded, counts.total);
      const report = run.report_file_id
        ? h(
            "button",
            { type: "button", class: "btn btn-small", on: { click: () => download(`/v1/files/${run.report_file_id}/content`, `${run.id}_report.jsonl`) } },
            "Report",
          )
        : run.error
          ? h("span", { class: "muted small" }, run.error.message)
          : "—";
      const row = [
        h("span", { class: "mono small" }, run.model),
        badge(run.status),
        h("div", { class: "progress-cell" }, bar, h("span", { class: "small muted" }, `${graded} of ${counts.total}`)),
        `${counts.passed} / ${counts.total}`,
        run.per_testing_criteria_results.map((r) => `${r.testing_criteria}: ${r.passed}/${r.passed + r.failed}`).join(", "),
        report,
      ];
      return { row, id: run.id };
    });
    const tableEl = table(
      "Runs of this eval",
      ["Model", "Status", "Progress", "Passed", "Per criterion", "Report"],
      rows.map((r) => r.row),
    );
    tableEl.id = "eval-runs";
    tableEl.querySelectorAll("tbody tr").forEach((tr, i) => {
      tr.dataset.run = rows[i].id;
      if (rows[i].id === highlighted) tr.classList.add("highlight");
    });
    clear(runsArea, tableEl);
  }

  let alive = true;
  let polling = null;
  load().then((active) => {
    if (alive && active) polling = poller(load, 1000); // until every run is done
  });
  return () => {
    alive = false;
    polling?.stop();
    chart?.destroy();
  };
}

function table(caption, headers, rows) {
  return h(
    "table",
    { class: "table table-cards" },
    h("caption", { class: "visually-hidden" }, caption),
    h("thead", {}, h("tr", {}, headers.map((name) => h("th", { scope: "col" }, name)))),
    h(
      "tbody",
      {},
      rows.map((cells) => h("tr", {}, cells.map((cell, i) => h("td", { "data-label": headers[i] }, cell)))),
    ),
  );
}

function makeChart(canvas, labels, datasets) {
  const style = getComputedStyle(document.documentElement);
  const grid = style.getPropertyValue("--chart-grid").trim() || "#e5e7eb";
  const text = style.getPropertyValue("--text-muted").trim() || "#4b5563";
  return new window.Chart(canvas, {
    type: "bar",
    data: { labels, datasets },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      scales: {
        x: { ticks: { color: text }, grid: { color: grid } },
        y: { beginAtZero: true, suggestedMax: 1, ticks: { color: text }, grid: { color: grid } },
      },
      plugins: {
        legend: { position: "bottom", labels: { color: text, usePointStyle: true, pointStyleWidth: 10, boxHeight: 7, padding: 16 } },
      },
    },
  });
}
