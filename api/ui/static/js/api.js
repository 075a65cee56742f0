// The /v1 client: every call carries the key from sessionStorage as a Bearer header (never a cookie, never
// the URL), so plain links cannot fetch protected content; downloads go through fetch + blob instead.

const KEY_STORAGE = "ftserve.apiKey";

export const ROOT = (document.querySelector('meta[name="ftserve-root"]')?.content || "").replace(/\/$/, "");
export const UI = `${ROOT}/ui`;

export function getKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function setKey(key) {
  sessionStorage.setItem(KEY_STORAGE, key);
}

export function clearKey() {
  sessionStorage.removeItem(KEY_STORAGE);
}

// Called when the server says the key is no longer valid (revoked while the tab was open).
let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `HTTP ${status}`);
    this.status = status;
    this.type = error?.type || null;
    this.param = error?.param || null;
    this.code = error?.code || null;
    this.fileId = error?.file_id || null;
  }

  static async from(response) {
    let error = null;
    try {
      error = (await response.json()).error;
    } catch {
      error = { message: `${response.status} ${response.statusText}`.trim() };
    }
    return new ApiError(response.status, error);
  }
}

function authHeaders(extra = {}) {
  const key = getKey();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : { ...extra };
}

export async function request(path, { method = "GET", body, signal, headers = {} } = {}) {
  const init = { method, headers: authHeaders(headers), signal, cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(`${ROOT}${path}`, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, { message: "The server could not be reached. Is ftserve running?" });
  }
  if (!response.ok) {
    const error = await ApiError.from(response);
    if (response.status === 401) onUnauthorized(error);
    throw error;
  }
  return response;
}

export async function api(path, options) {
  return (await request(path, options)).json();
}

// Every page of a cursor-paged list (newest first), up to `max` items.
export async function listAll(path, { limit = 100, max = 1000 } = {}) {
  const out = [];
  let after = null;
  for (;;) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(`${path}${sep}limit=${limit}${after ? `&after=${encodeURIComponent(after)}` : ""}`);
    out.push(...page.data);
    if (!page.has_more || !page.data.length || out.length >= max) return out;
    after = page.data[page.data.length - 1].id;
  }
}

// A random UUID v4; crypto.randomUUID needs a secure context, and the dashboard may be served over plain http.
export function uuid4() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// Multipart upload through XHR, because fetch reports no upload progress. Resolves with the File object;
// rejects with an ApiError (a rejected file's carries `fileId`, for its validation report).
// `idempotencyKey` makes a re-sent upload return the file the first one created (docs/api.md).
export function uploadFile(file, { onProgress, purpose = "fine-tune", idempotencyKey } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `${ROOT}/v1/files`);
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    if (idempotencyKey) xhr.setRequestHeader("Idempotency-Key", idempotencyKey);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable && onProgress) onProgress(event.loaded, event.total);
    });
    xhr.upload.addEventListener("load", () => onProgress && onProgress(file.size, file.size, true));
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(xhr.response);
        return;
      }
      const error = new ApiError(xhr.status, xhr.response?.error || { message: `HTTP ${xhr.status}` });
      if (xhr.status === 401) onUnauthorized(error);
      reject(error);
    });
    xhr.addEventListener("error", () =>
      reject(new ApiError(0, { message: "The upload failed: the server could not be reached." })),
    );
    xhr.addEventListener("abort", () => reject(new ApiError(0, { message: "The upload was cancelled." })));
    const form = new FormData();
    form.append("purpose", purpose);
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

// Saves a protected download (results CSV, file content) under `filename`.
export async function download(path, filename) {
  const blob = await (await request(path)).blob();
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// The first `count` JSONL lines of a file, read as a stream and cancelled once enough has arrived.
export async function firstLines(path, { count = 5, maxBytes = 512 * 1024 } = {}) {
  const controller = new AbortController();
  const response = await request(path, { signal: controller.signal });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let text = "";
  let received = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    received += value.byteLength;
    text += decoder.decode(value, { stream: true });
    const complete = text.split("\n").filter((line) => line.trim()).length;
    if (complete > count || received >= maxBytes) {
      controller.abort();
      break;
    }
  }
  return text
    .replace(/^\uFEFF/, "")
    .split(/\r?\n/)
    .filter((line) => line.trim())
    .slice(0, count);
}

// POST /v1/chat/completions with stream: true, yielding each parsed SSE chunk until [DONE].
export async function* streamChat(body, { signal } = {}) {
  const response = await request("/v1/chat/completions", { method: "POST", body: { ...body, stream: true }, signal });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let boundary;
    while ((boundary = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, boundary);
      buffer = buffer.slice(boundary).replace(/^\r?\n\r?\n/, "");
      const data = block
        .split(/\r?\n/)
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(500, chunk.error);
      yield chunk;
    }
  }
}
