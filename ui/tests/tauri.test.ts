import { beforeEach, describe, expect, it, vi } from 'vitest';

// The Tauri runtime is not here: the IPC module is replaced by a fake shell that answers the
// commands as src-tauri will (docs/ui.md).
const calls: { cmd: string; args: Record<string, unknown> }[] = [];
type Msg = Record<string, unknown>;
let onStream: ((channel: { onmessage: (m: Msg) => void }) => void) | null = null;

vi.mock('@tauri-apps/api/core', () => {
  class Channel<T> {
    onmessage: (m: T) => void = () => {};
  }
  return {
    Channel,
    invoke: vi.fn(async (cmd: string, args: Record<string, unknown>) => {
      calls.push({ cmd, args });
      if (cmd === 'prefs_get') return { keepEngineRunningOnQuit: true, startAtLogin: false, theme: 'dark', engineBackend: '', window: { w: 1 } };
      if (cmd === 'prefs_set') return args.value;
      if (cmd === 'engine_request') return { status: 200, headers: { etag: '"x"' }, body: '[]' };
      if (cmd === 'exec_resize') return { status: args.rows === 0 ? 500 : 200, headers: {}, body: args.rows === 0 ? '{"message":"bad size"}' : '' };
      if (cmd === 'exec_write') {
        // Slow writes: the next may only go when this one is done.
        await new Promise((r) => setTimeout(r, 5));
        return null;
      }
      if (cmd === 'exec_start') {
        setTimeout(() => onStream?.(args.channel as { onmessage: (m: Msg) => void }), 0);
        return null;
      }
      if (cmd === 'engine_stream') {
        setTimeout(() => onStream?.(args.channel as { onmessage: (m: Msg) => void }), 0);
        return null;
      }
      return null;
    }),
  };
});

const { TauriBackend, toIpcRequest } = await import('../src/lib/backend/tauri');

const b64 = (s: string) => Buffer.from(s).toString('base64');

describe('TauriBackend', () => {
  beforeEach(() => {
    calls.length = 0;
    onStream = null;
  });

  it('sends requests as the shell expects them', async () => {
    const r = await new TauriBackend().request({ method: 'POST', path: '/containers/create', query: { name: 'web', x: undefined }, body: { Image: 'busybox' } });
    expect(r).toEqual({ status: 200, headers: { etag: '"x"' }, text: '[]' });
    expect(calls[0]).toEqual({
      cmd: 'engine_request',
      args: { request: { method: 'POST', path: '/containers/create', query: { name: 'web' }, headers: { 'Content-Type': 'application/json' }, body: '{"Image":"busybox"}' } },
    });
    expect(toIpcRequest({ method: 'GET', path: '/_ping' }).body).toBeNull();
  });

  it('streams channel chunks and ends', async () => {
    onStream = (ch) => {
      ch.onmessage({ event: 'open', status: 200, headers: { 'content-type': 'application/json' } });
      ch.onmessage({ event: 'chunk', data: b64('{"status":"a"}\n') });
      ch.onmessage({ event: 'end' });
    };
    const got: string[] = [];
    await new TauriBackend().stream({ method: 'GET', path: '/events' }, { onChunk: (c) => got.push(new TextDecoder().decode(c)) });
    expect(got).toEqual(['{"status":"a"}\n']);
    expect(calls[0].cmd).toBe('engine_stream');
  });

  it('turns an error status into an EngineError with the body\'s message', async () => {
    onStream = (ch) => {
      ch.onmessage({ event: 'open', status: 404, headers: {} });
      ch.onmessage({ event: 'chunk', data: b64('{"message":"no such container"}') });
      ch.onmessage({ event: 'end' });
    };
    await expect(new TauriBackend().stream({ method: 'GET', path: '/containers/x/logs' }, { onChunk: () => {} })).rejects.toMatchObject({
      status: 404,
      message: 'no such container',
    });
  });

  it('cancels the stream in the shell when aborted', async () => {
    onStream = () => {};
    const a = new AbortController();
    const p = new TauriBackend().stream({ method: 'GET', path: '/events' }, { onChunk: () => {} }, a.signal);
    a.abort();
    await p;
    expect(calls.map((c) => c.cmd)).toEqual(['engine_stream', 'engine_stream_cancel']);
    expect(calls[1].args.id).toBe(calls[0].args.id);
  });

  it('reads and writes the app preferences through prefs_get / prefs_set', async () => {
    const b = new TauriBackend();
    const p = await b.getPrefs();
    expect(p.theme).toBe('dark');
    expect(calls[0]).toEqual({ cmd: 'prefs_get', args: undefined });
    const saved = await b.setPrefs({ ...p, theme: 'light' });
    expect(calls[1]).toEqual({ cmd: 'prefs_set', args: { value: { ...p, theme: 'light' } } });
    // Keys the UI does not know (the shell keeps them) go back as they came.
    expect(saved.window).toEqual({ w: 1 });
  });

  it('starts an exec through exec_start, writes in order, resizes and closes', async () => {
    let ch: { onmessage: (m: Msg) => void } | null = null;
    onStream = (c) => {
      ch = c;
      c.onmessage({ event: 'open', status: 101, headers: { 'content-type': 'application/vnd.docker.raw-stream' } });
      c.onmessage({ event: 'chunk', data: b64('$ ') });
    };
    const out: string[] = [];
    let closed: unknown = 'open';
    const s = await new TauriBackend().execStart('abc', { onData: (d) => out.push(new TextDecoder().decode(d)), onClose: (e) => (closed = e) });
    expect(calls[0]).toMatchObject({ cmd: 'exec_start', args: { exec: 'abc' } });
    const id = calls[0].args.id;
    await new Promise((r) => setTimeout(r, 0));
    expect(out).toEqual(['$ ']);
    s.send('e');
    s.send('cho');
    s.send(new Uint8Array([0x20, 0xc3, 0xa9]));
    await new Promise((r) => setTimeout(r, 40));
    const writes = calls.filter((c) => c.cmd === 'exec_write');
    expect(writes.every((w) => w.args.id === id)).toBe(true);
    // The first on its own, the ones queued meanwhile together: in order either way.
    expect(writes.map((w) => Buffer.from(w.args.data as string, 'base64').toString('utf8')).join('')).toBe('echo é');
    await s.resize(24, 80);
    expect(calls.find((c) => c.cmd === 'exec_resize')?.args).toEqual({ exec: 'abc', rows: 24, cols: 80 });
    await expect(s.resize(0, 0)).rejects.toMatchObject({ status: 500, message: 'bad size' });
    (ch as unknown as { onmessage: (m: Msg) => void }).onmessage({ event: 'end' });
    expect(closed).toBeUndefined();
    s.close(); // after the end: nothing to close
    expect(calls.filter((c) => c.cmd === 'exec_close')).toEqual([]);
  });

  it('rejects a refused exec with berthd\'s status, and reports a broken one', async () => {
    onStream = (c) => {
      c.onmessage({ event: 'open', status: 409, headers: {} });
      c.onmessage({ event: 'chunk', data: b64('{"message":"container x is not running"}') });
      c.onmessage({ event: 'end' });
    };
    await expect(new TauriBackend().execStart('x', { onData: () => {}, onClose: () => {} })).rejects.toMatchObject({
      status: 409,
      message: 'container x is not running',
    });
    let ch: { onmessage: (m: Msg) => void } | null = null;
    onStream = (c) => {
      ch = c;
      c.onmessage({ event: 'open', status: 101, headers: {} });
    };
    let closed: unknown = 'open';
    const s = await new TauriBackend().execStart('y', { onData: () => {}, onClose: (e) => (closed = e) });
    (ch as unknown as { onmessage: (m: Msg) => void }).onmessage({ event: 'error', code: 'transport', message: 'broke off' });
    expect(closed).toMatchObject({ status: 0, message: 'transport: broke off' });
    // Closed by its owner: exec_close, and no onClose afterwards.
    closed = 'open';
    const t = await new TauriBackend().execStart('z', { onData: () => {}, onClose: (e) => (closed = e) });
    t.close();
    (ch as unknown as { onmessage: (m: Msg) => void }).onmessage({ event: 'end' });
    expect(closed).toBe('open');
    expect(calls.filter((c) => c.cmd === 'exec_close')).toHaveLength(1);
  });
});
