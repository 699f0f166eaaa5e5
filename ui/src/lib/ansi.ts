// ANSI escape sequences in log lines: SGR (colours, bold, dim, italic, underline, inverse,
// strike-through, reset) becomes styled segments; every other escape sequence (cursor moves,
// erases, OSC titles and links, charset switches…) and the C0 control characters but the tab
// are dropped. The output is plain data — text and a style — which the view turns into text
// nodes inside spans, so a log line can never inject markup.

export interface AnsiStyle {
  /** A CSS colour. */
  fg?: string;
  bg?: string;
  bold?: boolean;
  dim?: boolean;
  italic?: boolean;
  underline?: boolean;
  strike?: boolean;
  inverse?: boolean;
}

export interface AnsiSegment {
  text: string;
  style: AnsiStyle;
}

/** The 16 basic colours: readable on the light and the dark log background. */
export const ANSI_PALETTE: readonly string[] = [
  '#555a63', '#d0312d', '#2e9d3e', '#b58900', '#2f6fdb', '#b03fb0', '#1a9aa6', '#a0a7b0',
  '#7a808a', '#f0524f', '#3fbf50', '#d4a514', '#4c8dff', '#d266d2', '#2ec0c9', '#d8dce2',
];

const CUBE = [0, 95, 135, 175, 215, 255];

function hex2(n: number): string {
  return n.toString(16).padStart(2, '0');
}

/** The xterm 256-colour table: 16 basic, a 6×6×6 cube, 24 greys. */
export function color256(n: number): string | undefined {
  if (!Number.isInteger(n) || n < 0 || n > 255) return undefined;
  if (n < 16) return ANSI_PALETTE[n];
  if (n < 232) {
    const i = n - 16;
    return `#${hex2(CUBE[Math.floor(i / 36)])}${hex2(CUBE[Math.floor(i / 6) % 6])}${hex2(CUBE[i % 6])}`;
  }
  const g = 8 + 10 * (n - 232);
  return `#${hex2(g)}${hex2(g)}${hex2(g)}`;
}

function rgb(r: number, g: number, b: number): string | undefined {
  if (![r, g, b].every((v) => Number.isInteger(v) && v >= 0 && v <= 255)) return undefined;
  return `#${hex2(r)}${hex2(g)}${hex2(b)}`;
}

/**
 * An extended colour (`38;5;n`, `38;2;r;g;b`, or their colon forms) starting at `params[i]`
 * (the 5 or the 2). Returns the colour (undefined when invalid) and how many params it used.
 */
function extended(params: number[], i: number): [string | undefined, number] {
  const mode = params[i];
  if (mode === 5) return [color256(params[i + 1]), 2];
  if (mode === 2) return [rgb(params[i + 1], params[i + 2], params[i + 3]), 4];
  return [undefined, 1];
}

/** Applies one SGR sequence's parameters to `s` (a copy is returned). */
export function applySgr(style: AnsiStyle, raw: string): AnsiStyle {
  const s: AnsiStyle = { ...style };
  const groups = raw === '' ? [''] : raw.split(';');
  for (let gi = 0; gi < groups.length; gi++) {
    const group = groups[gi];
    // The colon form keeps an extended colour in one parameter: 38:2::r:g:b, 38:5:n.
    if (group.includes(':')) {
      const sub = group.split(':').map((x) => (x === '' ? NaN : Number(x)));
      const [code, mode] = sub;
      if ((code === 38 || code === 48) && (mode === 2 || mode === 5)) {
        // 38:2:<colour space>:r:g:b has one more (often empty) field than 38:2:r:g:b.
        const values = mode === 2 && sub.length >= 6 ? [mode, ...sub.slice(3)] : sub.slice(1);
        const [c] = extended(values, 0);
        if (code === 38) s.fg = c;
        else s.bg = c;
      } else if (code === 4) {
        s.underline = sub[1] !== 0; // 4:0 is "no underline"; 4:1…4:5 are kinds of it
      }
      continue;
    }
    const n = group === '' ? 0 : Number(group);
    if (!Number.isInteger(n)) continue;
    if (n === 38 || n === 48) {
      const params = groups.slice(gi + 1).map((x) => (x === '' ? NaN : Number(x)));
      const [c, used] = extended(params, 0);
      if (n === 38) s.fg = c;
      else s.bg = c;
      gi += used;
      continue;
    }
    switch (true) {
      case n === 0:
        for (const k of Object.keys(s)) delete s[k as keyof AnsiStyle];
        break;
      case n === 1:
        s.bold = true;
        break;
      case n === 2:
        s.dim = true;
        break;
      case n === 3:
        s.italic = true;
        break;
      case n === 4:
        s.underline = true;
        break;
      case n === 7:
        s.inverse = true;
        break;
      case n === 9:
        s.strike = true;
        break;
      case n === 21: // doubly underlined (or bold off on old terminals): underline
        s.underline = true;
        break;
      case n === 22:
        delete s.bold;
        delete s.dim;
        break;
      case n === 23:
        delete s.italic;
        break;
      case n === 24:
        delete s.underline;
        break;
      case n === 27:
        delete s.inverse;
        break;
      case n === 29:
        delete s.strike;
        break;
      case n >= 30 && n <= 37:
        s.fg = ANSI_PALETTE[n - 30];
        break;
      case n === 39:
        delete s.fg;
        break;
      case n >= 40 && n <= 47:
        s.bg = ANSI_PALETTE[n - 40];
        break;
      case n === 49:
        delete s.bg;
        break;
      case n >= 90 && n <= 97:
        s.fg = ANSI_PALETTE[n - 90 + 8];
        break;
      case n >= 100 && n <= 107:
        s.bg = ANSI_PALETTE[n - 100 + 8];
        break;
      default:
        break; // blink, fonts, frames…: ignored
    }
  }
  if (s.fg === undefined) delete s.fg;
  if (s.bg === undefined) delete s.bg;
  return s;
}

const ESC = '\x1b';

/**
 * Where the escape sequence starting at `text[i]` (an ESC) ends (the index after it), and its
 * SGR parameters when it is one. A sequence cut off by the end of the line ends there.
 */
function scanEscape(text: string, i: number): { end: number; sgr?: string } {
  const next = text[i + 1];
  if (next === undefined) return { end: i + 1 };
  if (next === '[') {
    // CSI: parameter bytes 0x30–0x3f, intermediates 0x20–0x2f, one final byte 0x40–0x7e.
    let j = i + 2;
    while (j < text.length && text.charCodeAt(j) >= 0x30 && text.charCodeAt(j) <= 0x3f) j++;
    const params = text.slice(i + 2, j);
    while (j < text.length && text.charCodeAt(j) >= 0x20 && text.charCodeAt(j) <= 0x2f) j++;
    if (j >= text.length) return { end: text.length };
    const fin = text.charCodeAt(j);
    if (fin < 0x40 || fin > 0x7e) return { end: j }; // broken: drop what was read, keep the rest
    if (text[j] === 'm' && j === i + 2 + params.length && /^[0-9;:]*$/.test(params)) return { end: j + 1, sgr: params };
    return { end: j + 1 };
  }
  if (next === ']' || next === 'P' || next === 'X' || next === '^' || next === '_') {
    // OSC, DCS, SOS, PM, APC: up to BEL (OSC) or ST (ESC \).
    for (let j = i + 2; j < text.length; j++) {
      if (text[j] === '\x07' && next === ']') return { end: j + 1 };
      if (text[j] === ESC && text[j + 1] === '\\') return { end: j + 2 };
    }
    return { end: text.length };
  }
  // nF (ESC, intermediates 0x20–0x2f, a final byte), e.g. ESC ( B; or a two-character one.
  let j = i + 1;
  while (j < text.length && text.charCodeAt(j) >= 0x20 && text.charCodeAt(j) <= 0x2f) j++;
  if (j >= text.length) return { end: text.length };
  const c = text.charCodeAt(j);
  if (c >= 0x30 && c <= 0x7e) return { end: j + 1 };
  return { end: j }; // ESC before a control or non-ASCII character: only the ESC goes
}

/** Control characters that are not text: C0 but the tab, DEL, and C1 (U+0080–U+009F). */
const CONTROLS = /[\x00-\x08\x0a-\x1f\x7f-\x9f]/g; // eslint-disable-line no-control-regex

/**
 * A stateful parser: a colour set on one line lasts into the next until reset, as in a
 * terminal. Keep one per output stream.
 */
export class AnsiParser {
  style: AnsiStyle = {};

  parse(text: string): AnsiSegment[] {
    const out: AnsiSegment[] = [];
    let buf = '';
    const flush = () => {
      const t = buf.replace(CONTROLS, '');
      buf = '';
      if (!t) return;
      const last = out[out.length - 1];
      if (last && last.style === this.style) last.text += t;
      else out.push({ text: t, style: this.style });
    };
    let i = 0;
    while (i < text.length) {
      const esc = text.indexOf(ESC, i);
      if (esc < 0) {
        buf += text.slice(i);
        break;
      }
      buf += text.slice(i, esc);
      const { end, sgr } = scanEscape(text, esc);
      if (sgr !== undefined) {
        flush();
        this.style = applySgr(this.style, sgr);
      }
      i = Math.max(end, esc + 1);
    }
    flush();
    return out;
  }
}

/** The segments of one piece of text, starting from no style. */
export function ansiSegments(text: string): AnsiSegment[] {
  return new AnsiParser().parse(text);
}

/** The text without any escape sequence or control character. */
export function stripAnsi(text: string): string {
  return ansiSegments(text)
    .map((s) => s.text)
    .join('');
}

/** The CSS a segment's style stands for (inverse swaps the colours; the default ones are the log's). */
export function cssOf(style: AnsiStyle): { color?: string; background?: string; fontWeight?: string; opacity?: string; fontStyle?: string; textDecoration?: string } {
  const css: ReturnType<typeof cssOf> = {};
  let fg = style.fg;
  let bg = style.bg;
  if (style.inverse) {
    [fg, bg] = [bg ?? 'var(--code-bg)', fg ?? 'var(--text)'];
  }
  if (fg) css.color = fg;
  if (bg) css.background = bg;
  if (style.bold) css.fontWeight = '700';
  if (style.dim) css.opacity = '0.7';
  if (style.italic) css.fontStyle = 'italic';
  const deco = [style.underline ? 'underline' : '', style.strike ? 'line-through' : ''].filter(Boolean).join(' ');
  if (deco) css.textDecoration = deco;
  return css;
}
