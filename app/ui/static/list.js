// /ui/: every stream, live ones first, then newest; kept current from /events.

import {
  ApiError,
  age,
  apiJson,
  askForToken,
  duration,
  el,
  followEvents,
  humanSize,
  installSignOut,
  localTime,
  metadataChips,
  metadataText,
  stateBadge,
  tokenReason,
  uiUrl,
} from "./common.js";

const PAGE = 100;
const LIVE_LIMIT = 1000;
const REFRESH_MS = 2000; // live sizes grow without events: one GET of the live streams
const POLL_MS = 4000; // when /events is not available

const $ = (id) => document.getElementById(id);
const ui = {
  auth: $("auth"),
  error: $("error"),
  content: $("content"),
  filter: $("filter"),
  state: $("state-filter"),
  rows: $("rows"),
  empty: $("empty"),
  more: $("more"),
  summary: $("summary"),
  conn: $("conn"),
};

const streams = new Map(); // id -> info
const removed = new Map(); // id -> created_at of a deleted stream, against stale list pages
const fresh = new Set(); // ids created since the page loaded, highlighted once
let next = null; // cursor of the next page
let pagesLoaded = 0;
let eventCount = 0;
const touched = new Map(); // id -> eventCount of the last event about it
let asking = null; // the token form, while it is shown
let generation = 0; // bumped when the state filter changes; older loads are dropped
let eventsController = null;
let loading = null; // the load in progress, if any
let eventsUp = false;
let refreshTimer = null;
const updateSignOut = installSignOut($("sign-out"));

const time = (iso) => Date.parse(iso) || 0;

function keep(info) {
  const gone = removed.get(info.id);
  if (gone !== undefined && time(info.created_at) <= gone) return;
  const old = streams.get(info.id);
  if (old && time(old.updated_at) > time(info.updated_at)) return;
  streams.set(info.id, info);
}

function applyEvent(kind, info) {
  if (!info || typeof info.id !== "string") return;
  touched.set(info.id, ++eventCount);
  if (kind === "deleted") {
    const old = streams.get(info.id);
    if (!old || time(old.created_at) <= time(info.created_at)) streams.delete(info.id);
    removed.set(info.id, time(info.created_at));
  } else {
    if (kind === "created") {
      removed.delete(info.id);
      fresh.add(info.id);
    }
    keep(info);
  }
  scheduleRender();
}

// -- loading ------------------------------------------------------------------

function stateFilter() {
  return ui.state.value;
}

async function fetchPages(cursor) {
  const state = stateFilter();
  const requests = [apiJson("/streams", { params: { state, limit: PAGE, cursor } })];
  // Live streams come first whatever their age, so fetch them all on the first page.
  if (!cursor && !state) requests.push(apiJson("/streams", { params: { state: "live", limit: LIVE_LIMIT } }));
  const [page, live] = await Promise.all(requests);
  return { streams: [...page.streams, ...(live ? live.streams : [])], next: page.next };
}

// Loads the first page again (reset: dropping streams it shows are gone) or the next one.
function load({ reset = false, more = false } = {}) {
  if (loading) return loading;
  const gen = generation;
  loading = (async () => {
    const since = eventCount;
    try {
      const result = await fetchPages(more ? next : null);
      if (gen !== generation) return;
      if (reset) forgetMissing(result, since);
      for (const info of result.streams) keep(info);
      if (more || pagesLoaded <= 1) next = result.next;
      pagesLoaded = more ? pagesLoaded + 1 : Math.max(pagesLoaded, 1);
      showContent();
      scheduleRender();
    } catch (error) {
      if (gen === generation) await handleError(error);
    } finally {
      if (gen === generation) loading = null;
    }
  })();
  return loading;
}

// Streams a first page should have listed but did not are gone, unless an event
// about them arrived while the request was out.
function forgetMissing(result, since) {
  const listed = new Set(result.streams.map((info) => info.id));
  const page = result.streams.filter((info) => info.state !== "live" || stateFilter() === "live");
  const oldest = result.next === null ? -Infinity : Math.min(...page.map((info) => time(info.created_at)));
  for (const [id, info] of streams) {
    if (listed.has(id) || (touched.get(id) || 0) > since) continue;
    if (info.state === "live" || time(info.created_at) >= oldest) streams.delete(id);
  }
}

async function handleError(error) {
  if (error instanceof ApiError && error.status === 401) {
    if (asking) return;
    ui.content.hidden = true;
    ui.error.hidden = true;
    eventsController?.abort();
    asking = askForToken(ui.auth, tokenReason(error));
    await asking;
    asking = null;
    updateSignOut();
    start();
    return;
  }
  ui.content.hidden = true;
  ui.error.replaceChildren(
    el("h2", {}, error instanceof ApiError && error.status === 403 ? "Access denied" : "Could not list streams"),
    el("p", { class: "message" }, error.message || String(error)),
    el("p", {}, el("button", { type: "button", onclick: () => location.reload() }, "Try again")),
  );
  ui.error.hidden = false;
  if (error instanceof ApiError && error.status === 403) {
    ui.error.append(
      el("p", { class: "muted" }, "The saved token lacks the read scope. ", signOutButton()),
    );
  }
}

function signOutButton() {
  return el("button", { type: "button", onclick: () => $("sign-out").click() }, "Use another token");
}

function showContent() {
  ui.auth.replaceChildren();
  ui.error.hidden = true;
  ui.content.hidden = false;
}

// Sizes of live streams change without events; finished streams missed while
// disconnected are caught here too.
async function refresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, eventsUp ? REFRESH_MS : POLL_MS);
  if (document.hidden || loading) return;
  try {
    if (!eventsUp) {
      await load({ reset: true });
      return;
    }
    const live = await apiJson("/streams", { params: { state: "live", limit: LIVE_LIMIT } });
    const stillLive = new Set(live.streams.map((info) => info.id));
    for (const info of live.streams) keep(info);
    const vanished = [...streams.values()].filter((info) => info.state === "live" && !stillLive.has(info.id));
    await Promise.all(vanished.map(recheck));
    scheduleRender();
  } catch {
    // the next refresh tries again
  }
}

async function recheck(info) {
  try {
    keep(await apiJson(`/streams/${encodeURIComponent(info.id)}`));
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) streams.delete(info.id);
  }
}

// -- events -------------------------------------------------------------------

function startEvents() {
  eventsController?.abort();
  eventsController = new AbortController();
  followEvents({
    signal: eventsController.signal,
    onEvent: applyEvent,
    onReconnect: () => load({ reset: true }),
    onStatus: (status, detail) => {
      eventsUp = status === "connected";
      if (status === "connected") setConn("ok", "Live updates", "Connected to /events");
      else if (status === "reconnecting") setConn("warn", "Reconnecting…", "The /events connection dropped");
      else setConn("warn", "Refreshing every few seconds", detail ? detail.message : "");
      if (!eventsUp) refresh();
    },
  });
}

function setConn(kind, text, title) {
  ui.conn.className = `conn ${kind}`;
  ui.conn.textContent = text;
  ui.conn.title = title || "";
}

// -- rendering ----------------------------------------------------------------

let renderScheduled = false;

function scheduleRender() {
  if (renderScheduled) return;
  renderScheduled = true;
  requestAnimationFrame(render);
}

function matches(info, words, state) {
  if (state && info.state !== state) return false;
  if (!words.length) return true;
  const haystack = [
    info.id,
    ...Object.entries(info.metadata || {}).map(([key, value]) => `${key}=${metadataText(value)}`),
  ]
    .join("\n")
    .toLowerCase();
  return words.every((word) => haystack.includes(word));
}

function order(a, b) {
  const live = (b.state === "live") - (a.state === "live");
  if (live) return live;
  return time(b.created_at) - time(a.created_at) || (a.id < b.id ? 1 : -1);
}

const rowCache = new Map(); // id -> {key, tr}: rows are rebuilt only when they change

function row(info, now) {
  const started = age(info.created_at, now);
  const key = JSON.stringify([info.state, info.size, info.updated_at, started, info.metadata]);
  const cached = rowCache.get(info.id);
  if (cached && cached.key === key) {
    cached.tr.classList.toggle("fresh", fresh.has(info.id));
    return cached.tr;
  }
  const link = `${uiUrl("stream/")}${encodeURIComponent(info.id)}`;
  const finished = info.finished_at ? `, ran ${duration(info.created_at, info.finished_at)}` : "";
  const tr = el(
    "tr",
    { dataset: { id: info.id }, class: fresh.has(info.id) ? "fresh" : null },
    el("td", { class: "fit" }, stateBadge(info.state)),
    el("td", { class: "id" }, el("a", { href: link }, info.id)),
    el("td", { class: "fit num", title: `${info.size} bytes` }, humanSize(info.size)),
    el("td", { class: "fit age", title: `${localTime(info.created_at)}${finished}` }, started),
    el("td", {}, el("span", { class: "chips" }, metadataChips(info.metadata))),
  );
  rowCache.set(info.id, { key, tr });
  return tr;
}

function render() {
  renderScheduled = false;
  const words = ui.filter.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
  const state = stateFilter();
  const all = [...streams.values()];
  const shown = all.filter((info) => matches(info, words, state)).sort(order);
  const now = Date.now();
  const wanted = shown.map((info) => row(info, now));
  // Move only the rows that are out of place, so a selection or hover survives updates.
  let cursor = ui.rows.firstElementChild;
  for (const tr of wanted) {
    if (tr === cursor) cursor = cursor.nextElementSibling;
    else ui.rows.insertBefore(tr, cursor);
  }
  while (cursor) {
    const following = cursor.nextElementSibling;
    cursor.remove();
    cursor = following;
  }
  for (const id of rowCache.keys()) if (!streams.has(id)) rowCache.delete(id);
  fresh.clear();
  const live = all.filter((info) => info.state === "live").length;
  const count = `${all.length}${next ? "+" : ""}`;
  ui.summary.textContent = `${count} stream${count === "1" ? "" : "s"} · ${live} live`;
  ui.empty.hidden = shown.length > 0;
  ui.empty.textContent = all.length ? "No stream matches the filter." : "No streams yet.";
  ui.more.hidden = !next;
}

// -- filters in the page URL (never a token) ---------------------------------

function readFilters() {
  const params = new URLSearchParams(location.search);
  ui.filter.value = params.get("q") || "";
  const state = params.get("state") || "";
  if ([...ui.state.options].some((option) => option.value === state)) ui.state.value = state;
}

function writeFilters() {
  const params = new URLSearchParams();
  if (ui.filter.value) params.set("q", ui.filter.value);
  if (ui.state.value) params.set("state", ui.state.value);
  const query = params.toString();
  history.replaceState(null, "", query ? `?${query}` : location.pathname);
}

ui.filter.addEventListener("input", () => {
  writeFilters();
  scheduleRender();
});
ui.state.addEventListener("change", () => {
  writeFilters();
  next = null;
  pagesLoaded = 0;
  generation++;
  loading = null;
  streams.clear();
  load({ reset: true });
});
ui.more.addEventListener("click", () => load({ more: true }));
// A page kept in the back/forward cache must not hold /events open on the server.
window.addEventListener("pagehide", () => eventsController?.abort());
window.addEventListener("pageshow", (event) => {
  if (event.persisted) start();
});
document.addEventListener("visibilitychange", () => {
  if (!document.hidden) refresh();
});
setInterval(scheduleRender, 1000); // ages move on (only rows whose text changed are rebuilt)

function start() {
  startEvents();
  load({ reset: true });
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, REFRESH_MS);
}

readFilters();
start();
