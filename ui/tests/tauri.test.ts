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
});
