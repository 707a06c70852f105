// ANSI text to HTML, one line at a time, for the stream viewer.
//
// Stream content is untrusted: every character of it goes through escapeHtml, and
// the only markup produced is <span class="..."> with class names built here. The
// page's Content-Security-Policy forbids inline styles, so colours are classes
// (ansi.css): fN / bN for the 256 palette colours, B bold, D dim, I italic,
// U underline, S strike, fi / bi for the default colours swapped by SGR 7.
//
// SGR handled: 0 reset; 1 2 3 4 7 9 and their resets 21 22 23 24 27 29;
// 30-37 40-47 90-97 100-107; 39 49; 38;5;N 48;5;N (and the 38:5:N form);
// 38;2;R;G;B 48;2;R;G;B, shown in the nearest palette colour. Other escape
// sequences (cursor movement, erase, OSC titles and links, charset selection) are
// dropped. "\r\n" ends a line; a lone "\r" starts the line over, as a terminal's
// progress bar does; other control characters except tab are dropped.

const HTML_ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => HTML_ESCAPES[c]);
}

const CUBE = [0, 95, 135, 175, 215, 255];

function nearestLevel(value) {
  let best = 0;
  for (let i = 1; i < CUBE.length; i++) {
    if (Math.abs(CUBE[i] - value) < Math.abs(CUBE[best] - value)) best = i;
  }
  return best;
}

// The xterm-256 index closest to an RGB colour (cube or grey ramp).
export function nearestPalette(r, g, b) {
  const [ri, gi, bi] = [r, g, b].map(nearestLevel);
  const cube = 16 + 36 * ri + 6 * gi + bi;
  const cubeDistance = (CUBE[ri] - r) ** 2 + (CUBE[gi] - g) ** 2 + (CUBE[bi] - b) ** 2;
  const mean = (r + g + b) / 3;
  const grey = Math.max(0, Math.min(23, Math.round((mean - 8) / 10)));
  const level = 8 + 10 * grey;
  const greyDistance = (level - r) ** 2 + (level - g) ** 2 + (level - b) ** 2;
  return greyDistance < cubeDistance ? 232 + grey : cube;
}

const clampByte = (n) => Math.max(0, Math.min(255, n | 0));

class Style {
  constructor() {
    this.reset();
  }

  reset() {
    this.fg = null;
    this.bg = null;
    this.bold = false;
    this.dim = false;
    this.italic = false;
    this.underline = false;
    this.strike = false;
    this.inverse = false;
  }

  // Reads an extended colour (after 38 or 48) from params at i; returns
  // [colour or undefined, index of the last parameter used].
  static extended(params, i) {
    const mode = params[i + 1];
    if (mode === 5 && params.length > i + 2) {
      return [clampByte(params[i + 2]), i + 2];
    }
    if (mode === 2 && params.length > i + 4) {
      const [r, g, b] = params.slice(i + 2, i + 5).map(clampByte);
      return [nearestPalette(r, g, b), i + 4];
    }
    return [undefined, params.length];
  }

  apply(params) {
    if (params.length === 0) params = [0];
    for (let i = 0; i < params.length; i++) {
      const p = params[i];
      if (p === 0) this.reset();
      else if (p === 1) this.bold = true;
      else if (p === 2) this.dim = true;
      else if (p === 3) this.italic = true;
      else if (p === 4) this.underline = true;
      else if (p === 7) this.inverse = true;
      else if (p === 9) this.strike = true;
      else if (p === 21 || p === 22) {
        this.bold = false;
        this.dim = false;
      } else if (p === 23) this.italic = false;
      else if (p === 24) this.underline = false;
      else if (p === 27) this.inverse = false;
      else if (p === 29) this.strike = false;
      else if (p >= 30 && p <= 37) this.fg = p - 30;
      else if (p === 39) this.fg = null;
      else if (p >= 40 && p <= 47) this.bg = p - 40;
      else if (p === 49) this.bg = null;
      else if (p >= 90 && p <= 97) this.fg = p - 90 + 8;
      else if (p >= 100 && p <= 107) this.bg = p - 100 + 8;
      else if (p === 38 || p === 48) {
        const [colour, last] = Style.extended(params, i);
        if (colour !== undefined) {
          if (p === 38) this.fg = colour;
          else this.bg = colour;
        }
        i = last;
      }
    }
  }

  className() {
    const names = [];
    let fg = this.fg === null ? null : `f${this.fg}`;
    let bg = this.bg === null ? null : `b${this.bg}`;
    if (this.inverse) {
      [fg, bg] = [
        this.bg === null ? "fi" : `f${this.bg}`,
        this.fg === null ? "bi" : `b${this.fg}`,
      ];
    }
    if (fg) names.push(fg);
    if (bg) names.push(bg);
    if (this.bold) names.push("B");
    if (this.dim) names.push("D");
    if (this.italic) names.push("I");
    if (this.underline) names.push("U");
    if (this.strike) names.push("S");
    return names.join(" ");
  }
}

// Longest escape sequence kept waiting for its end across chunks; beyond it the
// ESC is dropped and what follows is shown as text.
const MAX_ESCAPE = 4096;
// A line longer than this (binary data, a minified file) is shown in pieces of
// this length, so the open line never grows without bound.
const MAX_LINE_CHARS = 256 * 1024;
const SPECIAL = /[\x00-\x08\x0a-\x1f\x7f]/g;

// Splits decoded text into lines of HTML. feed() returns the lines completed by
// the text; partialHtml() is the line still open (no newline yet).
export class AnsiLines {
  constructor() {
    this.style = new Style();
    this.cls = "";
    this.pieces = []; // HTML of the open line
    this.length = 0; // characters of text in the open line
    this.out = []; // lines completed by the current feed()
    this.carry = ""; // an unfinished escape sequence from the previous chunk
    this.pendingCR = false;
  }

  feed(text) {
    const lines = [];
    this.out = lines;
    if (this.carry) {
      text = this.carry + text;
      this.carry = "";
    }
    let start = 0;
    SPECIAL.lastIndex = 0;
    while (start < text.length) {
      SPECIAL.lastIndex = start;
      const match = SPECIAL.exec(text);
      const end = match ? match.index : text.length;
      if (end > start) {
        this.settleCR();
        this.addText(text.slice(start, end));
      }
      if (!match) break;
      const c = text[end];
      start = end + 1;
      if (c === "\n") {
        this.pendingCR = false;
        lines.push(this.takeLine());
      } else if (c === "\r") {
        this.pendingCR = true;
      } else if (c === "\x1b") {
        const used = this.escape(text, end);
        if (used < 0) {
          this.carry = text.slice(end);
          break;
        }
        start = end + used;
      }
      // Any other control character is dropped.
    }
    return lines;
  }

  // Called at the end of the stream: the open line, if any, as a last line.
  finish() {
    this.out = [];
    this.pendingCR = false;
    if (this.carry) {
      const rest = this.carry;
      this.carry = "";
      this.addText(rest.slice(1));
    }
    if (this.pieces.length) this.out.push(this.takeLine());
    return this.out;
  }

  partialHtml() {
    return this.pieces.join("");
  }

  hasPartial() {
    return this.pieces.length > 0;
  }

  settleCR() {
    // A "\r" not followed by "\n": the terminal cursor went back to the start of
    // the line, and what comes next overwrites it.
    if (this.pendingCR) {
      this.pendingCR = false;
      this.pieces = [];
      this.length = 0;
    }
  }

  addText(text) {
    while (this.length + text.length > MAX_LINE_CHARS) {
      const room = MAX_LINE_CHARS - this.length;
      this.addPiece(text.slice(0, room));
      this.out.push(this.takeLine());
      text = text.slice(room);
    }
    if (text) this.addPiece(text);
  }

  addPiece(text) {
    const html = escapeHtml(text);
    this.pieces.push(this.cls ? `<span class="${this.cls}">${html}</span>` : html);
    this.length += text.length;
  }

  takeLine() {
    const html = this.pieces.join("");
    this.pieces = [];
    this.length = 0;
    return html;
  }

  // Handles the escape sequence starting at text[at] (an ESC). Returns how many
  // characters it used, or -1 when the text ends before the sequence does.
  escape(text, at) {
    if (at + 1 >= text.length) return -1;
    const kind = text[at + 1];
    if (kind === "[") {
      let i = at + 2;
      while (i < text.length && i - at < MAX_ESCAPE) {
        const code = text.charCodeAt(i);
        if (code >= 0x40 && code <= 0x7e) {
          if (text[i] === "m") this.sgr(text.slice(at + 2, i));
          return i - at + 1;
        }
        if (code < 0x20 || code > 0x3f) return 1; // not a CSI sequence: drop the ESC
        i++;
      }
      return i - at >= MAX_ESCAPE ? 1 : -1;
    }
    if (kind === "]" || kind === "P" || kind === "_" || kind === "^") {
      // OSC / DCS / APC / PM: up to BEL or ESC \
      let i = at + 2;
      while (i < text.length && i - at < MAX_ESCAPE) {
        if (text[i] === "\x07") return i - at + 1;
        if (text[i] === "\x1b") {
          if (i + 1 >= text.length) return -1;
          if (text[i + 1] === "\\") return i - at + 2;
        }
        i++;
      }
      return i - at >= MAX_ESCAPE ? 1 : -1;
    }
    // ESC, intermediates (0x20-0x2f), one final character: charset selection etc.
    let i = at + 1;
    while (i < text.length && text.charCodeAt(i) >= 0x20 && text.charCodeAt(i) <= 0x2f) i++;
    if (i >= text.length) return -1;
    return i - at + 1;
  }

  sgr(body) {
    if (/[^0-9;:]/.test(body)) return; // private modes such as "?" are not SGR
    const params = body === "" ? [] : body.split(/[;:]/).map((p) => (p === "" ? 0 : Number(p)));
    // 38:2::R:G:B carries an empty colour-space id; drop it so the shape is 38;2;R;G;B.
    if (body.includes(":")) {
      const fields = body.split(":");
      if ((fields[0] === "38" || fields[0] === "48") && fields[1] === "2" && fields.length === 6) {
        params.splice(2, 1);
      }
    }
    this.style.apply(params);
    this.cls = this.style.className();
  }
}
