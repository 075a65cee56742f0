// Jobs list: status badges, progress, filters by status; refreshes itself while jobs are active.
import { UI, api } from "../api.js";
import { alertBox, badge, clear, emptyState, formatRelative, formatTime, h, pageHeader, poller, progressBar } from "../dom.js";

export const ACTIVE = new Set(["validating_files", "queued", "running", "paused"]);
const FILTERS = [
  ["all", "All"],
  ["running", "Running"],
  ["queued", "Queued"],
  ["paused", "Paused"],
  ["succeeded", "Succeeded"],
  ["failed", "Failed"],
  ["cancelled", "Cancelled"],
];
const PAGE = 100;

export function progressText(job) {
  if (job.status === "succeeded") return "done";
  if (["failed", "cancelled"].includes(job.status)) return job.total_steps ? `stopped at step ${job.step ?? 0} of ${job.total_steps}` : "did not start";
  if (job.total_steps) return `step ${job.step ?? 0} of ${job.total_steps}`;
  if (job.status === "queued") return job.queue_position ? `#${job.queue_position} in queue` : "waiting for a worker";
  if (job.status === "validating_files") return "checking files";
  if (job.status === "running") return "starting";
  if (job.status === "paused") return job.step ? `paused at step ${job.step}` : "paused";
  return "—";
}

function truncate(text, n) {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}

export function render(main, { search }) {
  let alive = true;
  let jobs = [];
  let hasMore = false;
  let loadedMore = false;
  let filter = FILTERS.some(([v]) => v === search.get("status")) ? search.get("status") : "all";

  const chips = h(
    "fieldset",
    { class: "chips", id: "status-filter" },
    h("legend", { class: "visually-hidden" }, "Filter by status"),
    FILTERS.map(([value, label]) =>
      h(
        "label",
        { class: "chip" },
        h("input", { type: "radio", name: "status", value, checked: value === filter }),
        h("span", {}, label, h("span", { class: "chip-count", dataset: { count: value } })),
      ),
    ),
  );
  const tableBody = h("tbody");
  const table = h(
    "table",
    { class: "table table-cards", id: "jobs-table" },
    h("caption", { class: "visually-hidden" }, "Fine-tuning jobs"),
    h(
      "thead",
      {},
      h("tr", {}, ["Job", "Status", "Progress", "Model", "Created"].map((name) => h("th", { scope: "col" }, name))),
    ),
    tableBody,
  );
  const area = h("div", { class: "table-wrap" }, h("p", { class: "muted" }, "Loading jobs…"));
  const more = h("button", { type: "button", class: "btn", hidden: true }, "Load older jobs");

  clear(
    main,
    pageHeader("Jobs", h("a", { class: "btn btn-primary", href: `${UI}/jobs/new`, "data-link": "" }, "New job")),
    h("section", { class: "card" }, chips, area, h("div", { class: "center" }, more)),
  );

  chips.addEventListener("change", (event) => {
    filter = event.target.value;
    const url = new URL(location.href);
    if (filter === "all") url.searchParams.delete("status");
    else url.searchParams.set("status", filter);
    history.replaceState(null, "", url);
    draw();
  });

  more.addEventListener("click", async () => {
    more.disabled = true;
    try {
      const page = await api(`/v1/fine_tuning/jobs?limit=${PAGE}&after=${encodeURIComponent(jobs[jobs.length - 1].id)}`);
      jobs.push(...page.data);
      loadedMore = true;
      hasMore = page.has_more;
      draw();
    } finally {
      more.disabled = false;
    }
  });

  async function refresh() {
    // Re-read the newest page; keep older pages already loaded (their jobs rarely change).
    const page = await api(`/v1/fine_tuning/jobs?limit=${PAGE}`);
    if (!alive) return false;
    const fresh = new Set(page.data.map((j) => j.id));
    const oldest = page.data.length ? page.data[page.data.length - 1].created_at : Infinity;
    const older = loadedMore ? jobs.filter((j) => !fresh.has(j.id) && j.created_at <= oldest) : [];
    jobs = [...page.data, ...older];
    if (!loadedMore) hasMore = page.has_more;
    draw();
    return true;
  }

  function draw() {
    for (const [value] of FILTERS) {
      const count = value === "all" ? jobs.length : jobs.filter((j) => j.status === value).length;
      chips.querySelector(`[data-count="${value}"]`).textContent = ` ${count}`;
    }
    more.hidden = !hasMore;
    const shown = filter === "all" ? jobs : jobs.filter((j) => j.status === filter);
    if (!jobs.length) {
      clear(area, emptyState("No fine-tuning jobs yet", "Upload a training file, then start a job.", h("a", { class: "btn btn-primary", href: `${UI}/jobs/new`, "data-link": "" }, "New job")));
      return;
    }
    if (!shown.length) {
      clear(area, emptyState(`No ${filter} jobs`, "Pick another status above."));
      return;
    }
    clear(tableBody, shown.map(row));
    if (area.firstChild !== table) clear(area, table);
  }

  function row(job) {
    const name = job.user_provided_suffix || job.id;
    return h(
      "tr",
      { dataset: { jobId: job.id, status: job.status } },
      h(
        "td",
        { "data-label": "Job" },
        h("a", { href: `${UI}/jobs/${encodeURIComponent(job.id)}`, "data-link": "", class: "strong" }, name),
        name !== job.id ? h("div", { class: "mono muted small" }, job.id) : null,
      ),
      h("td", { "data-label": "Status" }, badge(job.status)),
      h(
        "td",
        { "data-label": "Progress", class: "progress-cell" },
        progressBar(job.status === "succeeded" ? 1 : job.step ?? 0, job.status === "succeeded" ? 1 : job.total_steps || 0, `Progress of ${name}`),
        h("span", { class: "small muted" }, progressText(job)),
        job.error ? h("div", { class: "small error-text", title: job.error.message }, truncate(job.error.message, 90)) : null,
      ),
      h("td", { "data-label": "Model" }, h("span", { class: "mono small" }, job.fine_tuned_model || job.model)),
      h("td", { "data-label": "Created" }, h("time", { title: formatTime(job.created_at) }, formatRelative(job.created_at))),
    );
  }

  refresh().catch((err) => alive && clear(area, alertBox(`Could not load jobs: ${err.message}`)));
  const poll = poller(() => refresh(), 3000);
  return () => {
    alive = false;
    poll.stop();
  };
}
