// The job page's Exports card: export the fine-tuned model (or a checkpoint) as a PEFT adapter zip, a merged
// 16-bit model or a GGUF file, follow the worker making and checking it, and download the file.
import { api, download } from "../api.js";
import { badge, clear, formatBytes, formatRelative, h, toast } from "../dom.js";

const FORMATS = [
  ["adapter", "Adapter (PEFT zip)"],
  ["merged", "Merged model (16-bit zip)"],
  ["gguf", "GGUF"],
];
const ACTIVE_EXPORT = new Set(["queued", "running"]);

export function exportsCard(base) {
  let exports = [];
  let sourcesKey = null;
  const format = h("select", { id: "export-format", "aria-label": "Export format" }, FORMATS.map(([value, label]) => h("option", { value }, label)));
  const source = h("select", { id: "export-source", "aria-label": "What to export" });
  const button = h("button", { type: "button", class: "btn btn-primary", id: "export-button", on: { click: () => create() } }, "Export");
  const hint = h("p", { class: "muted small", id: "export-hint" });
  const list = h("div", { class: "table-wrap", id: "exports" });
  const section = h(
    "section",
    { class: "card span-2", "aria-labelledby": "exports-heading" },
    h("h2", { id: "exports-heading" }, "Exports"),
    h("div", { class: "export-form" }, format, source, button),
    hint,
    list,
  );
  let onCreated = () => {};

  // The final model once the job succeeded, and every kept checkpoint.
  function drawSources(job, checkpoints) {
    const options = [];
    if (job.status === "succeeded" && job.fine_tuned_model) options.push(["", "Fine-tuned model"]);
    for (const c of checkpoints) options.push([String(c.step_number), `Checkpoint at step ${c.step_number}`]);
    const key = JSON.stringify(options);
    if (key === sourcesKey) return;
    sourcesKey = key;
    const selected = source.value;
    clear(source, options.map(([value, label]) => h("option", { value, selected: value === selected }, label)));
    button.disabled = !options.length;
    hint.textContent = options.length
      ? "The worker merges, converts and checks the export before offering it; large models take minutes."
      : "Exports become available once the job succeeds or saves a checkpoint.";
  }

  async function create() {
    button.disabled = true;
    try {
      const body = { format: format.value };
      if (source.value) body.checkpoint = Number(source.value);
      const made = await api(`${base}/exports`, { method: "POST", body });
      toast(`Export ${made.format} queued`);
      await refresh();
      onCreated();
    } catch (err) {
      toast(err.message, "error");
    } finally {
      button.disabled = !source.options.length;
    }
  }

  function downloadButton(e) {
    return h(
      "button",
      {
        type: "button",
        class: "btn btn-small",
        dataset: { fileId: e.file_id },
        "aria-label": `Download ${e.format} export ${e.id}`,
        on: {
          click: async (event) => {
            const target = event.currentTarget;
            target.disabled = true;
            try {
              const file = await api(`/v1/files/${encodeURIComponent(e.file_id)}`);
              await download(`/v1/files/${encodeURIComponent(e.file_id)}/content`, file.filename);
            } catch (err) {
              toast(err.message, "error");
            } finally {
              target.disabled = false;
            }
          },
        },
      },
      "Download",
    );
  }

  function draw() {
    if (!exports.length) {
      clear(list, h("p", { class: "muted" }, "No exports yet."));
      return;
    }
    clear(
      list,
      h(
        "table",
        { class: "table table-cards" },
        h("caption", { class: "visually-hidden" }, "Exports, newest first"),
        h("thead", {}, h("tr", {}, ["Format", "Of", "Status", "Size", "Requested", ""].map((label) => h("th", { scope: "col" }, label)))),
        h(
          "tbody",
          {},
          exports.map((e) =>
            h(
              "tr",
              { dataset: { exportId: e.id, status: e.status } },
              h("td", { "data-label": "Format" }, e.format),
              h("td", { "data-label": "Of" }, e.checkpoint_step === null ? "Fine-tuned model" : `Step ${e.checkpoint_step}`),
              h("td", { "data-label": "Status" }, badge(e.status)),
              h("td", { "data-label": "Size", class: "num" }, formatBytes(e.bytes)),
              h("td", { "data-label": "Requested", class: "nowrap" }, formatRelative(e.created_at)),
              h("td", { "data-label": "" }, e.status === "succeeded" && e.file_id ? downloadButton(e) : e.error ? h("span", { class: "small" }, e.error.message) : null),
            ),
          ),
        ),
      ),
    );
  }

  async function refresh() {
    exports = (await api(`${base}/exports?limit=100`)).data;
    draw();
  }

  return {
    section,
    drawSources,
    refresh,
    active: () => exports.some((e) => ACTIVE_EXPORT.has(e.status)),
    set onCreated(fn) {
      onCreated = fn;
    },
  };
}
