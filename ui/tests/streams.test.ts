import { describe, expect, it } from 'vitest';
import { JsonLines, LineSplitter, LogDecoder, StdDemux, type LogLine } from '../src/lib/api/streams';

const enc = (s: string) => new TextEncoder().encode(s);

function frame(kind: 1 | 2, text: string): Uint8Array {
  const p = enc(text);
  const f = new Uint8Array(8 + p.length);
  f[0] = kind;
  new DataView(f.buffer).setUint32(4, p.length);
  f.set(p, 8);
  return f;
}

describe('stream decoders', () => {
  it('splits lines across chunks, UTF-8 split mid-character included', () => {
    const s = new LineSplitter();
    const bytes = enc('héllo\nwor');
    expect(s.push(bytes.slice(0, 2))).toEqual([]);
    expect(s.push(bytes.slice(2))).toEqual(['héllo']);
    expect(s.push(enc('ld\n'))).toEqual(['world']);
    expect(s.push(enc('tail'))).toEqual([]);
    expect(s.end()).toEqual(['tail']);
  });

  it('parses newline-delimited JSON, skipping bad lines', () => {
    const got: unknown[] = [];
    const bad: string[] = [];
    const j = new JsonLines((v) => got.push(v), (l) => bad.push(l));
    j.push(enc('{"a":1}\n{"b"'));
    j.push(enc(':2}\n\nnot json\n{"c":3}'));
    j.end();
    expect(got).toEqual([{ a: 1 }, { b: 2 }, { c: 3 }]);
    expect(bad).toEqual(['not json']);
  });

  it('demultiplexes stdout/stderr frames split anywhere', () => {
    const got: [string, string][] = [];
    const d = new StdDemux((s, p) => got.push([s, new TextDecoder().decode(p)]));
    const all = new Uint8Array([...frame(1, 'out\n'), ...frame(2, 'err\n')]);
    for (const b of all) d.push(new Uint8Array([b]));
    expect(got).toEqual([
      ['stdout', 'out\n'],
      ['stderr', 'err\n'],
    ]);
  });

  it('splits timestamps from log lines', () => {
    const lines: LogLine[] = [];
    const d = new LogDecoder(true, true, (l) => lines.push(l));
    d.push(frame(1, '2026-12-01T22:00:00.123456789Z hello\n2026-12-01T22:00:01Z wor'));
    d.push(frame(1, 'ld\n'));
    d.push(frame(2, 'plain\n'));
    d.end();
    expect(lines).toEqual([
      { stream: 'stdout', time: '2026-12-01T22:00:00.123456789Z', text: 'hello' },
      { stream: 'stdout', time: '2026-12-01T22:00:01Z', text: 'world' },
      { stream: 'stderr', text: 'plain' },
    ]);
  });

  it('reads raw (tty) logs and keeps a last line without a newline', () => {
    const lines: LogLine[] = [];
    const d = new LogDecoder(false, false, (l) => lines.push(l));
    d.push(enc('a\r\nb'));
    d.end();
    expect(lines.map((l) => l.text)).toEqual(['a', 'b']);
  });
});
