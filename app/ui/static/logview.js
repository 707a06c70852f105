// The log pane: decoded text in, numbered lines of rendered ANSI out.
//
// Text is parsed as it arrives, but the DOM is touched at most once per
// animation frame, a bounded number of lines at a time, so a huge replay never
// freezes the page. Only the newest MAX_LINES lines stay in the DOM; the note at
// the top says how many earlier ones the download holds.

import { AnsiLines } from "./ansi.js";

export const MAX_LINES = 50000;
const LINES_PER_FRAME = 2000;
const FRAME_BUDGET_MS = 12; // stop adding lines for this frame after that long
// Lines live in blocks of BLOCK_LINES; the CSS lets the browser skip the layout of
// blocks out of view (content-visibility), and trimming drops whole blocks.
const BLOCK_LINES = 500;

export class LogView {
  constructor({ log, lines, partial, trimmed, onFollowChange }) {
    this.log = log;
    this.lines = lines;
    this.partial = partial;
    this.trimmed = trimmed;
    this.onFollowChange = onFollowChange;
    this.ansi = new AnsiLines();
    this.pending = []; // HTML of completed lines not yet in the DOM, from pending[head]
    this.head = 0;
    this.completed = 0; // lines completed so far, shown or not
    this.shown = 0; // lines in this.lines
    this.partialDirty = false;
    this.frame = 0;
    this.follow = true;
    this.lastTop = 0;
    this.listeners = [];
    log.addEventListener("scroll", () => this.onScroll(), { passive: true });
  }

  write(text) {
    if (text) this.push(this.ansi.feed(text));
    this.partialDirty = true;
    this.schedule();
  }

  // The stream ended: its last line, even without a newline, becomes a line.
  end() {
    this.push(this.ansi.finish());
    this.partialDirty = true;
    this.schedule();
  }

  get waiting() {
    return this.pending.length - this.head;
  }

  push(lines) {
    if (!lines.length) return;
    this.completed += lines.length;
    for (const line of lines) this.pending.push(line);
    if (this.waiting > 2 * MAX_LINES) this.dropOldest();
  }

  // More lines wait than the DOM may hold: everything shown, and the oldest of the
  // waiting lines, would be trimmed anyway; keep the newest MAX_LINES.
  dropOldest() {
    this.pending = this.pending.slice(this.pending.length - MAX_LINES);
    this.head = 0;
    this.lines.replaceChildren();
    this.shown = 0;
  }

  take(count) {
    const taken = this.pending.slice(this.head, this.head + count);
    this.head += count;
    if (this.head === this.pending.length) {
      this.pending = [];
      this.head = 0;
    } else if (this.head > 4096 && this.head * 2 > this.pending.length) {
      this.pending = this.pending.slice(this.head);
      this.head = 0;
    }
    return taken;
  }

  // Runs fn after the next DOM update (tests and the page's status line use it).
  afterFlush(fn) {
    this.listeners.push(fn);
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = 0;
    if (this.waiting > MAX_LINES) this.dropOldest();
    const started = performance.now();
    let budget = Math.min(this.waiting, LINES_PER_FRAME);
    while (budget > 0 && performance.now() - started < FRAME_BUDGET_MS) {
      let block = this.lines.lastElementChild;
      if (!block || block.childElementCount >= BLOCK_LINES) {
        block = document.createElement("div");
        block.className = "blk";
        this.lines.append(block);
      }
      const count = Math.min(budget, BLOCK_LINES - block.childElementCount);
      const first = this.completed - this.waiting + 1;
      const batch = this.take(count);
      block.insertAdjacentHTML("beforeend", batch.map((html, i) => lineHtml(first + i, html)).join(""));
      this.shown += count;
      budget -= count;
    }
    this.trim();
    // The open line shows once every completed line before it is in the DOM.
    if (this.partialDirty && !this.waiting) {
      this.partialDirty = false;
      const open = this.ansi.hasPartial();
      this.partial.hidden = !open;
      if (open) this.partial.innerHTML = numberHtml(this.completed + 1) + textHtml(this.ansi.partialHtml());
    }
    const hidden = this.completed - this.waiting - this.shown;
    this.trimmed.hidden = hidden <= 0;
    if (hidden > 0) {
      this.trimmed.textContent =
        `Lines 1–${hidden.toLocaleString("en")} are not shown here, to keep the page fast; ` +
        "the download has the whole stream.";
    }
    if (this.follow) this.scrollToEnd();
    if (this.waiting) this.schedule();
    for (const fn of this.listeners.splice(0)) fn();
  }

  // Drops the oldest blocks while the rest still hold MAX_LINES lines.
  trim() {
    let block = this.lines.firstElementChild;
    while (block && this.shown - block.childElementCount >= MAX_LINES) {
      const next = block.nextElementSibling;
      this.shown -= block.childElementCount;
      block.remove();
      block = next;
    }
  }

  get lineCount() {
    return this.completed + (this.ansi.hasPartial() ? 1 : 0);
  }

  setFollow(on) {
    if (on === this.follow) return;
    this.follow = on;
    if (on) this.scrollToEnd();
    this.onFollowChange?.(on);
  }

  scrollToEnd() {
    this.log.scrollTop = this.log.scrollHeight;
    this.lastTop = this.log.scrollTop;
  }

  // Scrolling up stops following; scrolling back down to the end resumes it.
  onScroll() {
    const top = this.log.scrollTop;
    const atEnd = this.log.scrollHeight - top - this.log.clientHeight < 4;
    if (atEnd && top > this.lastTop) this.setFollow(true);
    else if (!atEnd && top < this.lastTop) this.setFollow(false);
    this.lastTop = top;
  }
}

function numberHtml(n) {
  return `<a class="n" href="#L${n}" data-n="${n}" tabindex="-1" aria-hidden="true"></a>`;
}

function textHtml(html) {
  return `<span class="t">${html}</span>`;
}

function lineHtml(n, html) {
  return `<div class="l" id="L${n}">${numberHtml(n)}${textHtml(html)}</div>`;
}
