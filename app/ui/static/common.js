// What both viewer pages share: API requests with the saved token, the token
// form, error messages, formatting and a Server-Sent Events reader.
//
// The token lives in localStorage and travels only in the Authorization header,
// never in a URL. A share link's expires/signature travel as query parameters
// instead, and no token is sent with them.

// The server's root, from this file's own URL (…/ui/static/common.js), so the
// viewer also works behind a proxy that mounts Weft under a path prefix.
export const ROOT = new URL("../../", import.meta.url);
const TOKEN_KEY = "weft.token";

export function apiUrl(path, params) {
  const url = new URL(path.replace(/^\//, ""), ROOT);
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  return url;
}

export function uiUrl(path) {
  return new URL(`ui/${path}`, ROOT).pathname;
}

export function getToken() {
  try {
    return localStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function setToken(token) {
  localStorage.setItem(TOKEN_KEY, token);
}

export function clearToken() {
  localStorage.removeItem(TOKEN_KEY);
}

// fetch() against the API. options.share = {expires, signature} sends those
// instead of the token.
export function api(path, options = {}) {
  const { params, share, headers, ...rest } = options;
  const all = { ...(params || {}), ...(share || {}) };
  const sent = new Headers(headers || {});
  const token = getToken();
  if (token && !share) sent.set("Authorization", `Bearer ${token}`);
  return fetch(apiUrl(path, all), { ...rest, headers: sent, cache: "no-store" });
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The server's {"error": "..."} message, or a sentence made from the status.
export async function errorFrom(response) {
  let message = "";
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") message = body.error;
  } catch {
    // not JSON: fall back to the status text
  }
  if (!message) message = `The server answered ${response.status} ${response.statusText}.`.trim();
  return new ApiError(response.status, message);
}

export async function apiJson(path, options = {}) {
  const response = await api(path, options);
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}

// -- DOM helpers --------------------------------------------------------------

// el("a", {href: "/x", class: "y"}, "text", child): text is always a text node.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Shows the token form in place of container's content; resolves once a token
// was entered and saved. message says why it is asked for.
export function askForToken(container, message) {
  return new Promise((resolve) => {
    // The input has no name, so even a form submitted without this script could
    // not put the token into a URL or a request body.
    const input = el("input", {
      id: "token-input",
      type: "password",
      autocomplete: "current-password",
      placeholder: "Bearer token",
      required: true,
      "aria-label": "Token",
    });
    const form = el(
      "form",
      { id: "token-form", class: "token-form", method: "post", action: "#" },
      el("h2", {}, "This Weft server needs a token"),
      el("p", { class: "muted", id: "token-reason" }, message),
      el("div", { class: "row" }, input, el("button", { type: "submit", id: "token-submit" }, "Use token")),
      el(
        "p",
        { class: "muted small" },
        "The token is kept in this browser (localStorage) and sent as an Authorization header.",
      ),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      setToken(token);
      input.value = "";
      form.remove();
      resolve(token);
    });
    container.replaceChildren(form);
    input.focus();
  });
}

export function tokenReason(error) {
  return getToken()
    ? `The saved token was refused: ${error.message}`
    : "Enter a token with the read scope to view streams.";
}

// A header button that forgets the saved token; hidden when none is saved.
export function installSignOut(button) {
  const update = () => {
    button.hidden = !getToken();
  };
  button.addEventListener("click", () => {
    clearToken();
    location.reload();
  });
  update();
  return update;
}

// -- formatting ---------------------------------------------------------------

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

export function humanSize(bytes) {
  if (!Number.isFinite(bytes)) return "";
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  if (unit === 0) return `${value} B`;
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${UNITS[unit]}`;
}

export function age(iso, now = Date.now()) {
  const then = Date.parse(iso);
  if (Number.isNaN(then)) return "";
  const seconds = Math.max(0, Math.round((now - then) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours} h ago`;
  return `${Math.floor(hours / 24)} d ago`;
}

export function duration(fromIso, toIso) {
  const seconds = Math.max(0, Math.round((Date.parse(toIso) - Date.parse(fromIso)) / 1000));
  if (Number.isNaN(seconds)) return "";
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
}

export function localTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleString();
}

export function metadataText(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

// key=value chips for a metadata object.
export function metadataChips(metadata) {
  return Object.entries(metadata || {}).map(([key, value]) =>
    el("span", { class: "chip", title: `${key}=${metadataText(value)}` }, el("b", {}, key), "=", metadataText(value)),
  );
}

export function stateBadge(state) {
  return el("span", { class: `state state-${state}` }, state);
}

export const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });

export function backoff(attempt) {
  return Math.min(15000, 500 * 2 ** Math.min(attempt, 5)) * (0.75 + Math.random() / 2);
}

// -- Server-Sent Events over fetch() -----------------------------------------
// EventSource cannot send an Authorization header, so /events is read with
// fetch() and parsed here (the WHATWG "event stream interpretation").

export class SseParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.reset();
    this.lastId = null;
  }

  reset() {
    this.event = "";
    this.data = [];
    this.id = undefined;
  }

  feed(text) {
    const combined = this.buffer + text;
    const lines = combined.split(/\r\n|\r|\n/);
    this.buffer = lines.pop();
    // A trailing "\r" may be the first half of "\r\n": keep its line for the next chunk.
    if (this.buffer === "" && combined.endsWith("\r")) this.buffer = `${lines.pop()}\r`;
    for (const line of lines) this.line(line);
  }

  line(line) {
    if (line === "") {
      if (this.id !== undefined) this.lastId = this.id;
      if (this.data.length) {
        this.onEvent({ event: this.event || "message", data: this.data.join("\n"), id: this.lastId });
      }
      this.reset();
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.id = value;
  }
}

// Follows /events until signal aborts: onEvent(kind, info) for each event,
// onStatus("connected" | "reconnecting" | "unavailable" | "unauthorized", detail),
// onReconnect() after a reconnection (events may have been missed meanwhile).
// Silence longer than three heartbeats counts as a dropped connection.
export async function followEvents({ onEvent, onStatus, onReconnect, signal }) {
  let lastId = null;
  let attempt = 0;
  let connectedBefore = false;
  while (!signal.aborted) {
    const watchdog = new AbortController();
    const abortWatchdog = () => watchdog.abort();
    signal.addEventListener("abort", abortWatchdog);
    let timer = null;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => watchdog.abort(), 50000);
    };
    try {
      const headers = lastId ? { "Last-Event-ID": lastId } : {};
      arm();
      const response = await api("/events", { headers, signal: watchdog.signal });
      if (response.status === 401 || response.status === 403) {
        onStatus("unauthorized", await errorFrom(response));
        return;
      }
      if (response.status === 404 || response.status === 405) {
        onStatus("unavailable", await errorFrom(response));
        return;
      }
      if (!response.ok) throw await errorFrom(response);
      onStatus("connected");
      if (connectedBefore) onReconnect?.();
      connectedBefore = true;
      attempt = 0;
      const parser = new SseParser((event) => {
        lastId = event.id;
        let info = null;
        try {
          info = JSON.parse(event.data);
        } catch {
          return;
        }
        onEvent(event.event, info);
      });
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        arm();
        parser.feed(decoder.decode(value, { stream: true }));
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ApiError && error.status < 500) {
        onStatus("unavailable", error);
        return;
      }
    } finally {
      clearTimeout(timer);
      signal.removeEventListener("abort", abortWatchdog);
    }
    if (signal.aborted) return;
    onStatus("reconnecting");
    await sleep(backoff(attempt++), signal);
  }
}
