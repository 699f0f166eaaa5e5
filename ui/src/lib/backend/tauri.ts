// The desktop app's backend: Tauri IPC to the commands `src-tauri/` registers. The shell is an
// adapter only (it forwards to berthd's socket, maps failures to `{code, message}`), so this
// is the same request/stream contract as the HTTP bridge. The contract (docs/ui.md):
//
//   invoke('engine_request', { request }) -> { status, headers, body }        (body: text)
//   invoke('engine_stream', { id, request, channel })                           -> null
//       channel receives { event: 'open', status, headers }
//                        { event: 'chunk', data }   (data: the bytes, base64)
//                        { event: 'end' }
//                        { event: 'error', code, message }
//       a non-2xx status arrives as 'open' followed by the body's chunks and 'end'.
//   invoke('engine_stream_cancel', { id })
//   invoke('exec_start', { id, exec, channel })                                -> null
//       channel receives { event: 'open', status: 101, headers } once berthd switched protocols,
//                        { event: 'chunk', data } … (the process's output), { event: 'end' }
//                        when it exits, or { event: 'error', code, message };
//       a refused start arrives as 'open' with its status, the body's chunks and 'end'.
//   invoke('exec_write', { id, data })   (data: base64)                        -> null
//   invoke('exec_resize', { exec, rows, cols })                                  -> { status, headers, body }
//   invoke('exec_close', { id })                                                 -> null
//
// `request` is `EngineRequest` with `body` already serialised to text.
import { Channel, invoke } from '@tauri-apps/api/core';
import {
  EngineError,
  encodeBody,
  type AppPrefs,
  type Backend,
  type EngineRequest,
  type EngineResponse,
  type ExecHandlers,
  type ExecSession,
  type QueryValue,
  type StreamHandlers,
} from './types';

/** What the Tauri commands receive. */
export interface IpcRequest {
  method: string;
  path: string;
  query: Record<string, string>;
  headers: Record<string, string>;
  body: string | null;
}

export interface IpcResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
}

export type IpcStreamEvent =
  | { event: 'open'; status: number; headers: Record<string, string> }
  | { event: 'chunk'; data: string }
  | { event: 'end' }
  | { event: 'error'; code: string; message: string };

/** How the shell reports a failed command. */
export interface IpcError {
  code: string;
  message: string;
}

export function toIpcRequest(req: EngineRequest): IpcRequest {
  const query: Record<string, string> = {};
  for (const [k, v] of Object.entries(req.query ?? {}) as [string, QueryValue][]) {
    if (v !== undefined && v !== null) query[k] = String(v);
  }
  const headers: Record<string, string> = { ...(req.headers ?? {}) };
  const body = encodeBody(req.body);
  if (body && !Object.keys(headers).some((k) => k.toLowerCase() === 'content-type')) {
    headers['Content-Type'] = body.contentType;
  }
  return { method: req.method, path: req.path, query, headers, body: body?.text ?? null };
}

function ipcError(e: unknown): EngineError {
  if (e && typeof e === 'object' && 'message' in e) {
    const err = e as IpcError;
    return new EngineError(0, `${err.code ? err.code + ': ' : ''}${err.message}`, e);
  }
  return new EngineError(0, String(e), e);
}

function fromBase64(s: string): Uint8Array {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function toBase64(bytes: Uint8Array): string {
  let bin = '';
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(bin);
}

let streamSeq = 0;

export class TauriBackend implements Backend {
  readonly kind = 'tauri' as const;

  /** `prefs_get` → the shell's `Prefs` (camelCase, src-tauri/src/prefs.rs). */
  async getPrefs(): Promise<AppPrefs> {
    try {
      return await invoke<AppPrefs>('prefs_get');
    } catch (e) {
      throw ipcError(e);
    }
  }

  /** `prefs_set { value }` → the prefs in force (the shell validates, writes start-at-login). */
  async setPrefs(prefs: AppPrefs): Promise<AppPrefs> {
    try {
      return await invoke<AppPrefs>('prefs_set', { value: prefs });
    } catch (e) {
      throw ipcError(e);
    }
  }

  async request(req: EngineRequest): Promise<EngineResponse> {
    try {
      const r = await invoke<IpcResponse>('engine_request', { request: toIpcRequest(req) });
      return { status: r.status, headers: r.headers, text: r.body };
    } catch (e) {
      throw ipcError(e);
    }
  }

  execStart(execId: string, handlers: ExecHandlers): Promise<ExecSession> {
    return tauriExecStart(execId, handlers);
  }

  stream(req: EngineRequest, handlers: StreamHandlers, signal?: AbortSignal): Promise<void> {
    const id = `s${Date.now().toString(36)}-${++streamSeq}`;
    return new Promise<void>((resolve, reject) => {
      let failedStatus = 0;
      const errorBody: Uint8Array[] = [];
      let settled = false;
      const finish = (err?: EngineError) => {
        if (settled) return;
        settled = true;
        signal?.removeEventListener('abort', onAbort);
        if (err) reject(err);
        else resolve();
      };
      const onAbort = () => {
        invoke('engine_stream_cancel', { id }).catch(() => {});
        finish();
      };
      const channel = new Channel<IpcStreamEvent>();
      channel.onmessage = (m) => {
        if (settled) return;
        switch (m.event) {
          case 'open':
            if (m.status < 200 || m.status > 299) failedStatus = m.status;
            else handlers.onOpen?.({ status: m.status, headers: m.headers });
            break;
          case 'chunk': {
            const bytes = fromBase64(m.data);
            if (failedStatus) errorBody.push(bytes);
            else handlers.onChunk(bytes);
            break;
          }
          case 'end':
            if (failedStatus) {
              const text = new TextDecoder().decode(concat(errorBody));
              finish(EngineError.fromResponse(failedStatus, text));
            } else finish();
            break;
          case 'error':
            finish(ipcError(m));
            break;
        }
      };
      if (signal?.aborted) return finish();
      signal?.addEventListener('abort', onAbort);
      invoke('engine_stream', { id, request: toIpcRequest(req), channel }).catch((e) =>
        finish(ipcError(e)),
      );
    });
  }
}

export class TauriExecSession implements ExecSession {
  private queue: Uint8Array[] = [];
  private writing = false;
  private closed = false;
  /** Whether the owner called `close()`. */
  closedByOwner = false;
  private readonly encoder = new TextEncoder();

  constructor(
    private readonly id: string,
    private readonly exec: string,
  ) {}

  /** Input is written one `exec_write` at a time, so keystrokes keep their order. */
  send(data: string | Uint8Array): void {
    if (this.closed) return;
    this.queue.push(typeof data === 'string' ? this.encoder.encode(data) : data);
    if (!this.writing) void this.drain();
  }

  private async drain(): Promise<void> {
    this.writing = true;
    while (this.queue.length && !this.closed) {
      const data = concat(this.queue.splice(0));
      try {
        await invoke('exec_write', { id: this.id, data: toBase64(data) });
      } catch {
        // the session ended; its channel says so
        this.queue = [];
      }
    }
    this.writing = false;
  }

  async resize(rows: number, cols: number): Promise<void> {
    let r: IpcResponse;
    try {
      r = await invoke<IpcResponse>('exec_resize', { exec: this.exec, rows, cols });
    } catch (e) {
      throw ipcError(e);
    }
    if (r.status < 200 || r.status > 299) throw EngineError.fromResponse(r.status, r.body);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.closedByOwner = true;
    invoke('exec_close', { id: this.id }).catch(() => {});
  }

  /** The session ended on its own (no `exec_close` needed). */
  ended(): void {
    this.closed = true;
  }
}

/** `exec_start` and its channel (the contract at the top of the file). */
export function tauriExecStart(execId: string, handlers: ExecHandlers): Promise<ExecSession> {
  const id = `x${Date.now().toString(36)}-${++streamSeq}`;
  const session = new TauriExecSession(id, execId);
  return new Promise<ExecSession>((resolve, reject) => {
    let state: 'starting' | 'open' | 'refused' | 'done' = 'starting';
    let refusedStatus = 0;
    const body: Uint8Array[] = [];
    const end = (err?: EngineError) => {
      const was = state;
      state = 'done';
      session.ended();
      if (was === 'open') {
        if (!session.closedByOwner) handlers.onClose(err);
      }
      else if (was === 'refused') reject(EngineError.fromResponse(refusedStatus, new TextDecoder().decode(concat(body))));
      else if (was === 'starting') reject(err ?? new EngineError(0, 'the exec ended before it started'));
    };
    const channel = new Channel<IpcStreamEvent>();
    channel.onmessage = (m) => {
      if (state === 'done') return;
      switch (m.event) {
        case 'open':
          if (m.status === 101) {
            state = 'open';
            resolve(session);
          } else {
            state = 'refused';
            refusedStatus = m.status;
          }
          break;
        case 'chunk': {
          const bytes = fromBase64(m.data);
          if (state === 'open') handlers.onData(bytes);
          else body.push(bytes);
          break;
        }
        case 'end':
          end();
          break;
        case 'error':
          end(ipcError(m));
          break;
      }
    };
    invoke('exec_start', { id, exec: execId, channel }).catch((e) => end(ipcError(e)));
  });
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Whether the page runs inside the Tauri shell. */
export function inTauri(): boolean {
  return typeof window !== 'undefined' && '__TAURI_INTERNALS__' in window;
}
