// New job: base model, files, method, hyperparameters ("auto" shown as auto) and a live VRAM estimate.
import { ApiError, UI, api, listAll, uuid4 } from "../api.js";
import { alertBox, clear, formatMb, formatNumber, h, pageHeader } from "../dom.js";
import { formatLabel } from "./files.js";

const FORMATS = {
  supervised: ["chat", "prompt_completion", "sharegpt", "alpaca"],
  dpo: ["preference"],
};

// [name, label, kind, help, methods]; kind: int | float | modules | a list of choices. OpenAI's fields first.
const BASIC = [
  ["n_epochs", "Epochs", "int", "Passes over the training file."],
  ["batch_size", "Batch size", "int", "Examples per optimizer step."],
  ["learning_rate_multiplier", "Learning rate multiplier", "float", "Scales the size-aware LoRA learning rate."],
  ["beta", "Beta", "float", "How strongly DPO keeps the model near the base.", ["dpo"]],
];
const ADVANCED = [
  ["lora_rank", "LoRA rank", "int", "Adapter size; 16 when auto."],
  ["lora_alpha", "LoRA alpha", "int", "2 × rank when auto."],
  ["lora_dropout", "LoRA dropout", "float", "0 when auto."],
  ["target_modules", "Target modules", "modules", "all-linear, or module names separated by commas."],
  ["max_seq_length", "Max sequence length", "int", "Tokens; longer examples fail the job with their line numbers."],
  ["learning_rate", "Learning rate", "float", "Absolute; overrides the multiplier."],
  ["warmup_ratio", "Warmup ratio", "float", "Share of steps spent warming up."],
  ["eval_every_steps", "Evaluate every (steps)", "int", "Validation loss interval."],
  ["checkpoint_every_steps", "Checkpoint every (steps)", "int", "Checkpoint interval."],
  ["quantization", "Quantization", ["auto", "none", "4bit"], "4bit is QLoRA: the frozen base in 4 bits, for much less memory."],
];
const OPENAI_FIELDS = new Set(["n_epochs", "batch_size", "learning_rate_multiplier", "beta"]);

export function render(main, { search, navigate }) {
  let alive = true;
  let files = [];
  let estimateTimer = null;
  let estimateController = null;

  const formError = h("div", { id: "form-error" });
  const model = h("select", { id: "model", name: "model", required: true }, h("option", { value: "" }, "Loading…"));
  const training = h("select", { id: "training_file", name: "training_file", required: true });
  const validation = h("select", { id: "validation_file", name: "validation_file" });
  const fileHint = h("p", { class: "help", id: "files-help" });
  const methodInputs = ["supervised", "dpo"].map((value) =>
    h("input", { type: "radio", name: "method", id: `method-${value}`, value, checked: value === "supervised" }),
  );
  const method = () => methodInputs.find((i) => i.checked).value;

  const fields = new Map();
  const hpField = ([name, label, kind, help, methods]) => {
    if (Array.isArray(kind)) return choiceField(name, label, kind, help, methods);
    const input = h("input", {
      id: `hp-${name}`,
      name,
      type: "text",
      value: "auto",
      inputmode: kind === "modules" ? "text" : kind === "int" ? "numeric" : "decimal",
      autocomplete: "off",
      spellcheck: "false",
      "aria-describedby": `hp-${name}-help hp-${name}-error`,
    });
    const autoButton = h("button", { type: "button", class: "btn btn-small btn-ghost auto-reset", "aria-label": `Set ${label} to auto`, hidden: true }, "auto");
    const error = h("span", { class: "field-error", id: `hp-${name}-error` });
    const wrapper = h(
      "div",
      { class: "field hp-field", dataset: { name, methods: (methods || ["supervised", "dpo"]).join(" ") } },
      h("label", { for: `hp-${name}` }, label),
      h("div", { class: "input-with-action" }, input, autoButton),
      h("span", { class: "help", id: `hp-${name}-help` }, help),
      error,
    );
    const sync = () => {
      const isAuto = input.value.trim().toLowerCase() === "auto" || input.value.trim() === "";
      wrapper.classList.toggle("is-auto", isAuto);
      autoButton.hidden = isAuto;
    };
    input.addEventListener("input", sync);
    input.addEventListener("blur", () => {
      if (!input.value.trim()) input.value = "auto";
      sync();
    });
    autoButton.addEventListener("click", () => {
      input.value = "auto";
      sync();
      input.focus();
      changed();
    });
    sync();
    fields.set(name, { input, error, kind, wrapper, label });
    return wrapper;
  };

  function choiceField(name, label, choices, help, methods) {
    const input = h("select", { id: `hp-${name}`, name, "aria-describedby": `hp-${name}-help hp-${name}-error` }, choices.map((c) => h("option", { value: c }, c)));
    const error = h("span", { class: "field-error", id: `hp-${name}-error` });
    const wrapper = h(
      "div",
      { class: "field hp-field", dataset: { name, methods: (methods || ["supervised", "dpo"]).join(" ") } },
      h("label", { for: `hp-${name}` }, label),
      input,
      h("span", { class: "help", id: `hp-${name}-help` }, help),
      error,
    );
    const sync = () => wrapper.classList.toggle("is-auto", input.value === "auto");
    input.addEventListener("change", sync);
    sync();
    fields.set(name, { input, error, kind: "choice", wrapper, label });
    return wrapper;
  }

  const suffix = h("input", { id: "suffix", name: "suffix", type: "text", maxlength: "64", autocomplete: "off", placeholder: "e.g. support-bot", "aria-describedby": "suffix-help" });
  const seed = h("input", { id: "seed", name: "seed", type: "text", inputmode: "numeric", autocomplete: "off", placeholder: "random", "aria-describedby": "seed-help" });
  const submit = h("button", { type: "submit", class: "btn btn-primary" }, "Start fine-tuning");
  const estimateBox = h("div", { class: "estimate", id: "estimate", "aria-live": "polite" }, h("p", { class: "muted" }, "Choose a model and a training file to see how much GPU memory the job needs."));
  const requestPreview = h("pre", { class: "code-block", id: "request-preview" });

  const form = h(
    "form",
    { class: "job-form", novalidate: true },
    formError,
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Model and data"),
      h("div", { class: "field" }, h("label", { for: "model" }, "Base model"), model, h("span", { class: "field-error", id: "model-error" })),
      h(
        "fieldset",
        { class: "field method" },
        h("legend", {}, "Method"),
        h(
          "div",
          { class: "segmented" },
          h("label", { for: "method-supervised" }, methodInputs[0], h("span", {}, "Supervised (SFT)")),
          h("label", { for: "method-dpo" }, methodInputs[1], h("span", {}, "Preference (DPO)")),
        ),
      ),
      h("div", { class: "field" }, h("label", { for: "training_file" }, "Training file"), training, h("span", { class: "field-error", id: "training_file-error" })),
      h("div", { class: "field" }, h("label", { for: "validation_file" }, "Validation file (optional)"), validation, h("span", { class: "field-error", id: "validation_file-error" })),
      fileHint,
    ),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Hyperparameters"),
      h("p", { class: "help" }, "Leave a value on ", h("strong", {}, "auto"), " and ftserve picks it from your data and the model's size when the job starts."),
      h("div", { class: "grid-fields" }, BASIC.map(hpField)),
      h(
        "details",
        { class: "advanced" },
        h("summary", {}, "LoRA and training options"),
        h("div", { class: "grid-fields" }, ADVANCED.map(hpField)),
      ),
    ),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Name and seed"),
      h(
        "div",
        { class: "grid-fields" },
        h("div", { class: "field" }, h("label", { for: "suffix" }, "Suffix (optional)"), suffix, h("span", { class: "help", id: "suffix-help" }, "Becomes part of the model name."), h("span", { class: "field-error", id: "suffix-error" })),
        h("div", { class: "field" }, h("label", { for: "seed" }, "Seed (optional)"), seed, h("span", { class: "help", id: "seed-help" }, "Same seed, same data: the same run."), h("span", { class: "field-error", id: "seed-error" })),
      ),
    ),
    h("div", { class: "form-actions" }, submit, h("a", { class: "btn btn-ghost", href: `${UI}/jobs`, "data-link": "" }, "Cancel")),
  );

  clear(
    main,
    pageHeader("New fine-tuning job"),
    h(
      "div",
      { class: "form-layout" },
      form,
      h(
        "aside",
        { class: "form-aside", "aria-label": "Estimate and request" },
        h("section", { class: "card sticky" }, h("h2", {}, "Estimated GPU memory"), estimateBox, h("details", { class: "request" }, h("summary", {}, "API request"), requestPreview)),
      ),
    ),
  );

  // -- building the request ----------------------------------------------------------------------------------
  function parseField(name) {
    const { input, kind, label } = fields.get(name);
    const raw = input.value.trim();
    if (!raw || raw.toLowerCase() === "auto") return { value: "auto" };
    if (kind === "choice") return { value: raw };
    if (kind === "modules") {
      if (raw === "all-linear") return { value: raw };
      const names = raw.split(/[\s,]+/).filter(Boolean);
      return names.length ? { value: names } : { value: "auto" };
    }
    const value = Number(raw);
    if (!Number.isFinite(value)) return { error: `${label} must be a number or auto.` };
    if (kind === "int" && !Number.isInteger(value)) return { error: `${label} must be a whole number or auto.` };
    return { value };
  }

  function buildRequest() {
    const errors = {};
    const hyperparameters = {};
    const type = method();
    for (const [name, field] of fields) {
      if (!field.wrapper.dataset.methods.includes(type)) continue;
      const parsed = parseField(name);
      if (parsed.error) errors[`hp-${name}`] = parsed.error;
      else if (parsed.value !== "auto" || OPENAI_FIELDS.has(name)) hyperparameters[name] = parsed.value;
    }
    const body = { model: model.value, training_file: training.value, method: { type, [type]: { hyperparameters } } };
    if (validation.value) body.validation_file = validation.value;
    if (suffix.value.trim()) body.suffix = suffix.value.trim();
    if (seed.value.trim()) {
      const n = Number(seed.value.trim());
      if (!Number.isInteger(n) || n < 0) errors.seed = "Seed must be a whole number ≥ 0.";
      else body.seed = n;
    }
    return { body, errors };
  }

  function showFieldErrors(errors) {
    for (const node of form.querySelectorAll(".field-error")) node.textContent = "";
    for (const node of form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
    for (const [id, message] of Object.entries(errors)) {
      const control = form.querySelector(`#${CSS.escape(id)}`);
      const slot = form.querySelector(`#${CSS.escape(id)}-error`);
      if (control) control.setAttribute("aria-invalid", "true");
      if (slot) slot.textContent = message;
      if (control?.closest("details")) control.closest("details").open = true;
    }
  }

  // The API names the bad field in `param`: show the message next to that control.
  function controlForParam(param) {
    if (!param) return null;
    const hp = param.match(/hyperparameters\.([a-z_]+)/);
    if (hp && fields.has(hp[1])) return `hp-${hp[1]}`;
    const top = param.split(".")[0];
    return ["model", "training_file", "validation_file", "suffix", "seed"].includes(top) ? top : null;
  }

  // -- live estimate -----------------------------------------------------------------------------------------
  function changed() {
    const { body, errors } = buildRequest();
    requestPreview.textContent = `POST /v1/fine_tuning/jobs\n${JSON.stringify(body, null, 2)}`;
    showFieldErrors(errors);
    clearTimeout(estimateTimer);
    if (!body.model || !body.training_file || Object.keys(errors).length) {
      estimateBox.dataset.state = "idle";
      clear(estimateBox, h("p", { class: "muted" }, Object.keys(errors).length ? "Fix the highlighted fields to update the estimate." : "Choose a model and a training file to see how much GPU memory the job needs."));
      return;
    }
    estimateBox.classList.add("updating");
    estimateTimer = setTimeout(() => estimate(body), 250);
  }

  async function estimate(body) {
    estimateController?.abort();
    estimateController = new AbortController();
    try {
      const result = await api("/v1/fine_tuning/estimates", { method: "POST", body, signal: estimateController.signal });
      if (!alive) return;
      renderEstimate(result);
    } catch (err) {
      if (err.name === "AbortError" || !alive) return;
      estimateBox.dataset.state = "error";
      clear(
        estimateBox,
        err instanceof ApiError && err.status === 404 && err.code === "unknown_url"
          ? h("p", { class: "muted" }, "This server does not offer pre-flight estimates.")
          : alertBox(err.message, "warning"),
      );
    } finally {
      estimateBox.classList.remove("updating");
    }
  }

  function renderEstimate(result) {
    estimateBox.dataset.state = "ready";
    estimateBox.dataset.vramMb = String(result.estimated_vram_mb ?? "");
    const hp = result.hyperparameters || {};
    const facts = [];
    const add = (label, value) => value !== undefined && value !== null && value !== "" && facts.push(h("div", {}, h("dt", {}, label), h("dd", {}, value)));
    add("Total steps", formatNumber(hp.total_steps));
    add("Epochs", formatNumber(hp.n_epochs));
    add("Batch size", formatNumber(hp.batch_size));
    add("Max sequence length", formatNumber(hp.max_seq_length));
    add("LoRA rank", formatNumber(hp.lora_rank));
    add("Trainable parameters", formatNumber(result.trainable_parameters));
    // placeable: true = a live GPU can hold it, false = GPUs are live and none can, null = no live GPU worker.
    let placement;
    if (result.placeable === false) {
      placement = alertBox("No live GPU is large enough for this job: it would fail. Lower the batch size or sequence length, or add a bigger GPU.", "warning");
    } else if (result.placeable === null || result.placeable === undefined) {
      placement = h("p", { class: "help" }, `No GPU worker is live. A CPU-only worker needs about ${formatMb(result.cpu_ram_mb)} of RAM for it.`);
    } else {
      placement = h(
        "div",
        { class: "fits" },
        h("p", { class: "help" }, result.gpu_class ? h("span", {}, "Best fit now: ", h("strong", {}, result.gpu_class)) : "Fits on:"),
        h(
          "ul",
          { class: "breakdown" },
          (result.fits || []).map((fit) =>
            h("li", {}, h("span", {}, `${fit.gpu_class} (${formatMb(fit.total_mb)})`), h("span", { class: "num" }, `${fit.free_now} of ${fit.devices} free`)),
          ),
        ),
      );
    }
    const parts = Object.entries(result.breakdown || {})
      .filter(([, v]) => typeof v === "number" && v > 0)
      .map(([k, v]) => h("li", {}, h("span", {}, k.replace(/_mb$/, "").replaceAll("_", " ")), h("span", { class: "num" }, formatMb(v))));
    clear(
      estimateBox,
      h("p", { class: "estimate-figure" }, h("span", { id: "estimate-vram" }, formatMb(result.estimated_vram_mb)), h("span", { class: "muted" }, " reserved on a GPU")),
      placement,
      facts.length ? h("dl", { class: "facts compact" }, facts) : null,
      parts.length ? h("details", {}, h("summary", {}, "Breakdown"), h("ul", { class: "breakdown" }, parts)) : null,
      (result.notes || []).map((note) => h("p", { class: "help" }, note)),
    );
  }

  // -- choices -----------------------------------------------------------------------------------------------
  function fillFiles() {
    const type = method();
    const usable = files.filter((f) => f.status === "processed" && f.purpose === "fine-tune" && FORMATS[type].includes(f.data_format));
    const keep = (select, fallback) => select.value || fallback;
    const wantTraining = keep(training, search.get("training_file"));
    const wantValidation = keep(validation, search.get("validation_file"));
    const option = (f) => h("option", { value: f.id }, `${f.filename} · ${f.example_count} examples · ${formatLabel(f.data_format)}`);
    clear(training, h("option", { value: "" }, usable.length ? "Choose a training file" : "No suitable files"), usable.map(option));
    clear(validation, h("option", { value: "" }, "None"), usable.map(option));
    if (usable.some((f) => f.id === wantTraining)) training.value = wantTraining;
    if (usable.some((f) => f.id === wantValidation)) validation.value = wantValidation;
    clear(
      fileHint,
      usable.length
        ? `${type === "dpo" ? "DPO trains on preference data" : "SFT trains on chat, prompt/completion, ShareGPT or Alpaca data"}; other files are hidden.`
        : h("span", {}, `No ${type === "dpo" ? "preference" : "SFT"} files yet: `, h("a", { href: `${UI}/files`, "data-link": "" }, "upload one"), "."),
    );
    for (const [, field] of fields) field.wrapper.hidden = !field.wrapper.dataset.methods.includes(type);
  }

  async function load() {
    try {
      const [models, allFiles] = await Promise.all([api("/v1/models"), listAll("/v1/files", { limit: 1000, max: 5000 })]);
      if (!alive) return;
      files = allFiles;
      const bases = models.data.filter((m) => !m.id.startsWith("ft:"));
      clear(model, bases.length ? null : h("option", { value: "" }, "No base models registered"), bases.map((m) => h("option", { value: m.id }, m.id)));
      const wanted = search.get("model");
      if (wanted && bases.some((m) => m.id === wanted)) model.value = wanted;
      if (search.get("method") === "dpo") methodInputs[1].checked = true;
      fillFiles();
      if (!bases.length) formError.replaceChildren(alertBox("No base models are registered on this server. An admin adds them with `ftserve models add`.", "warning"));
      changed();
    } catch (err) {
      if (alive) formError.replaceChildren(alertBox(`Could not load models and files: ${err.message}`));
    }
  }

  form.addEventListener("input", changed);
  form.addEventListener("change", (event) => {
    if (event.target.name === "method") fillFiles();
    changed();
  });
  // One Idempotency-Key per distinct request: resubmitting the same form after a lost response ("could not
  // be reached") returns the job the first submit created instead of starting a second one.
  let sent = { json: "", key: "" };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    formError.replaceChildren();
    const { body, errors } = buildRequest();
    if (!body.model) errors.model = "Choose a base model.";
    if (!body.training_file) errors.training_file = "Choose a training file.";
    showFieldErrors(errors);
    if (Object.keys(errors).length) {
      form.querySelector("[aria-invalid]")?.focus();
      return;
    }
    submit.disabled = true;
    submit.textContent = "Starting…";
    try {
      const json = JSON.stringify(body);
      if (json !== sent.json) sent = { json, key: uuid4() };
      const job = await api("/v1/fine_tuning/jobs", { method: "POST", body, headers: { "Idempotency-Key": sent.key } });
      navigate(`/jobs/${encodeURIComponent(job.id)}`);
    } catch (err) {
      const control = err instanceof ApiError ? controlForParam(err.param) : null;
      if (control) {
        showFieldErrors({ [control]: err.message });
        form.querySelector(`#${CSS.escape(control)}`)?.focus();
      }
      formError.replaceChildren(alertBox(err.message));
      submit.disabled = false;
      submit.textContent = "Start fine-tuning";
    }
  });

  load();
  return () => {
    alive = false;
    clearTimeout(estimateTimer);
    estimateController?.abort();
  };
}
