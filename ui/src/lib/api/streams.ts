// Decoders for the Docker API's streamed bodies: newline-delimited JSON (pull progress, events)
// and the multiplexed stdout/stderr framing of logs without a TTY.

/** Splits a byte stream into lines; keeps a partial last line until the next chunk. */
export class LineSplitter {
  private readonly decoder = new TextDecoder();
  private rest = '';

  push(chunk: Uint8Array): string[] {
    const text = this.rest + this.decoder.decode(chunk, { stream: true });
    const lines = text.split('\n');
    this.rest = lines.pop() ?? '';
    return lines;
  }

  /** What is left at the end of the stream (a last line without a newline). */
  end(): string[] {
    const last = this.rest + this.decoder.decode();
    this.rest = '';
    return last ? [last] : [];
  }
}

/**
 * Newline-delimited JSON: calls `onValue` for each complete object. Lines that are not JSON are
 * skipped (and reported to `onBadLine`), so one odd line does not end a long-lived stream.
 */
export class JsonLines<T = unknown> {
  private readonly lines = new LineSplitter();
  constructor(
    private readonly onValue: (v: T) => void,
    private readonly onBadLine?: (line: string) => void,
  ) {}

  push(chunk: Uint8Array): void {
    for (const l of this.lines.push(chunk)) this.line(l);
  }

  end(): void {
    for (const l of this.lines.end()) this.line(l);
  }

  private line(l: string): void {
    const t = l.trim();
    if (!t) return;
    let v: T;
    try {
      v = JSON.parse(t) as T;
    } catch {
      this.onBadLine?.(t);
      return;
    }
    this.onValue(v);
  }
}

export type StdStream = 'stdout' | 'stderr';

/**
 * Docker's multiplexed stream: frames of an 8-byte header (stream type, 3 zero bytes, a
 * big-endian u32 length) and the payload. Frames may span chunks.
 */
export class StdDemux {
  private buf = new Uint8Array(0);
  constructor(private readonly onFrame: (stream: StdStream, payload: Uint8Array) => void) {}

  push(chunk: Uint8Array): void {
    const b = new Uint8Array(this.buf.length + chunk.length);
    b.set(this.buf, 0);
    b.set(chunk, this.buf.length);
    let at = 0;
    while (b.length - at >= 8) {
      const kind = b[at];
      const len = ((b[at + 4] << 24) >>> 0) + (b[at + 5] << 16) + (b[at + 6] << 8) + b[at + 7];
      if (b.length - at - 8 < len) break;
      const payload = b.subarray(at + 8, at + 8 + len);
      this.onFrame(kind === 2 ? 'stderr' : 'stdout', payload);
      at += 8 + len;
    }
    this.buf = b.slice(at);
  }
}

export interface LogLine {
  stream: StdStream;
  /** RFC 3339 time when the logs were asked for with timestamps. */
  time?: string;
  text: string;
}

/**
 * Log lines from either a multiplexed stream (`tty` false) or a raw one; with `timestamps`, the
 * leading RFC 3339 time of each line is split off.
 */
export class LogDecoder {
  private readonly demux: StdDemux | null;
  private readonly out = new LineSplitter();
  private readonly err = new LineSplitter();

  constructor(
    multiplexed: boolean,
    private readonly timestamps: boolean,
    private readonly onLine: (l: LogLine) => void,
  ) {
    this.demux = multiplexed ? new StdDemux((s, p) => this.text(s, p)) : null;
  }

  push(chunk: Uint8Array): void {
    if (this.demux) this.demux.push(chunk);
    else this.text('stdout', chunk);
  }

  end(): void {
    for (const l of this.out.end()) this.emit('stdout', l);
    for (const l of this.err.end()) this.emit('stderr', l);
  }

  private text(stream: StdStream, bytes: Uint8Array): void {
    const split = stream === 'stderr' ? this.err : this.out;
    for (const l of split.push(bytes)) this.emit(stream, l);
  }

  private emit(stream: StdStream, raw: string): void {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (this.timestamps) {
      const sp = line.indexOf(' ');
      if (sp > 0 && /^\d{4}-\d\d-\d\dT/.test(line)) {
        this.onLine({ stream, time: line.slice(0, sp), text: line.slice(sp + 1) });
        return;
      }
    }
    this.onLine({ stream, text: line });
  }
}
