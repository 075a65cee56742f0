// Files: drag-and-drop upload with progress, the bad-line table of a rejected file, a preview, delete.
import { ApiError, UI, api, download, firstLines, listAll, request, uploadFile, uuid4 } from "../api.js";
import {
  alertBox,
  badge,
  clear,
  confirmButton,
  copyButton,
  emptyState,
  formatBytes,
  formatRelative,
  formatTime,
  h,
  pageHeader,
  progressBar,
  setProgress,
  toast,
} from "../dom.js";

const PREVIEW_COUNT = 5;
const FORMAT_LABELS = {
  chat: "Chat",
  prompt_completion: "Prompt / completion",
  preference: "Preference (DPO)",
  sharegpt: "ShareGPT",
  alpaca: "Alpaca",
};

export function formatLabel(format) {
  return FORMAT_LABELS[format] || format || "—";
}

export function render(main, { search }) {
  let alive = true;
  let files = [];
  let selectedId = search.get("file");
  const queue = [];
  let uploading = false;

  const input = h("input", {
    type: "file",
    id: "file-input",
    class: "visually-hidden",
    multiple: true,
    accept: ".jsonl,.json,.txt,application/jsonl,application/json,text/plain",
  });
  const uploads = h("ul", { class: "uploads", "aria-live": "polite", "aria-label": "Uploads" });
  const dropzone = h(
    "div",
    { class: "dropzone", id: "dropzone" },
    uploadIcon(),
    h("p", { class: "dropzone-title" }, "Drag and drop JSONL training files here"),
    h(
      "p",
      { class: "muted" },
      "Chat, prompt/completion, DPO preference, ShareGPT or Alpaca, one example per line. Files are checked line by line as they upload.",
    ),
    h("label", { for: "file-input", class: "btn btn-primary" }, "Choose files"),
    input,
  );

  const tableBody = h("tbody");
  const table = h(
    "table",
    { class: "table table-cards", id: "files-table" },
    h("caption", { class: "visually-hidden" }, "Your uploaded files"),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["Name", "Status", "Examples", "Size", "Uploaded"].map((name) => h("th", { scope: "col" }, name)),
      ),
    ),
    tableBody,
  );
  const listArea = h("div", { class: "table-wrap" }, h("p", { class: "muted" }, "Loading files…"));
  const detail = h("section", { class: "card file-detail", id: "file-detail", "aria-live": "polite", hidden: true });

  clear(
    main,
    pageHeader("Files"),
    h("section", { class: "card", "aria-label": "Upload" }, dropzone, uploads),
    h("div", { class: "files-layout" }, h("section", { class: "card", "aria-labelledby": "files-heading" }, h("h2", { id: "files-heading" }, "Uploaded files"), listArea), detail),
  );

  // -- uploads ---------------------------------------------------------------------------------------------
  function enqueue(fileList) {
    for (const file of fileList) queue.push(file);
    if (!uploading) drain();
  }

  async function drain() {
    uploading = true;
    while (queue.length && alive) await uploadOne(queue.shift());
    uploading = false;
  }

  // A file whose upload lost its answer (network error) keeps its Idempotency-Key: dropping the same file again
  // then returns the file the first upload created, if it did, instead of storing a second copy.
  const unanswered = new Map();

  async function uploadOne(file) {
    const identity = `${file.name}\u0000${file.size}\u0000${file.lastModified}`;
    const idempotencyKey = unanswered.get(identity) ?? uuid4();
    const bar = progressBar(0, file.size, `Upload of ${file.name}`);
    const state = h("span", { class: "upload-state" }, "Waiting…");
    const item = h(
      "li",
      { class: "upload", dataset: { name: file.name, state: "uploading" } },
      h("div", { class: "upload-head" }, h("span", { class: "upload-name" }, file.name), h("span", { class: "muted" }, formatBytes(file.size))),
      bar,
      state,
    );
    uploads.prepend(item);
    try {
      const created = await uploadFile(file, {
        idempotencyKey,
        onProgress(loaded, total, sent) {
          setProgress(bar, loaded, total);
          item.dataset.progress = bar.getAttribute("aria-valuenow");
          state.textContent = sent ? "Uploaded · validating…" : `Uploading… ${bar.getAttribute("aria-valuenow")}%`;
        },
      });
      unanswered.delete(identity);
      setProgress(bar, 1, 1);
      item.dataset.state = "processed";
      item.dataset.fileId = created.id;
      state.replaceChildren(badge("processed"), ` ${created.example_count} examples · ${formatLabel(created.data_format)}`);
      toast(`${file.name} is ready for training`);
      await refresh();
      select(created.id);
    } catch (err) {
      if (err instanceof ApiError && err.status === 0) unanswered.set(identity, idempotencyKey);
      else unanswered.delete(identity);
      item.dataset.state = "error";
      item.classList.add("upload-error");
      if (err instanceof ApiError && err.fileId) {
        setProgress(bar, 1, 1);
        item.dataset.fileId = err.fileId;
        state.replaceChildren(badge("error"), " ", rejectionSummary(err.message));
        await refresh();
        select(err.fileId);
      } else {
        state.textContent = err.message;
      }
    }
  }

  input.addEventListener("change", () => {
    enqueue([...input.files]);
    input.value = "";
  });
  for (const type of ["dragenter", "dragover"]) {
    dropzone.addEventListener(type, (event) => {
      event.preventDefault();
      dropzone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    dropzone.addEventListener(type, () => dropzone.classList.remove("dragging"));
  }
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    const dropped = [...(event.dataTransfer?.files || [])];
    if (dropped.length) enqueue(dropped);
  });

  // -- list ------------------------------------------------------------------------------------------------
  async function refresh() {
    try {
      files = await listAll("/v1/files", { limit: 1000, max: 5000 });
    } catch (err) {
      if (alive) clear(listArea, alertBox(`Could not load files: ${err.message}`));
      return;
    }
    if (!alive) return;
    if (!files.length) {
      clear(listArea, emptyState("No files yet", "Upload a JSONL file above to get started."));
      return;
    }
    clear(tableBody, files.map(row));
    clear(listArea, table);
  }

  function row(file) {
    const open = h(
      "button",
      { type: "button", class: "link-button", on: { click: () => select(file.id) }, "aria-label": `Show ${file.filename}` },
      file.filename,
    );
    const results = file.purpose !== "fine-tune";
    return h(
      "tr",
      { dataset: { fileId: file.id, status: file.status }, class: file.id === selectedId ? "selected" : "" },
      h("td", { "data-label": "Name" }, open, results ? h("span", { class: "tag" }, file.purpose) : null, h("div", { class: "mono muted small" }, file.id)),
      h("td", { "data-label": "Status" }, badge(file.status)),
      h(
        "td",
        { "data-label": "Examples" },
        h("span", { class: "num" }, file.example_count ?? "—"),
        h("div", { class: "muted small" }, results ? "CSV" : formatLabel(file.data_format)),
      ),
      h("td", { "data-label": "Size", class: "num" }, formatBytes(file.bytes)),
      h("td", { "data-label": "Uploaded" }, h("time", { title: formatTime(file.created_at) }, formatRelative(file.created_at))),
    );
  }

  // -- detail: report, preview, delete ------------------------------------------------------------------
  async function select(fileId) {
    selectedId = fileId;
    const url = new URL(location.href);
    url.searchParams.set("file", fileId);
    history.replaceState(null, "", url);
    for (const tr of tableBody.querySelectorAll("tr")) tr.classList.toggle("selected", tr.dataset.fileId === fileId);
    let file = files.find((f) => f.id === fileId);
    if (!file) {
      try {
        file = await api(`/v1/files/${encodeURIComponent(fileId)}`);
      } catch (err) {
        detail.hidden = false;
        clear(detail, alertBox(err.message));
        return;
      }
    }
    if (!alive || selectedId !== fileId) return;
    detail.hidden = false;
    detail.dataset.fileId = file.id;
    const body = h("div", { class: "file-detail-body" }, h("p", { class: "muted" }, "Loading…"));
    const actions = h("div", { class: "page-actions" });
    if (file.status === "processed" && file.purpose === "fine-tune") {
      actions.append(h("a", { class: "btn btn-primary", href: `${UI}/jobs/new?training_file=${encodeURIComponent(file.id)}`, "data-link": "" }, "Fine-tune with this file"));
    }
    if (file.status !== "error") {
      actions.append(
        h("button", { type: "button", class: "btn", on: { click: () => download(`/v1/files/${encodeURIComponent(file.id)}/content`, file.filename).catch((e) => toast(e.message, "error")) } }, "Download"),
      );
    }
    actions.append(
      confirmButton("Delete", "Confirm delete", async () => {
        try {
          await request(`/v1/files/${encodeURIComponent(file.id)}`, { method: "DELETE" });
          toast(`Deleted ${file.filename}`);
          detail.hidden = true;
          selectedId = null;
          const url2 = new URL(location.href);
          url2.searchParams.delete("file");
          history.replaceState(null, "", url2);
          await refresh();
        } catch (err) {
          toast(err.message, "error");
        }
      }),
    );
    clear(
      detail,
      h("div", { class: "detail-head" }, h("h2", {}, file.filename), badge(file.status)),
      h(
        "dl",
        { class: "facts" },
        wideFact("ID", h("span", { class: "mono" }, file.id), copyButton(file.id, "Copy file ID")),
        fact("Format", file.purpose === "fine-tune" ? formatLabel(file.data_format) : file.purpose),
        fact("Examples", file.example_count ?? "—"),
        fact("Size", formatBytes(file.bytes)),
        fact("Uploaded", formatTime(file.created_at)),
      ),
      actions,
      body,
    );
    if (file.status === "error") await showReport(file, body);
    else if (file.purpose === "fine-tune") await showPreview(file, body);
    else clear(body);
  }

  async function showReport(file, body) {
    let report;
    try {
      report = await api(`/v1/files/${encodeURIComponent(file.id)}/validation`);
    } catch (err) {
      clear(body, alertBox(`Could not load the validation report: ${err.message}`));
      return;
    }
    if (!alive || selectedId !== file.id) return;
    const shown = report.errors.length;
    const summary =
      report.error_count > shown
        ? `${report.error_count} problems found; the first ${shown} are listed.`
        : `${report.error_count} ${report.error_count === 1 ? "problem" : "problems"} found.`;
    clear(
      body,
      h("h3", {}, "Why this file was rejected"),
      alertBox(`${summary} Fix these lines and upload the file again.`, "error"),
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { class: "table table-cards bad-lines", id: "bad-lines" },
          h("caption", { class: "visually-hidden" }, `Bad lines in ${file.filename}`),
          h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Line"), h("th", { scope: "col" }, "Field"), h("th", { scope: "col" }, "Reason"))),
          h(
            "tbody",
            {},
            report.errors.map((e) =>
              h(
                "tr",
                { dataset: { line: String(e.line), code: e.code } },
                h("td", { "data-label": "Line", class: "num" }, e.line ? String(e.line) : "—"),
                h("td", { "data-label": "Field" }, e.field ? h("code", {}, e.field) : h("span", { class: "muted" }, "whole line")),
                h("td", { "data-label": "Reason" }, reason(e), h("span", { class: "code-tag" }, e.code)),
              ),
            ),
          ),
        ),
      ),
    );
  }

  async function showPreview(file, body) {
    let lines;
    try {
      lines = await firstLines(`/v1/files/${encodeURIComponent(file.id)}/content`, { count: PREVIEW_COUNT });
    } catch (err) {
      clear(body, alertBox(`Could not load a preview: ${err.message}`));
      return;
    }
    if (!alive || selectedId !== file.id) return;
    const examples = lines.map((line, i) => {
      try {
        return renderExample(JSON.parse(line), i);
      } catch {
        return h("pre", { class: "example" }, line);
      }
    });
    clear(
      body,
      h("h3", {}, `Preview: the first ${examples.length} of ${file.example_count ?? "?"} examples`),
      h("ol", { class: "examples", id: "preview" }, examples.map((ex) => h("li", {}, ex))),
    );
  }

  refresh().then(() => {
    if (selectedId && alive) select(selectedId);
  });
  return () => {
    alive = false;
  };
}

// "Invalid training file: line 3: ... (and 3 more errors) 4 errors in total; full report: GET ..." -> the middle.
function rejectionSummary(message) {
  return message
    .replace(/^Invalid training file:\s*/, "")
    .replace(/[;.]?\s*full report:.*$/s, "")
    .trim();
}

function fact(label, ...value) {
  return h("div", {}, h("dt", {}, label), h("dd", {}, ...value));
}

function wideFact(label, ...value) {
  const node = fact(label, ...value);
  node.className = "wide";
  return node;
}

// "line 3: messages[1].role: unknown role 'bot' ..." -> "unknown role 'bot' ..." (line and field have columns).
function reason(error) {
  let text = error.message || "";
  text = text.replace(/^line \d+:\s*/, "");
  if (error.field && text.startsWith(`${error.field}:`)) text = text.slice(error.field.length + 1).trim();
  return text;
}

function contentText(content) {
  if (content === null || content === undefined) return "";
  if (typeof content === "string") return content;
  if (Array.isArray(content)) return content.map((part) => part.text ?? JSON.stringify(part)).join("");
  return JSON.stringify(content);
}

function turn(role, content, extra = {}) {
  return h(
    "div",
    { class: `turn turn-${String(role).replace(/[^a-z_]/gi, "")}${extra.muted ? " turn-muted" : ""}` },
    h("span", { class: "turn-role" }, extra.label || role),
    h("span", { class: "turn-content" }, contentText(content) || (extra.empty ?? "")),
  );
}

function renderMessages(messages) {
  return (messages || []).map((m) =>
    turn(m.role, m.content ?? (m.tool_calls ? JSON.stringify(m.tool_calls) : ""), {
      muted: m.weight === 0,
      label: m.weight === 0 ? `${m.role} (not trained)` : m.role,
    }),
  );
}

export function renderExample(example) {
  let parts;
  if (Array.isArray(example.messages)) parts = renderMessages(example.messages);
  else if ("prompt" in example && "completion" in example)
    parts = [turn("user", example.prompt, { label: "prompt" }), turn("assistant", example.completion, { label: "completion" })];
  else if (example.input && example.preferred_output)
    parts = [
      ...renderMessages(example.input.messages),
      ...renderMessages(example.preferred_output).map((n) => (n.querySelector(".turn-role").textContent = "preferred", n)),
      ...renderMessages(example.non_preferred_output).map((n) => {
        n.classList.add("turn-rejected");
        n.querySelector(".turn-role").textContent = "rejected";
        return n;
      }),
    ];
  else if (Array.isArray(example.conversations))
    parts = example.conversations.map((c) => turn(c.from === "gpt" ? "assistant" : c.from === "human" ? "user" : c.from, c.value, { label: c.from }));
  else if ("instruction" in example && "output" in example)
    parts = [
      turn("user", example.input ? `${example.instruction}\n\n${example.input}` : example.instruction, { label: "instruction" }),
      turn("assistant", example.output, { label: "output" }),
    ];
  else parts = [h("pre", {}, JSON.stringify(example, null, 2))];
  return h("div", { class: "example" }, parts);
}

function uploadIcon() {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("class", "dropzone-icon");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", "M12 16V4m0 0-4 4m4-4 4 4M4 16v2a2 2 0 0 0 2 2h12a2 2 0 0 0 2-2v-2");
  path.setAttribute("fill", "none");
  path.setAttribute("stroke", "currentColor");
  path.setAttribute("stroke-width", "1.8");
  path.setAttribute("stroke-linecap", "round");
  path.setAttribute("stroke-linejoin", "round");
  svg.append(path);
  return svg;
}
