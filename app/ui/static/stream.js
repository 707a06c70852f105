// /ui/stream/{id}: one stream replayed, then tailed live until it finishes.
//
// The bytes come from GET /stream/{id} read with a streaming fetch(); after a
// dropped connection the reader resumes at ?offset= (the bytes it already has),
// so no text is lost or shown twice. A share link (?expires=&signature=) is
// passed through to the API instead of a token.

import {
  ApiError,
  api,
  apiJson,
  apiUrl,
  askForToken,
  backoff,
  el,
  errorFrom,
  getToken,
  humanSize,
  installSignOut,
  localTime,
  metadataChips,
  sleep,
  stateBadge,
  tokenReason,
} from "./common.js";
import { LogView } from "./logview.js";

const SHARE_TTL = 24 * 3600;
const SLICE_CHARS = 32 * 1024;
const YIELD_AFTER_MS = 10;

const $ = (id) => document.getElementById(id);
const ui = {
  id: $("stream-id"),
  state: $("state"),
  size: $("size"),
  meta: $("meta"),
  links: $("links"),
  follow: $("follow"),
  download: $("download"),
  share: $("share"),
  shareBox: $("share-box"),
  shareUrl: $("share-url"),
  shareCopy: $("share-copy"),
  shareNote: $("share-note"),
  notice: $("notice"),
  auth: $("auth"),
  error: $("error"),
  log: $("log"),
  end: $("end"),
};

const streamId = decodeURIComponent(location.pathname.slice(location.pathname.lastIndexOf("/") + 1));
const query = new URLSearchParams(location.search);
const share = query.has("signature")
  ? { expires: query.get("expires") || "", signature: query.get("signature") }
  : null;
const streamPath = `/stream/${encodeURIComponent(streamId)}`;
const infoPath = `/streams/${encodeURIComponent(streamId)}`;
const updateSignOut = installSignOut($("sign-out"));

const view = new LogView({
  log: ui.log,
  lines: $("lines"),
  partial: $("partial"),
  trimmed: $("trimmed"),
  onFollowChange: (on) => {
    ui.follow.checked = on;
  },
});
ui.follow.addEventListener("change", () => view.setFollow(ui.follow.checked));

let received = 0; // bytes of the stream read so far: the offset to resume from
let createdAt = null; // tells a replaced stream (same id, new incarnation) apart
let state = null;
let reading = null; // aborts the GET in progress
// One decoder across reconnections: a UTF-8 character cut by a dropped connection is
// completed by the first bytes of the next response.
const decoder = new TextDecoder("utf-8");

ui.id.textContent = streamId;
document.title = `${streamId} · Weft`;
if (share) $("home").removeAttribute("href"); // a share link opens no other page

// -- requests -------------------------------------------------------------------

// An API request; a 401 shows the token form and retries once a token is given.
async function request(path, options = {}) {
  for (;;) {
    const response = await api(path, { share, ...options });
    if (response.status !== 401 || share) return response;
    const error = await errorFrom(response);
    ui.log.hidden = true;
    await askForToken(ui.auth, tokenReason(error));
    updateSignOut();
    ui.log.hidden = false;
  }
}

function showError(status, message) {
  const titles = {
    400: "Not a valid stream id",
    403: share ? "This share link is not valid" : "Access denied",
    404: "Stream not found",
  };
  const hints = {
    403: share
      ? "It may have expired or been altered. Ask for a new link."
      : "The saved token may not read streams.",
    404: "It may have been deleted, or the id is mistyped.",
  };
  ui.log.hidden = true;
  ui.error.replaceChildren(
    el("h2", {}, titles[status] || "Could not load the stream"),
    el("p", { class: "message" }, message),
    hints[status] ? el("p", { class: "muted" }, hints[status]) : null,
    share ? null : el("p", {}, el("a", { href: "../" }, "← All streams")),
  );
  if (status === 403 && !share && getToken()) {
    ui.error.append(el("p", {}, el("button", { type: "button", onclick: () => $("sign-out").click() }, "Use another token")));
  }
  ui.error.hidden = false;
}

function notice(text) {
  ui.notice.textContent = text;
  ui.notice.hidden = !text;
}

// -- header ---------------------------------------------------------------------

function showState(value) {
  if (!value || value === state) return;
  state = value;
  ui.state.replaceChildren(stateBadge(value));
}

function showSize() {
  const lines = view.lineCount;
  if (state === null) return;
  ui.size.textContent = `${humanSize(received)} · ${lines.toLocaleString("en")} line${lines === 1 ? "" : "s"}`;
}

function showMetadata(header) {
  if (!header) return;
  try {
    const metadata = JSON.parse(header);
    ui.meta.replaceChildren(...metadataChips(metadata));
  } catch {
    // a header that is not JSON is left out
  }
}

async function loadInfo() {
  try {
    const info = await apiJson(infoPath, { share });
    createdAt ??= info.created_at;
    ui.id.title = `Started ${localTime(info.created_at)}`;
    return info;
  } catch {
    return null;
  }
}

// The links that point at this stream (GET /links?stream=ID), shown beside its
// metadata. A share link cannot list links, so that page shows none.
async function showLinks() {
  if (share) return;
  try {
    const found = await apiJson("/links", { params: { stream: streamId, limit: "20" } });
    ui.links.replaceChildren(
      ...found.links.map((link) =>
        el("span", { class: "chip link-chip", title: `/links/${link.name} leads here` }, el("b", {}, "link"), " ", link.name),
      ),
    );
    ui.links.hidden = found.links.length === 0;
  } catch {
    // links are an extra: a failure leaves them out
  }
}

// -- download and share -----------------------------------------------------------

function setUpDownload() {
  const filename = `${streamId}.log`;
  ui.download.setAttribute("download", filename);
  if (share) {
    ui.download.href = apiUrl(streamPath, share);
  } else {
    ui.download.href = apiUrl(streamPath, { notail: "true" });
    // With a token the link cannot carry it: fetch with the header, save the blob.
    ui.download.addEventListener("click", async (event) => {
      if (!getToken()) return;
      event.preventDefault();
      const response = await request(streamPath, { params: { notail: "true" } });
      if (!response.ok) {
        notice(`Download failed: ${(await errorFrom(response)).message}`);
        return;
      }
      const url = URL.createObjectURL(await response.blob());
      const link = el("a", { href: url, download: filename, hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    });
  }
}

function setUpShare() {
  if (share) return;
  ui.share.hidden = false;
  ui.share.addEventListener("click", async () => {
    ui.share.disabled = true;
    try {
      const response = await request(`${infoPath}/share`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ ttl: SHARE_TTL }),
      });
      if (!response.ok) throw await errorFrom(response);
      const body = await response.json();
      const link = apiUrl(body.viewer_url || body.url).href;
      ui.shareUrl.value = link;
      const expires = Number(body.expires || new URL(link).searchParams.get("expires"));
      ui.shareNote.textContent = Number.isFinite(expires) && expires > 0
        ? `Anyone with this link can read this stream until ${new Date(expires * 1000).toLocaleString()}.`
        : "Anyone with this link can read this stream for a day.";
      ui.shareBox.hidden = false;
      ui.shareUrl.select();
      await copy(link);
    } catch (error) {
      notice(`Could not create a share link: ${error.message}`);
    } finally {
      ui.share.disabled = false;
    }
  });
  ui.shareCopy.addEventListener("click", () => copy(ui.shareUrl.value));
}

async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
    ui.shareCopy.textContent = "Copied";
  } catch {
    ui.shareUrl.select(); // clipboard access refused (plain http, permissions): copy by hand
    ui.shareCopy.textContent = "Copy";
  }
}

// -- reading --------------------------------------------------------------------

// Reads one response body into the view; returns normally at a clean end and
// throws when the connection drops.
async function pump(response) {
  const reader = response.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    received += value.length;
    await write(decoder.decode(value, { stream: true }));
    showSizeSoon();
  }
}

// A slow page gets big reads (a megabyte or more): parse them in slices and give
// the page a turn between slices, so a fast replay never blocks scrolling or input.
let lastYield = 0;
async function write(text) {
  let start = 0;
  while (start < text.length) {
    let end = Math.min(text.length, start + SLICE_CHARS);
    const code = text.charCodeAt(end - 1);
    if (end < text.length && code >= 0xd800 && code <= 0xdbff) end--; // keep surrogate pairs whole
    view.write(text.slice(start, end));
    start = end;
    if (performance.now() - lastYield > YIELD_AFTER_MS) {
      await (globalThis.scheduler?.yield?.() ?? new Promise((resolve) => setTimeout(resolve)));
      lastYield = performance.now();
    }
  }
}

let sizeFrame = 0;
function showSizeSoon() {
  if (!sizeFrame) {
    sizeFrame = requestAnimationFrame(() => {
      sizeFrame = 0;
      showSize();
    });
  }
}

function finish(finalState) {
  view.write(decoder.decode());
  view.end();
  showState(finalState);
  view.afterFlush(showSize);
  const words = {
    complete: "End of stream: complete.",
    abandoned: "End of stream: abandoned — its producer went away before finishing.",
  };
  ui.end.textContent = words[finalState] || `End of stream: ${finalState}.`;
  ui.end.className = `end ${finalState}`;
  ui.end.hidden = false;
  document.body.dataset.streamEnded = finalState;
}

// What the stream is now: {state, createdAt}, or null when it is gone.
async function currentState() {
  const info = await loadInfo();
  if (info) return { state: info.state, createdAt: info.created_at };
  const response = await request(streamPath, { method: "HEAD" });
  if (response.status === 404) return null;
  if (!response.ok) throw new ApiError(response.status, `HEAD answered ${response.status}`);
  return { state: response.headers.get("X-Stream-State"), createdAt };
}

async function tail() {
  let attempt = 0;
  let first = true;
  for (;;) {
    let response;
    reading = new AbortController();
    try {
      response = await request(streamPath, {
        params: first ? {} : { offset: String(received) },
        signal: reading.signal,
      });
    } catch {
      notice("Connection lost; reconnecting…");
      await sleep(backoff(attempt++));
      continue;
    }
    if (!response.ok) {
      const error = await errorFrom(response);
      if (first) {
        showError(response.status, error.message);
        return;
      }
      if (response.status >= 500) {
        notice(`The server answered ${response.status}; retrying…`);
        await sleep(backoff(attempt++));
        continue;
      }
      notice(response.status === 404 ? "The stream was deleted." : `Stopped: ${error.message}`);
      finish(state || "gone");
      return;
    }
    if (first) {
      first = false;
      ui.auth.replaceChildren();
      ui.log.hidden = false;
      $("controls").hidden = false;
      showMetadata(response.headers.get("X-Stream-Metadata"));
      loadInfo();
      showLinks();
    }
    showState(response.headers.get("X-Stream-State"));
    showSize();
    const live = response.headers.get("X-Stream-State") === "live";
    let dropped = false;
    try {
      await pump(response);
      notice("");
      attempt = 0;
    } catch {
      dropped = true;
    }
    if (!live && !dropped) {
      finish(response.headers.get("X-Stream-State"));
      return;
    }
    // A live response ended or dropped: find out whether the stream is still live.
    let now;
    try {
      now = await currentState();
    } catch {
      now = { state: "live", createdAt };
    }
    if (now === null) {
      notice("The stream was deleted.");
      finish(state || "gone");
      return;
    }
    if (createdAt && now.createdAt && now.createdAt !== createdAt) {
      notice("This stream was replaced by a new one with the same id; reload the page to see it.");
      finish(state || "replaced");
      return;
    }
    if (now.state !== "live" && !dropped) {
      finish(now.state);
      return;
    }
    if (dropped) {
      notice("Connection lost; reconnecting…");
      await sleep(backoff(attempt++));
    }
    // Still live (a server-side tail timeout or restart), or finished after a drop:
    // read the rest from where this response stopped.
  }
}

// A page kept in the back/forward cache must not hold the stream open on the
// server; when it is shown again the loop in tail() resumes at the offset.
window.addEventListener("pagehide", () => reading?.abort());

setUpDownload();
setUpShare();
tail();
