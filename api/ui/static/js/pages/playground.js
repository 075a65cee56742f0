// Playground: chat with a base or ft: model, tokens streaming in; side by side sends one prompt to two models.
import { api, streamChat } from "../api.js";
import { alertBox, clear, h, pageHeader } from "../dom.js";

// ft:{base}:{org}:{suffix}:{job} -> base (checkpoint names add :ckpt-step-N at the end).
export function baseOf(modelId) {
  return modelId.startsWith("ft:") ? modelId.split(":")[1] : modelId;
}

export function render(main, { search }) {
  let alive = true;
  let models = [];
  const controllers = new Set();

  const modeInputs = ["single", "compare"].map((value) =>
    h("input", { type: "radio", name: "mode", id: `mode-${value}`, value, checked: value === (search.get("compare") ? "compare" : "single") }),
  );
  const temperature = h("input", { id: "temperature", type: "number", min: "0", max: "2", step: "0.1", value: "0" });
  const maxTokens = h("input", { id: "max-tokens", type: "number", min: "1", max: "4096", step: "1", value: "256" });
  const system = h("textarea", { id: "system-prompt", rows: "2", placeholder: "Optional instructions for every reply" });
  const prompt = h("textarea", { id: "prompt", rows: "3", placeholder: "Send a message…", "aria-describedby": "prompt-help" });
  const send = h("button", { type: "submit", class: "btn btn-primary", id: "send" }, "Send");
  const stop = h("button", { type: "button", class: "btn", id: "stop", hidden: true }, "Stop");
  const clearButton = h("button", { type: "button", class: "btn btn-ghost", id: "clear-chat" }, "Clear");
  const notice = h("div");
  const panes = h("div", { class: "panes" });
  const columns = [makeColumn(0), makeColumn(1)];

  const settings = h(
    "details",
    { class: "settings" },
    h("summary", {}, "Settings"),
    h(
      "div",
      { class: "grid-fields" },
      h("div", { class: "field" }, h("label", { for: "temperature" }, "Temperature"), temperature),
      h("div", { class: "field" }, h("label", { for: "max-tokens" }, "Max tokens"), maxTokens),
      h("div", { class: "field span-2" }, h("label", { for: "system-prompt" }, "System prompt"), system),
    ),
  );

  const composer = h(
    "form",
    { class: "composer card", novalidate: true },
    h("label", { for: "prompt", class: "visually-hidden" }, "Message"),
    prompt,
    h(
      "div",
      { class: "composer-bar" },
      h("span", { class: "help", id: "prompt-help" }, "Enter sends · Shift+Enter adds a line"),
      h("div", { class: "page-actions" }, clearButton, stop, send),
    ),
  );

  clear(
    main,
    pageHeader(
      "Playground",
      h(
        "fieldset",
        { class: "segmented", id: "mode" },
        h("legend", { class: "visually-hidden" }, "Mode"),
        h("label", { for: "mode-single" }, modeInputs[0], h("span", {}, "Single")),
        h("label", { for: "mode-compare" }, modeInputs[1], h("span", {}, "Side by side")),
      ),
    ),
    notice,
    h("section", { class: "card playground-controls", "aria-label": "Models and settings" }, h("div", { class: "model-pickers" }, columns.map((c) => c.pickerField)), settings),
    panes,
    composer,
  );
  panes.append(...columns.map((c) => c.pane));

  function makeColumn(index) {
    const id = `model-${index}`;
    const select = h("select", { id, name: id });
    const transcript = h("div", { class: "transcript", id: `transcript-${index}`, role: "log", tabindex: "0", "aria-live": "polite", "aria-label": index ? "Second model's conversation" : "Conversation" });
    const heading = h("h2", { class: "pane-title" }, "—");
    const pickerField = h("div", { class: "field" }, h("label", { for: id }, index ? "Compare with" : "Model"), select);
    const pane = h("section", { class: "card pane", dataset: { index: String(index) }, "aria-label": index ? "Second model" : "First model" }, heading, transcript);
    const column = { index, select, transcript, heading, pickerField, pane, history: [] };
    select.addEventListener("change", () => {
      heading.textContent = select.value;
      const url = new URL(location.href);
      url.searchParams.set(index ? "compare" : "model", select.value);
      history.replaceState(null, "", url);
    });
    return column;
  }

  function compare() {
    return modeInputs[1].checked;
  }

  function layout() {
    columns[1].pickerField.hidden = !compare();
    columns[1].pane.hidden = !compare();
    panes.classList.toggle("two", compare());
    if (compare() && !columns[1].select.value) columns[1].select.value = pickPartner(columns[0].select.value);
    columns[1].heading.textContent = columns[1].select.value;
  }
  for (const input of modeInputs) input.addEventListener("change", layout);

  // Side by side defaults to "the fine-tuned model against its base" (or the newest ft: model for a base).
  function pickPartner(modelId) {
    if (modelId.startsWith("ft:")) return models.find((m) => m.id === baseOf(modelId))?.id || models[0]?.id || "";
    return models.find((m) => m.id.startsWith("ft:") && baseOf(m.id) === modelId)?.id || models.find((m) => m.id !== modelId)?.id || "";
  }

  function fillModels() {
    const bases = models.filter((m) => !m.id.startsWith("ft:"));
    const tuned = models.filter((m) => m.id.startsWith("ft:"));
    for (const column of columns) {
      clear(
        column.select,
        bases.length ? h("optgroup", { label: "Base models" }, bases.map((m) => h("option", { value: m.id }, m.id))) : null,
        tuned.length ? h("optgroup", { label: "Fine-tuned models" }, tuned.map((m) => h("option", { value: m.id }, m.id))) : null,
      );
    }
    const wanted = search.get("model");
    // A checkpoint model is not listed in /v1/models but can be served: offer it when linked to.
    if (wanted && !models.some((m) => m.id === wanted)) {
      for (const column of columns) column.select.append(h("option", { value: wanted }, wanted));
    }
    columns[0].select.value = wanted || tuned[0]?.id || bases[0]?.id || "";
    const partner = search.get("compare");
    columns[1].select.value = partner && models.some((m) => m.id === partner) ? partner : pickPartner(columns[0].select.value);
    columns[0].heading.textContent = columns[0].select.value;
    layout();
  }

  function bubble(role, text = "") {
    return h("div", { class: `bubble bubble-${role}` }, h("span", { class: "bubble-role" }, role === "user" ? "You" : "Model"), h("div", { class: "bubble-text" }, text));
  }

  async function ask(column, text) {
    const model = column.select.value;
    const messages = [];
    if (system.value.trim()) messages.push({ role: "system", content: system.value.trim() });
    messages.push(...column.history, { role: "user", content: text });
    column.transcript.append(bubble("user", text));
    const reply = bubble("assistant");
    reply.classList.add("streaming");
    reply.dataset.chunks = "0";
    reply.dataset.model = model;
    const body = reply.querySelector(".bubble-text");
    const meta = h("div", { class: "bubble-meta" });
    reply.append(meta);
    column.transcript.append(reply);
    column.transcript.scrollTop = column.transcript.scrollHeight;
    const controller = new AbortController();
    controllers.add(controller);
    const started = performance.now();
    let firstToken = null;
    let content = "";
    let chunks = 0;
    let usage = null;
    let finish = null;
    try {
      const request = { model, messages, temperature: Number(temperature.value || 0), max_tokens: Number(maxTokens.value || 256), stream_options: { include_usage: true } };
      for await (const chunk of streamChat(request, { signal: controller.signal })) {
        if (chunk.usage) usage = chunk.usage;
        const choice = chunk.choices?.[0];
        if (choice?.finish_reason) finish = choice.finish_reason;
        const delta = choice?.delta?.content;
        if (!delta) continue;
        if (firstToken === null) firstToken = performance.now() - started;
        content += delta;
        chunks += 1;
        reply.dataset.chunks = String(chunks);
        body.textContent = content;
        column.transcript.scrollTop = column.transcript.scrollHeight;
      }
      column.history.push({ role: "user", content: text }, { role: "assistant", content });
      const seconds = (performance.now() - started) / 1000;
      const tokens = usage?.completion_tokens ?? chunks;
      meta.textContent = [
        `${tokens} tokens`,
        firstToken !== null ? `first token ${Math.round(firstToken)} ms` : null,
        seconds > 0 ? `${(tokens / seconds).toFixed(0)} tokens/s` : null,
        finish && finish !== "stop" ? `stopped: ${finish}` : null,
      ]
        .filter(Boolean)
        .join(" · ");
      if (!content) body.append(h("em", { class: "muted" }, "(empty reply)"));
      reply.dataset.state = "done";
    } catch (err) {
      reply.dataset.state = err.name === "AbortError" ? "stopped" : "error";
      if (err.name === "AbortError") meta.textContent = "stopped";
      else reply.append(alertBox(err.message));
    } finally {
      reply.classList.remove("streaming");
      controllers.delete(controller);
    }
  }

  composer.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = prompt.value.trim();
    if (!text || send.disabled) return;
    const active = compare() ? columns : [columns[0]];
    if (active.some((c) => !c.select.value)) {
      notice.replaceChildren(alertBox("Choose a model first.", "warning"));
      return;
    }
    notice.replaceChildren();
    prompt.value = "";
    send.disabled = true;
    stop.hidden = false;
    await Promise.all(active.map((column) => ask(column, text)));
    if (!alive) return;
    send.disabled = false;
    stop.hidden = true;
    prompt.focus();
  });
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      composer.requestSubmit();
    }
  });
  stop.addEventListener("click", () => {
    for (const controller of controllers) controller.abort();
  });
  clearButton.addEventListener("click", () => {
    for (const column of columns) {
      column.history = [];
      clear(column.transcript);
    }
    prompt.focus();
  });

  api("/v1/models")
    .then((list) => {
      if (!alive) return;
      models = list.data;
      if (!models.length) notice.replaceChildren(alertBox("No models are available yet.", "warning"));
      fillModels();
    })
    .catch((err) => alive && notice.replaceChildren(alertBox(`Could not load models: ${err.message}`)));

  return () => {
    alive = false;
    for (const controller of controllers) controller.abort();
  };
}
