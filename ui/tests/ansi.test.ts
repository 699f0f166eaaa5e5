import { describe, expect, it } from 'vitest';
import { AnsiParser, ANSI_PALETTE, ansiSegments, applySgr, color256, cssOf, stripAnsi } from '../src/lib/ansi';

const E = '\x1b';

describe('ANSI SGR parser', () => {
  it('turns the basic and bright colours into segments, and resets', () => {
    expect(ansiSegments(`a${E}[31mred${E}[0m b ${E}[92mgreen${E}[39m.`)).toEqual([
      { text: 'a', style: {} },
      { text: 'red', style: { fg: ANSI_PALETTE[1] } },
      { text: ' b ', style: {} },
      { text: 'green', style: { fg: ANSI_PALETTE[10] } },
      { text: '.', style: {} },
    ]);
    expect(ansiSegments(`${E}[41mx${E}[104my${E}[49mz`)).toEqual([
      { text: 'x', style: { bg: ANSI_PALETTE[1] } },
      { text: 'y', style: { bg: ANSI_PALETTE[12] } },
      { text: 'z', style: {} },
    ]);
    // `ESC[m` is a reset too.
    expect(ansiSegments(`${E}[1;33mA${E}[mB`)).toEqual([
      { text: 'A', style: { bold: true, fg: ANSI_PALETTE[3] } },
      { text: 'B', style: {} },
    ]);
  });

  it('reads 256-colour and truecolor, in the semicolon and colon forms', () => {
    expect(color256(196)).toBe('#ff0000');
    expect(color256(16)).toBe('#000000');
    expect(color256(244)).toBe('#808080');
    expect(color256(4)).toBe(ANSI_PALETTE[4]);
    expect(color256(256)).toBeUndefined();
    expect(ansiSegments(`${E}[38;5;208mo`)[0].style).toEqual({ fg: '#ff8700' });
    expect(ansiSegments(`${E}[48;5;21mo`)[0].style).toEqual({ bg: '#0000ff' });
    expect(ansiSegments(`${E}[38;2;10;20;30;1mo`)[0].style).toEqual({ fg: '#0a141e', bold: true });
    expect(ansiSegments(`${E}[38:2::255:128:0mo`)[0].style).toEqual({ fg: '#ff8000' });
    expect(ansiSegments(`${E}[38:2:255:128:0mo`)[0].style).toEqual({ fg: '#ff8000' });
    expect(ansiSegments(`${E}[48:5:46mo`)[0].style).toEqual({ bg: '#00ff00' });
    // Out of range or cut short: no colour, and the parameters after it are not misread.
    expect(ansiSegments(`${E}[38;2;300;0;0mo`)[0].style).toEqual({});
    expect(ansiSegments(`${E}[38;5mo`)[0].style).toEqual({});
  });

  it('sets and clears bold, dim, italic, underline, inverse and strike-through', () => {
    let s = applySgr({}, '1;2;3;4;7;9');
    expect(s).toEqual({ bold: true, dim: true, italic: true, underline: true, inverse: true, strike: true });
    s = applySgr(s, '22;23');
    expect(s).toEqual({ underline: true, inverse: true, strike: true });
    s = applySgr(s, '24;27;29');
    expect(s).toEqual({});
    expect(cssOf({ bold: true, dim: true, italic: true, underline: true, strike: true, fg: '#123456' })).toEqual({
      color: '#123456',
      fontWeight: '700',
      opacity: '0.7',
      fontStyle: 'italic',
      textDecoration: 'underline line-through',
    });
    expect(cssOf({ inverse: true, fg: '#111111' })).toEqual({ color: 'var(--code-bg)', background: '#111111' });
  });

  it('keeps a colour from one line to the next until it is reset', () => {
    const p = new AnsiParser();
    expect(p.parse(`${E}[32mstart`)).toEqual([{ text: 'start', style: { fg: ANSI_PALETTE[2] } }]);
    expect(p.parse('still green')).toEqual([{ text: 'still green', style: { fg: ANSI_PALETTE[2] } }]);
    expect(p.parse(`${E}[0mplain`)).toEqual([{ text: 'plain', style: {} }]);
  });

  it('strips every other escape sequence and control characters', () => {
    expect(stripAnsi(`${E}[2K${E}[1G${E}[?25lprogress${E}[?25h 50%`)).toBe('progress 50%');
    expect(stripAnsi(`${E}]0;window title\x07text`)).toBe('text');
    expect(stripAnsi(`${E}]8;;https://example.com${E}\\link${E}]8;;${E}\\`)).toBe('link');
    expect(stripAnsi(`${E}(Bcharset${E}=${E}7x${E}8`)).toBe('charsetx');
    expect(stripAnsi(`${E}P1$r0m${E}\\dcs`)).toBe('dcs');
    expect(stripAnsi('bell\x07 back\x08space\ttab\x7f\x9bX')).toBe('bell backspace\ttabX');
  });

  it('never lets broken escapes swallow or break the line', () => {
    // Cut off at the end of the line: dropped.
    expect(stripAnsi(`text${E}`)).toBe('text');
    expect(stripAnsi(`text${E}[31`)).toBe('text');
    expect(stripAnsi(`text${E}]0;never ends`)).toBe('text');
    // A CSI broken by a byte that cannot be in it: what was read goes, the rest is text.
    expect(stripAnsi(`a${E}[31\nb`)).toBe('ab');
    expect(stripAnsi(`a${E}[3é1mb`)).toBe('aé1mb');
    // An ESC before a non-ASCII character: only the ESC goes.
    expect(stripAnsi(`a${E}éb`)).toBe('aéb');
    // SGR look-alikes that are not SGR do not change the style.
    expect(ansiSegments(`${E}[?31mx`)).toEqual([{ text: 'x', style: {} }]);
    // (`x` ends this CSI: it is another sequence, dropped.)
    expect(ansiSegments(`${E}[31;xmy`)).toEqual([{ text: 'my', style: {} }]);
    // Nonsense numbers are ignored.
    expect(ansiSegments(`${E}[99999999999999999999;31mz`)[0].style).toEqual({ fg: ANSI_PALETTE[1] });
    // Long runs of escapes stay linear.
    const many = `${E}[31m`.repeat(50_000) + 'end';
    const t0 = Date.now();
    expect(stripAnsi(many)).toBe('end');
    expect(Date.now() - t0).toBeLessThan(2000);
  });

  it('gives markup back as text, never as markup', () => {
    const evil = `${E}[31m<script>alert(1)</script>${E}[0m<img src=x onerror=alert(2)>&amp;`;
    const segs = ansiSegments(evil);
    expect(segs).toEqual([
      { text: '<script>alert(1)</script>', style: { fg: ANSI_PALETTE[1] } },
      { text: '<img src=x onerror=alert(2)>&amp;', style: {} },
    ]);
    // Styles are only ever colours the parser made: a truecolor sequence cannot carry CSS.
    const sneaky = ansiSegments(`${E}[38;2;1;2;3);background:url(x)mq`);
    for (const s of sneaky) {
      for (const v of Object.values(cssOf(s.style))) expect(v).toMatch(/^(#[0-9a-f]{6}|[0-9.]+|italic|underline|line-through|underline line-through|var\(--[a-z-]+\))$/);
    }
  });
});
