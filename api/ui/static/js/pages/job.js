// Job detail: a live loss chart fed by metrics events, the event log, checkpoints, hyperparameters, controls,
// the results CSV and exports (job_exports.js). New events are read by paging the newest-first event list until a known id.
import { UI, api, download, request } from "../api.js";
import {
  alertBox,
  badge,
  clear,
  confirmButton,
  copyButton,
  formatMb,
  formatNumber,
  formatRelative,
  formatTime,
  h,
  poller,
  progressBar,
  setProgress,
  toast,
} from "../dom.js";
import { exportsCard } from "./job_exports.js";

const METHOD_NAMES = {
  supervised: "Supervised (SFT)",
  dpo: "Preference (DPO)",
  kto: "Labelled answers (KTO)",
  orpo: "Preference (ORPO)",
  simpo: "Preference (SimPO)",
  reinforcement: "Reinforcement (GRPO)",
};
import { ACTIVE, progressText } from "./jobs.js";

const POLL_MS = 1000;
const MAX_EVENT_ROWS = 300;
const TRAIN_COLOR = "#4f46e5";
const VALID_COLOR = "#c2410c";
const REWARD_COLOR = "#15803d"; // green: a score that should rise
const REWARD_BAND_COLOR = "rgba(21, 128, 61, 0.15)";
const REWARD_BAND_LOWER = "Reward − std";

export function render(main, { params }) {
  const jobId = params[0];
  const base = `/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}`;
  let alive = true;
  let job = null;
  let chart = null;
  let lastStatus = null;
  const seen = new Set();
  const events = []; // newest first
  const metrics = new Map(); // step -> latest metrics row (a resumed attempt may repeat steps)

  const title = h("h1", { tabindex: "-1" }, jobId);
  const actions = h("div", { class: "page-actions" });
  const statusLine = h("div", { class: "status-line" });
  const errorArea = h("div");
  const facts = h("dl", { class: "facts" });
  const hyperparameters = h("dl", { class: "facts hp-list", id: "hyperparameters" });
  const checkpointsArea = h("div", { class: "table-wrap", id: "checkpoints" }, h("p", { class: "muted" }, "No checkpoints yet."));
  const exportsArea = exportsCard(base);
  const eventsBody = h("tbody");
  const hideMetrics = h("input", { type: "checkbox", id: "hide-metrics" });
  const eventsArea = h(
    "div",
    // Scrolls on its own, so it must take keyboard focus (and say what it is) to be scrolled without a mouse.
    { class: "table-wrap events-wrap", tabindex: "0", role: "region", "aria-label": "Event log (scrolls)" },
    h(
      "table",
      { class: "table events", id: "events" },
      h("caption", { class: "visually-hidden" }, "Job events, newest first"),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Time"), h("th", { scope: "col" }, "Level"), h("th", { scope: "col" }, "Message"))),
      eventsBody,
    ),
  );
  const canvas = h("canvas", { id: "loss-chart", role: "img", "aria-label": "Loss chart: no metrics yet" });
  const chartEmpty = h("p", { class: "chart-empty muted" }, "The loss curve appears here as soon as training reports its first step.");
  const chartSummary = h("p", { class: "chart-summary", id: "chart-summary", "aria-live": "polite" });

  clear(
    main,
    h("nav", { class: "breadcrumb", "aria-label": "Breadcrumb" }, h("a", { href: `${UI}/jobs`, "data-link": "" }, "Jobs"), h("span", { "aria-hidden": "true" }, " / "), h("span", { class: "mono" }, jobId)),
    h("div", { class: "page-header" }, title, actions),
    statusLine,
    errorArea,
    h(
      "div",
      { class: "job-grid" },
      h(
        "section",
        { class: "card chart-card", "aria-labelledby": "chart-heading" },
        h("div", { class: "card-head" }, h("h2", { id: "chart-heading" }, "Loss"), chartSummary),
        h("div", { class: "chart-box" }, canvas, chartEmpty),
      ),
      h("section", { class: "card", "aria-labelledby": "details-heading" }, h("h2", { id: "details-heading" }, "Details"), facts),
      h("section", { class: "card", "aria-labelledby": "hp-heading" }, h("h2", { id: "hp-heading" }, "Hyperparameters"), hyperparameters),
      h("section", { class: "card span-2", "aria-labelledby": "ckpt-heading" }, h("h2", { id: "ckpt-heading" }, "Checkpoints"), checkpointsArea),
      exportsArea.section,
      h(
        "section",
        { class: "card span-2", "aria-labelledby": "events-heading" },
        h("div", { class: "card-head" }, h("h2", { id: "events-heading" }, "Events"), h("label", { class: "check", for: "hide-metrics" }, hideMetrics, " Hide metrics")),
        eventsArea,
      ),
    ),
  );

  // -- header, actions, details -------------------------------------------------------------------------
  // Buttons are made once and reused: a redraw (queued -> running, say) must not reset a half-confirmed
  // cancel or drop the keyboard focus.
  const buttons = new Map();
  function cached(id, make) {
    if (!buttons.has(id)) {
      const node = make();
      node.id = id;
      buttons.set(id, node);
    }
    return buttons.get(id);
  }

  function control(verb, label) {
    return cached(`${verb}-job`, () =>
      h(
        "button",
        {
          type: "button",
          class: "btn",
          on: {
            click: async (event) => {
              const button = event.currentTarget;
              button.disabled = true;
              try {
                await act(verb);
              } finally {
                button.disabled = false;
              }
            },
          },
        },
        label,
      ),
    );
  }

  async function act(verb) {
    try {
      job = await api(`${base}/${verb}`, { method: "POST" });
      toast(`Job ${verb === "cancel" ? "cancelled" : verb === "pause" ? "pausing" : "resumed"}`);
      lastStatus = job.status;
      drawJob();
      poll.restart();
    } catch (err) {
      toast(err.message, "error");
      drawJob();
    }
  }

  function drawJob() {
    const name = job.user_provided_suffix || job.id;
    title.textContent = name;
    document.title = `${name} · ftserve`;
    const wanted = [];
    if (job.status === "succeeded" && job.fine_tuned_model) {
      wanted.push(
        cached("open-playground", () =>
          h("a", { class: "btn btn-primary", href: `${UI}/playground?model=${encodeURIComponent(job.fine_tuned_model)}`, "data-link": "" }, "Try in playground"),
        ),
      );
    }
    if (job.result_files?.length) {
      const fileId = job.result_files[0];
      wanted.push(
        cached("download-results", () =>
          h(
            "button",
            {
              type: "button",
              class: "btn",
              on: { click: () => download(`/v1/files/${encodeURIComponent(fileId)}/content`, `${job.id}-results.csv`).catch((e) => toast(e.message, "error")) },
            },
            "Download results CSV",
          ),
        ),
      );
    }
    if (["queued", "running"].includes(job.status)) wanted.push(control("pause", "Pause"));
    if (job.status === "paused") wanted.push(control("resume", "Resume"));
    if (ACTIVE.has(job.status)) wanted.push(cached("cancel-job", () => confirmButton("Cancel job", "Confirm cancel", () => act("cancel"))));
    const current = [...actions.children];
    if (current.length !== wanted.length || current.some((node, i) => node !== wanted[i])) clear(actions, wanted);

    const done = job.status === "succeeded";
    const bar = progressBar(done ? 1 : job.step ?? 0, done ? 1 : job.total_steps || 0, "Training progress");
    const eta = etaText(job);
    clear(statusLine, badge(job.status), bar, h("span", { class: "muted", id: "progress-text" }, progressText(job) + eta));
    statusLine.dataset.status = job.status;

    clear(
      errorArea,
      job.error ? alertBox(`${job.error.message}${job.error.param ? ` (${job.error.param})` : ""}`) : null,
    );
    infoKey = null;
    drawInfo();
  }

  // Details and hyperparameters change within a status too ("auto" resolves once training starts), so they
  // are redrawn whenever their data changes, not only on status changes (which also rebuild the buttons).
  let infoKey = null;
  function drawInfo() {
    const key = JSON.stringify([job.method, job.hyperparameters, job.fine_tuned_model, job.trained_tokens, job.finished_at, job.estimated_vram_mb, job.gpu_class, job.attempt]);
    if (key === infoKey) return;
    infoKey = key;

    const hp = job.method?.[job.method?.type]?.hyperparameters || job.hyperparameters || {};
    clear(
      facts,
      wide(fact("Job ID", h("span", { class: "mono" }, job.id), copyButton(job.id, "Copy job ID"))),
      fact("Base model", job.model),
      fact("Method", METHOD_NAMES[job.method?.type || "supervised"] || job.method.type),
      wide(fact("Fine-tuned model", job.fine_tuned_model ? [h("span", { class: "mono break" }, job.fine_tuned_model), copyButton(job.fine_tuned_model, "Copy model name")] : "—")),
      fact("Training file", fileLink(job.training_file)),
      fact("Validation file", job.validation_file ? fileLink(job.validation_file) : "—"),
      fact("Trained tokens", formatNumber(job.trained_tokens)),
      fact("Seed", String(job.seed)),
      fact("Created", formatTime(job.created_at)),
      fact("Finished", job.finished_at ? formatTime(job.finished_at) : "—"),
      job.estimated_vram_mb ? fact("Estimated GPU memory", formatMb(job.estimated_vram_mb)) : null,
      job.gpu_class ? fact("Device", job.gpu_class) : null,
      job.attempt > 1 ? fact("Attempt", String(job.attempt)) : null,
    );
    clear(
      hyperparameters,
      Object.entries(hp).map(([key, value]) =>
        h(
          "div",
          { dataset: { name: key } },
          h("dt", {}, key.replaceAll("_", " ")),
          h("dd", {}, value === "auto" ? h("span", { class: "auto-value" }, "auto") : Array.isArray(value) ? value.join(", ") : formatNumber(value)),
        ),
      ),
    );
  }

  // -- events and the chart ---------------------------------------------------------------------------
  async function fetchNewEvents() {
    const fresh = [];
    let after = null;
    const limit = seen.size ? 100 : 1000;
    for (;;) {
      const page = await api(`${base}/events?limit=${limit}${after ? `&after=${encodeURIComponent(after)}` : ""}`);
      let reachedKnown = false;
      for (const event of page.data) {
        if (seen.has(event.id)) {
          reachedKnown = true;
          break;
        }
        fresh.push(event);
      }
      if (reachedKnown || !page.has_more || !page.data.length) break;
      after = page.data[page.data.length - 1].id;
    }
    return fresh; // newest first
  }

  function addEvents(fresh) {
    for (const event of [...fresh].reverse()) {
      seen.add(event.id);
      events.unshift(event);
      if (event.type === "metrics" && event.data && typeof event.data.step === "number") {
        metrics.set(event.data.step, { ...metrics.get(event.data.step), ...event.data });
      }
    }
    drawEvents();
    if (fresh.some((e) => e.type === "metrics")) drawChart();
  }

  function drawEvents() {
    const rows = (hideMetrics.checked ? events.filter((e) => e.type !== "metrics") : events).slice(0, MAX_EVENT_ROWS);
    clear(
      eventsBody,
      rows.map((e) =>
        h(
          "tr",
          { class: `level-${e.level}`, dataset: { type: e.type } },
          h("td", { class: "nowrap small" }, h("time", {}, formatTime(e.created_at))),
          h("td", {}, h("span", { class: `level level-${e.level}` }, e.level)),
          h("td", {}, e.message),
        ),
      ),
    );
  }
  hideMetrics.addEventListener("change", drawEvents);

  function series(key) {
    return [...metrics.values()]
      .filter((row) => typeof row[key] === "number")
      .sort((a, b) => a.step - b.step)
      .map((row) => ({ x: row.step, y: row[key] }));
  }

  function drawChart() {
    const train = series("train_loss");
    const valid = series("valid_loss");
    const reward = series("train_reward_mean"); // reinforcement jobs: the grader's mean score per step
    // The spread of the step's rewards, drawn as a band of mean ± std around the mean.
    const rewardStd = new Map(series("train_reward_std").map((p) => [p.x, p.y]));
    const band = (sign) => reward.map((p) => ({ x: p.x, y: p.y + sign * (rewardStd.get(p.x) ?? 0) }));
    canvas.dataset.trainPoints = String(train.length);
    canvas.dataset.validPoints = String(valid.length);
    canvas.dataset.rewardPoints = String(reward.length);
    canvas.dataset.rewardStdPoints = String(rewardStd.size);
    if (!train.length && !valid.length && !reward.length) return;
    chartEmpty.hidden = true;
    if (!chart) chart = makeChart(canvas);
    if (chart) {
      chart.data.datasets[0].data = train;
      chart.data.datasets[1].data = valid;
      chart.data.datasets[2].data = reward;
      chart.data.datasets[2].hidden = !reward.length;
      chart.data.datasets[3].data = band(-1);
      chart.data.datasets[4].data = band(+1);
      chart.data.datasets[3].hidden = chart.data.datasets[4].hidden = !rewardStd.size;
      chart.update("none");
    }
    const last = train[train.length - 1];
    const lastValid = valid[valid.length - 1];
    const lastReward = reward[reward.length - 1];
    const text = [
      last ? `step ${last.x}` : null,
      last ? `training ${formatNumber(last.y)}` : null,
      lastValid ? `validation ${formatNumber(lastValid.y)}` : null,
      lastReward
        ? `reward ${formatNumber(lastReward.y)}${rewardStd.has(lastReward.x) ? ` ± ${formatNumber(rewardStd.get(lastReward.x))}` : ""}`
        : null,
    ]
      .filter(Boolean)
      .join(" · ");
    chartSummary.textContent = text;
    canvas.setAttribute(
      "aria-label",
      `Loss chart with ${train.length} training and ${valid.length} validation points; latest ${text || "none"}.`,
    );
  }

  // -- checkpoints -------------------------------------------------------------------------------------
  async function loadCheckpoints() {
    const page = await api(`${base}/checkpoints?limit=100`);
    if (!alive) return;
    exportsArea.drawSources(job, page.data);
    if (!page.data.length) {
      clear(checkpointsArea, h("p", { class: "muted" }, ACTIVE.has(job?.status) ? "No checkpoints yet: they appear as training saves them." : "This job saved no checkpoints."));
      return;
    }
    const cols = [
      ["train_loss", "Train loss"],
      ["valid_loss", "Valid loss"],
      ["full_valid_loss", "Full valid loss"],
      ["train_mean_token_accuracy", "Train accuracy"],
      ["valid_mean_token_accuracy", "Valid accuracy"],
    ].filter(([key]) => page.data.some((c) => typeof c.metrics?.[key] === "number"));
    clear(
      checkpointsArea,
      h(
        "table",
        { class: "table table-cards" },
        h("caption", { class: "visually-hidden" }, "Checkpoints, newest first"),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Step"), h("th", { scope: "col" }, "Checkpoint model"), cols.map(([, label]) => h("th", { scope: "col" }, label)), h("th", { scope: "col" }, "Saved"))),
        h(
          "tbody",
          {},
          page.data.map((c) =>
            h(
              "tr",
              { dataset: { step: String(c.step_number) } },
              h("td", { "data-label": "Step", class: "num" }, String(c.step_number)),
              h(
                "td",
                { "data-label": "Checkpoint model" },
                h("span", { class: "mono small break" }, c.fine_tuned_model_checkpoint),
                h(
                  "span",
                  { class: "row-actions" },
                  copyButton(c.fine_tuned_model_checkpoint, "Copy checkpoint model"),
                  h("a", { class: "btn btn-small btn-ghost", href: `${UI}/playground?model=${encodeURIComponent(c.fine_tuned_model_checkpoint)}`, "data-link": "", "aria-label": `Try checkpoint at step ${c.step_number} in the playground` }, "Try"),
                ),
              ),
              cols.map(([key, label]) => h("td", { "data-label": label, class: "num" }, formatNumber(c.metrics?.[key]))),
              h("td", { "data-label": "Saved", class: "nowrap" }, formatRelative(c.created_at)),
            ),
          ),
        ),
      ),
    );
  }

  // -- polling -----------------------------------------------------------------------------------------
  async function tick() {
    const [fresh, current] = await Promise.all([fetchNewEvents(), api(base)]);
    if (!alive) return false;
    job = current;
    if (fresh.length) addEvents(fresh);
    const statusChanged = job.status !== lastStatus;
    lastStatus = job.status;
    if (statusChanged) drawJob();
    else {
      updateProgress();
      drawInfo();
    }
    if (statusChanged || fresh.some((e) => /checkpoint/i.test(e.message))) await loadCheckpoints();
    if (statusChanged || exportsArea.active() || fresh.some((e) => e.message.startsWith("Export "))) await exportsArea.refresh();
    return ACTIVE.has(job.status) || exportsArea.active();
  }

  function updateProgress() {
    const bar = statusLine.querySelector(".progress");
    if (bar) setProgress(bar, job.step ?? 0, job.total_steps || 0);
    const text = statusLine.querySelector("#progress-text");
    if (text) text.textContent = progressText(job) + etaText(job);
  }

  const poll = poller(tick, POLL_MS);
  poll.stop();
  exportsArea.onCreated = () => poll.restart(); // follow the new export until it is done
  tick()
    .then((active) => {
      if (active && alive) poll.restart();
    })
    .catch((err) => {
      if (!alive) return;
      if (err.status === 404) {
        clear(main, h("h1", { tabindex: "-1" }, "Job not found"), h("p", {}, `There is no job ${jobId} in your organization. `, h("a", { href: `${UI}/jobs`, "data-link": "" }, "See your jobs"), "."));
        return;
      }
      clear(errorArea, alertBox(`Could not load the job: ${err.message}`));
    });

  return () => {
    alive = false;
    poll.stop();
    chart?.destroy();
  };
}

function etaText(job) {
  if (job.status === "running" && job.estimated_finish) return ` · finishes ${formatRelative(job.estimated_finish)}`;
  if (job.status === "queued") {
    const start = job.estimated_start_at ? ` · starts ${formatRelative(job.estimated_start_at)}` : "";
    return `${start}${job.queue_reason ? ` · ${job.queue_reason}` : ""}`;
  }
  return "";
}

function fact(label, ...value) {
  return h("div", {}, h("dt", {}, label), h("dd", {}, ...value));
}

function wide(node) {
  node.className = "wide";
  return node;
}

function fileLink(fileId) {
  return h("a", { href: `${UI}/files?file=${encodeURIComponent(fileId)}`, "data-link": "", class: "mono" }, fileId);
}

function makeChart(canvas) {
  if (!window.Chart) return null;
  const style = getComputedStyle(document.documentElement);
  const grid = style.getPropertyValue("--chart-grid").trim() || "#e5e7eb";
  const text = style.getPropertyValue("--text-muted").trim() || "#4b5563";
  return new window.Chart(canvas, {
    type: "line",
    data: {
      datasets: [
        // Dots only while there are few points; monotone curves never overshoot the measured values.
        { label: "Training loss", data: [], borderColor: TRAIN_COLOR, backgroundColor: TRAIN_COLOR, borderWidth: 2, pointRadius: (c) => (c.dataset.data.length > 40 ? 0 : 2.5), cubicInterpolationMode: "monotone" },
        { label: "Validation loss", data: [], borderColor: VALID_COLOR, backgroundColor: VALID_COLOR, borderWidth: 2, pointRadius: 3.5, borderDash: [6, 3], cubicInterpolationMode: "monotone" },
        // Reinforcement jobs: the grader's mean reward, on its own axis (a score, not a loss).
        { label: "Mean reward", data: [], hidden: true, yAxisID: "reward", borderColor: REWARD_COLOR, backgroundColor: REWARD_COLOR, borderWidth: 2, pointRadius: (c) => (c.dataset.data.length > 40 ? 0 : 2.5), cubicInterpolationMode: "monotone" },
        // mean − std, then mean + std filled down to it: the band of the step's rewards.
        { label: REWARD_BAND_LOWER, data: [], hidden: true, yAxisID: "reward", borderWidth: 0, pointRadius: 0, fill: false },
        { label: "Reward ± std", data: [], hidden: true, yAxisID: "reward", borderWidth: 0, pointRadius: 0, fill: "-1", backgroundColor: REWARD_BAND_COLOR, borderColor: REWARD_BAND_COLOR },
      ],
    },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      interaction: { mode: "nearest", axis: "x", intersect: false },
      scales: {
        x: { type: "linear", title: { display: true, text: "Step", color: text }, ticks: { precision: 0, color: text }, grid: { color: grid } },
        y: { title: { display: true, text: "Loss", color: text }, ticks: { color: text }, grid: { color: grid } },
        reward: { display: "auto", position: "right", title: { display: true, text: "Reward", color: text }, ticks: { color: text }, grid: { drawOnChartArea: false } },
      },
      plugins: {
        legend: { position: "bottom", labels: { color: text, usePointStyle: true, pointStyleWidth: 10, boxHeight: 7, padding: 16, filter: (item) => item.text !== REWARD_BAND_LOWER } },
        tooltip: { filter: (item) => item.datasetIndex < 3, callbacks: { title: (items) => `Step ${items[0].parsed.x}` } },
      },
    },
  });
}
