// The dashboard shell: sign-in, navigation (History API under /ui) and page lifecycles.
import { ApiError, UI, api, clearKey, getKey, setKey, setUnauthorizedHandler } from "./api.js";
import { alertBox, clear, h } from "./dom.js";
import * as evals from "./pages/evals.js";
import * as files from "./pages/files.js";
import * as job from "./pages/job.js";
import * as jobs from "./pages/jobs.js";
import * as newJob from "./pages/new_job.js";
import * as playground from "./pages/playground.js";
import * as usage from "./pages/usage.js";

const ROUTES = [
  { pattern: /^\/files\/?$/, page: files, nav: "files", title: "Files" },
  { pattern: /^\/jobs\/new\/?$/, page: newJob, nav: "new", title: "New fine-tuning job" },
  { pattern: /^\/jobs\/([^/]+)\/?$/, page: job, nav: "jobs", title: "Job" },
  { pattern: /^\/jobs\/?$/, page: jobs, nav: "jobs", title: "Jobs" },
  { pattern: /^\/playground\/?$/, page: playground, nav: "playground", title: "Playground" },
  { pattern: /^\/usage\/?$/, page: usage, nav: "usage", title: "Usage" },
  { pattern: /^\/evals\/([^/]+)\/?$/, page: evals, nav: "evals", title: "Eval" },
  { pattern: /^\/evals\/?$/, page: evals, nav: "evals", title: "Evals" },
];

const main = document.getElementById("main");
const nav = document.querySelector(".nav");
const signOutButton = document.getElementById("signout");
let cleanup = null;
let signInNotice = null;
let firstRender = true;
let signingIn = false; // a wrong key at sign-in is the form's error, not a revoked session

export function navigate(path, { replace = false } = {}) {
  const url = path.startsWith(UI) ? path : `${UI}${path}`;
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  render();
}

function currentRoute() {
  let path = location.pathname.startsWith(UI) ? location.pathname.slice(UI.length) : "/";
  if (path === "" || path === "/") {
    history.replaceState(null, "", `${UI}/jobs`);
    path = "/jobs";
  }
  for (const route of ROUTES) {
    const match = path.match(route.pattern);
    if (match) return { route, params: match.slice(1).map(decodeURIComponent) };
  }
  return null;
}

function setSignedIn(signedIn) {
  nav.hidden = !signedIn;
  signOutButton.hidden = !signedIn;
}

function render() {
  if (cleanup) {
    try {
      cleanup();
    } catch {
      /* a page's teardown must not block the next page */
    }
    cleanup = null;
  }
  if (!getKey()) {
    setSignedIn(false);
    renderSignIn();
    return;
  }
  setSignedIn(true);
  const found = currentRoute();
  for (const link of nav.querySelectorAll("a")) {
    if (found && link.dataset.nav === found.route.nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  clear(main);
  if (!found) {
    document.title = "Not found · ftserve";
    main.append(
      h("h1", { tabindex: "-1" }, "Page not found"),
      h("p", {}, "There is no dashboard page here. ", h("a", { href: `${UI}/jobs`, "data-link": "" }, "Go to your jobs"), "."),
    );
    return;
  }
  document.title = `${found.route.title} · ftserve`;
  window.scrollTo(0, 0);
  const search = new URLSearchParams(location.search);
  const result = found.route.page.render(main, { params: found.params, search, navigate });
  cleanup = typeof result === "function" ? result : null;
  // Move focus to the new page's heading so screen readers announce it (not on the first load).
  const heading = main.querySelector("h1");
  if (heading && !firstRender) heading.focus({ preventScroll: true });
  firstRender = false;
}

function renderSignIn() {
  document.title = "Sign in · ftserve";
  const input = h("input", {
    id: "api-key",
    name: "api-key",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    placeholder: "ftsk-…",
    "aria-describedby": "api-key-help",
  });
  const error = h("div", { class: "form-error", id: "signin-error", "aria-live": "assertive" });
  const button = h("button", { type: "submit", class: "btn btn-primary btn-block" }, "Sign in");
  const form = h(
    "form",
    { class: "signin card", novalidate: true },
    h("h1", { tabindex: "-1" }, "Sign in to ftserve"),
    h("p", { class: "muted" }, "Fine-tune, watch and try your models from the browser."),
    signInNotice ? alertBox(signInNotice, "warning") : null,
    h("label", { for: "api-key" }, "API key"),
    input,
    h(
      "p",
      { class: "help", id: "api-key-help" },
      "Create one with ",
      h("code", {}, "ftserve keys create --org NAME"),
      ". It stays in this tab's session storage and is sent only to this server.",
    ),
    error,
    button,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    error.textContent = "";
    if (!key) {
      error.textContent = "Enter an API key.";
      input.focus();
      return;
    }
    button.disabled = true;
    button.textContent = "Signing in…";
    setKey(key);
    signingIn = true;
    try {
      await api("/v1/models");
      input.value = "";
      signInNotice = null;
      render();
    } catch (err) {
      clearKey();
      error.textContent =
        err instanceof ApiError && err.status === 401 ? "That key was not accepted: check it and try again." : err.message;
      button.disabled = false;
      button.textContent = "Sign in";
      input.focus();
    } finally {
      signingIn = false;
    }
  });
  clear(main, h("div", { class: "signin-wrap" }, form));
  input.focus();
}

setUnauthorizedHandler(() => {
  if (!getKey() || signingIn) return;
  clearKey();
  signInNotice = "Your API key is no longer accepted (revoked or unknown). Sign in again.";
  render();
});

signOutButton.addEventListener("click", () => {
  clearKey();
  signInNotice = null;
  render();
});

// In-app links: same-origin anchors marked data-link navigate without a reload.
document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-link]");
  if (!link || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  navigate(link.getAttribute("href"));
});

window.addEventListener("popstate", render);
render();
