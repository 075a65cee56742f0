// DOM helpers. Everything user-supplied (file names, messages, model output) goes in as text nodes, never
// as markup, so nothing a user uploads can run in another user's browser.

export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name === "on") for (const [event, fn] of Object.entries(value)) node.addEventListener(event, fn);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export function formatBytes(n) {
  if (n === null || n === undefined) return "—";
  if (n < 1024) return `${n} B`;
  const units = ["KB", "MB", "GB", "TB"];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

export function formatMb(mb) {
  if (mb === null || mb === undefined) return "—";
  return mb >= 1024 ? `${(mb / 1024).toFixed(mb >= 10240 ? 0 : 1)} GB` : `${Math.round(mb)} MB`;
}

export function formatTime(seconds) {
  if (!seconds) return "—";
  return new Date(seconds * 1000).toLocaleString(undefined, {
    month: "short",
    day: "numeric",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  });
}

export function formatRelative(seconds) {
  if (!seconds) return "—";
  const delta = Math.round(Date.now() / 1000 - seconds);
  const future = delta < 0;
  const abs = Math.abs(delta);
  const text =
    abs < 60 ? `${abs}s` : abs < 3600 ? `${Math.round(abs / 60)}m` : abs < 86400 ? `${Math.round(abs / 3600)}h` : `${Math.round(abs / 86400)}d`;
  return future ? `in ${text}` : `${text} ago`;
}

export function formatNumber(value, digits = 4) {
  if (value === null || value === undefined || value === "") return "—";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return value.toLocaleString();
  if (Math.abs(value) < 1e-3 && value !== 0) return value.toExponential(2);
  return Number(value.toPrecision(digits)).toString();
}

const STATUS_LABELS = {
  validating_files: "validating",
  queued: "queued",
  running: "running",
  paused: "paused",
  succeeded: "succeeded",
  failed: "failed",
  cancelled: "cancelled",
  processed: "ready",
  uploaded: "uploaded",
  error: "rejected",
};

export function badge(status) {
  return h("span", { class: `badge badge-${status}`, dataset: { status } }, STATUS_LABELS[status] || status);
}

export function progressBar(value, max, label) {
  const bar = h(
    "div",
    { class: "progress", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100", "aria-label": label },
    h("div", { class: "progress-fill" }),
  );
  setProgress(bar, value, max);
  return bar;
}

// Inline styles are blocked by our CSP for markup, but CSSOM writes are allowed: set widths here.
export function setProgress(bar, value, max) {
  const pct = max ? Math.min(100, Math.round((100 * value) / max)) : 0;
  bar.setAttribute("aria-valuenow", String(pct));
  const fill = bar.querySelector(".progress-fill");
  fill.style.width = `${pct}%`;
  fill.dataset.pct = String(pct);
}

export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  const item = h("div", { class: `toast toast-${kind}` }, message);
  box.append(item);
  setTimeout(() => item.remove(), kind === "error" ? 8000 : 4000);
}

export function alertBox(message, kind = "error") {
  return h("div", { class: `alert alert-${kind}`, role: kind === "error" ? "alert" : "status" }, message);
}

export function emptyState(title, detail, action) {
  return h("div", { class: "empty" }, h("p", { class: "empty-title" }, title), detail && h("p", {}, detail), action);
}

// A button that asks once more before doing something that cannot be undone.
export function confirmButton(label, confirmLabel, onConfirm, { className = "btn btn-danger" } = {}) {
  let armed = false;
  let timer = null;
  const button = h("button", { type: "button", class: className }, label);
  button.addEventListener("click", async () => {
    if (!armed) {
      armed = true;
      button.textContent = confirmLabel;
      button.classList.add("armed");
      timer = setTimeout(() => {
        armed = false;
        button.textContent = label;
        button.classList.remove("armed");
      }, 4000);
      return;
    }
    clearTimeout(timer);
    armed = false;
    button.disabled = true;
    try {
      await onConfirm();
    } finally {
      button.disabled = false;
      button.textContent = label;
      button.classList.remove("armed");
    }
  });
  return button;
}

export function copyButton(text, label = "Copy") {
  return h(
    "button",
    {
      type: "button",
      class: "btn btn-small btn-ghost",
      "aria-label": `${label}: ${text}`,
      on: {
        click: async (event) => {
          try {
            await navigator.clipboard.writeText(text);
            toast("Copied to the clipboard");
          } catch {
            toast("Copying is not allowed here; select the text instead", "error");
          }
          event.currentTarget.blur();
        },
      },
    },
    "Copy",
  );
}

export function pageHeader(title, ...actions) {
  return h(
    "div",
    { class: "page-header" },
    h("h1", { tabindex: "-1" }, title),
    actions.length ? h("div", { class: "page-actions" }, ...actions) : null,
  );
}

// setTimeout-based polling that stops cleanly when the page goes away, and slows down in hidden tabs.
export function poller(fn, intervalMs) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    if (stopped) return;
    try {
      const keepGoing = await fn();
      if (keepGoing === false) stopped = true;
    } catch (err) {
      if (err?.status === 401) stopped = true;
    }
    if (!stopped) timer = setTimeout(tick, document.hidden ? intervalMs * 5 : intervalMs);
  };
  timer = setTimeout(tick, intervalMs);
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
    restart() {
      if (!stopped) return;
      stopped = false;
      clearTimeout(timer);
      timer = setTimeout(tick, 0);
    },
  };
}
