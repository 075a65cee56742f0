// Usage: the organization's daily fine-tuning and inference usage and cost, from GET /v1/organization/usage
// (an admin key). A bar chart per day (trained tokens and inference tokens, or cost), and per-job and per-model tables.
import { ApiError, UI, api } from "../api.js";
import { alertBox, clear, emptyState, h, pageHeader } from "../dom.js";

const DAY = 86400;
const RANGES = [
  ["7", "7 days"],
  ["30", "30 days"],
];
const COLORS = { trained: "#4f46e5", input: "#0f766e", output: "#c2410c", cost: "#4f46e5" };

export function render(main, { search }) {
  let alive = true;
  let chart = null;
  let days = RANGES.some(([v]) => v === search.get("days")) ? Number(search.get("days")) : 7;
  let metric = search.get("metric") === "cost" ? "cost" : "tokens";

  const rangeChips = chips("range", "Range", RANGES, String(days));
  const metricChips = chips("metric", "Show", [["tokens", "Tokens"], ["cost", "Cost"]], metric);
  const canvas = h("canvas", { id: "usage-chart", role: "img", "aria-label": "Usage chart" });
  const chartEmpty = h("p", { class: "chart-empty muted", hidden: true }, "No usage in this range.");
  const summary = h("p", { class: "chart-summary", id: "usage-summary", "aria-live": "polite" });
  const jobsArea = h("div", { class: "table-wrap" }, h("p", { class: "muted" }, "Loading usage…"));
  const modelsArea = h("div", { class: "table-wrap" });
  const status = h("div");

  clear(
    main,
    pageHeader("Usage"),
    status,
    h(
      "section",
      { class: "card chart-card", "aria-labelledby": "usage-heading" },
      h("div", { class: "card-head" }, h("h2", { id: "usage-heading" }, "Per day (UTC)"), summary),
      h("div", { class: "chips-row" }, rangeChips, metricChips),
      h("div", { class: "chart-box" }, canvas, chartEmpty),
    ),
    h("section", { class: "card", "aria-labelledby": "usage-jobs" }, h("h2", { id: "usage-jobs" }, "Fine-tuning by job"), jobsArea),
    h("section", { class: "card", "aria-labelledby": "usage-models" }, h("h2", { id: "usage-models" }, "Inference by model"), modelsArea),
  );

  rangeChips.addEventListener("change", (event) => {
    days = Number(event.target.value);
    keepInUrl("days", days === 7 ? null : String(days));
    load();
  });
  metricChips.addEventListener("change", (event) => {
    metric = event.target.value;
    keepInUrl("metric", metric === "tokens" ? null : metric);
    load();
  });

  async function load() {
    const today = Math.floor(Date.now() / 1000 / DAY) * DAY;
    const query = `start_time=${today - (days - 1) * DAY}&bucket_width=1d&limit=${days}`;
    try {
      const [page, byJob, byModel] = await Promise.all([
        api(`/v1/organization/usage?${query}`),
        api(`/v1/organization/usage/fine_tuning?${query}&group_by=job_id`),
        api(`/v1/organization/usage/completions?${query}&group_by=model`),
      ]);
      if (!alive) return;
      clear(status);
      drawChart(page.data);
      drawJobs(byJob.data);
      drawModels(byModel.data);
    } catch (err) {
      if (!alive) return;
      const message =
        err instanceof ApiError && err.status === 403
          ? "Usage needs an admin key: this key's scopes do not include 'admin'. Sign in with an admin key to see it."
          : `Could not load usage: ${err.message}`;
      clear(status, alertBox(message, err instanceof ApiError && err.status === 403 ? "warning" : "error"));
      clear(jobsArea);
    }
  }

  function drawChart(buckets) {
    const labels = buckets.map((b) => new Date(b.start_time * 1000).toISOString().slice(5, 10));
    const sum = (bucket, kind, field) =>
      bucket.results.filter((r) => r.object.includes(kind)).reduce((total, r) => total + (field(r) || 0), 0);
    let datasets;
    let currency = "";
    if (metric === "cost") {
      currency = buckets.flatMap((b) => b.results).find((r) => r.cost)?.cost.currency || "";
      datasets = [
        { label: `Fine-tuning cost (${currency})`, data: buckets.map((b) => sum(b, "fine_tuning", (r) => r.cost.value)), backgroundColor: COLORS.trained, stack: "cost" },
        { label: `Inference cost (${currency})`, data: buckets.map((b) => sum(b, "completions", (r) => r.cost.value)), backgroundColor: COLORS.output, stack: "cost" },
      ];
    } else {
      datasets = [
        { label: "Trained tokens", data: buckets.map((b) => sum(b, "fine_tuning", (r) => r.trained_tokens)), backgroundColor: COLORS.trained, stack: "train" },
        { label: "Prompt tokens", data: buckets.map((b) => sum(b, "completions", (r) => r.input_tokens)), backgroundColor: COLORS.input, stack: "inference" },
        { label: "Completion tokens", data: buckets.map((b) => sum(b, "completions", (r) => r.output_tokens)), backgroundColor: COLORS.output, stack: "inference" },
      ];
    }
    const totals = datasets.map((d) => d.data.reduce((a, b) => a + b, 0));
    const empty = totals.every((t) => t === 0);
    chartEmpty.hidden = !empty;
    summary.textContent = datasets.map((d, i) => `${d.label}: ${format(totals[i])}`).join(" · ");
    canvas.setAttribute("aria-label", `Usage per day over ${days} days. ${summary.textContent}.`);
    if (!window.Chart) return;
    if (chart) chart.destroy();
    chart = makeChart(canvas, labels, datasets);
  }

  function drawJobs(buckets) {
    const byJob = new Map();
    for (const result of buckets.flatMap((b) => b.results)) {
      const entry = byJob.get(result.job_id) || { tokens: 0, seconds: 0, cost: 0, currency: result.cost.currency, classes: new Set() };
      entry.tokens += result.trained_tokens;
      entry.seconds += result.gpu_seconds;
      entry.cost += result.cost.value;
      entry.classes.add(result.gpu_class);
      byJob.set(result.job_id, entry);
    }
    if (!byJob.size) {
      clear(jobsArea, emptyState("No fine-tuning in this range", "Jobs are metered as each attempt ends."));
      return;
    }
    const rows = [...byJob.entries()].sort((a, b) => b[1].cost - a[1].cost || b[1].tokens - a[1].tokens);
    clear(
      jobsArea,
      table(
        "Fine-tuning usage by job",
        ["Job", "GPU class", "Trained tokens", "GPU time", "Cost"],
        rows.map(([jobId, e]) => [
          h("a", { href: `${UI}/jobs/${encodeURIComponent(jobId)}`, "data-link": "", class: "mono" }, jobId),
          [...e.classes].join(", "),
          format(e.tokens),
          `${(e.seconds / 60).toFixed(1)} min`,
          `${e.cost.toFixed(4)} ${e.currency}`,
        ]),
      ),
    );
  }

  function drawModels(buckets) {
    const byModel = new Map();
    for (const result of buckets.flatMap((b) => b.results)) {
      const entry = byModel.get(result.model) || { input: 0, output: 0, requests: 0, cost: 0, currency: result.cost.currency };
      entry.input += result.input_tokens;
      entry.output += result.output_tokens;
      entry.requests += result.num_model_requests;
      entry.cost += result.cost.value;
      byModel.set(result.model, entry);
    }
    if (!byModel.size) {
      clear(modelsArea, emptyState("No inference in this range", "Chat requests are metered as they are answered."));
      return;
    }
    clear(
      modelsArea,
      table(
        "Inference usage by model",
        ["Model", "Requests", "Prompt tokens", "Completion tokens", "Cost"],
        [...byModel.entries()].map(([model, e]) => [
          h("span", { class: "mono small" }, model),
          format(e.requests),
          format(e.input),
          format(e.output),
          `${e.cost.toFixed(4)} ${e.currency}`,
        ]),
      ),
    );
  }

  load();
  return () => {
    alive = false;
    chart?.destroy();
  };
}

function chips(name, legend, options, selected) {
  return h(
    "fieldset",
    { class: "chips", id: `usage-${name}` },
    h("legend", { class: "visually-hidden" }, legend),
    options.map(([value, label]) =>
      h("label", { class: "chip" }, h("input", { type: "radio", name, value, checked: value === selected }), h("span", {}, label)),
    ),
  );
}

function keepInUrl(name, value) {
  const url = new URL(location.href);
  if (value === null) url.searchParams.delete(name);
  else url.searchParams.set(name, value);
  history.replaceState(null, "", url);
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

function format(value) {
  return Number.isInteger(value) ? value.toLocaleString("en-US") : value.toFixed(4);
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
        x: { stacked: true, ticks: { color: text }, grid: { color: grid } },
        y: { stacked: true, beginAtZero: true, ticks: { color: text }, grid: { color: grid } },
      },
      plugins: {
        legend: { position: "bottom", labels: { color: text, usePointStyle: true, pointStyleWidth: 10, boxHeight: 7, padding: 16 } },
      },
    },
  });
}
