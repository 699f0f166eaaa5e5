// The browser's backend: plain HTTP to the dev bridge (`ui/bridge/server.mjs`), which forwards
// `/engine/<path>` to berthd's socket and streams answers chunk by chunk.
import {
  EngineError,
  encodeBody,
  pathWithQuery,
  DEFAULT_PREFS,
  type AppPrefs,
  type Backend,
  type EngineRequest,
  type EngineResponse,
  type ExecHandlers,
  type ExecSession,
  type StreamHandlers,
} from './types';

export interface HttpBackendOptions {
  /** Where the bridge is; '' for the origin the UI was served from. */
  baseUrl?: string;
  /** The bridge's token (sent as `X-Berth-Token`). */
  token?: string;
  fetch?: typeof fetch;
  /** Where the app's preferences are kept (a browser has no app): localStorage by default. */
  storage?: Pick<Storage, 'getItem' | 'setItem'>;
  /** The WebSocket class (a stand-in in tests). */
  WebSocket?: typeof WebSocket;
  /** What relative URLs are resolved against (the page's address by default). */
  location?: string;
}

/** The exec WebSocket's subprotocol (bridge/server.mjs); the token travels as another one. */
export const EXEC_PROTOCOL = 'berth.exec.v1';

export const PREFS_KEY = 'berth-app-prefs';

function headersOf(h: Headers): Record<string, string> {
  const out: Record<string, string> = {};
  h.forEach((v, k) => {
    out[k.toLowerCase()] = v;
  });
  return out;
}

export class HttpBackend implements Backend {
  readonly kind = 'http' as const;

  async getPrefs(): Promise<AppPrefs> {
    const store = this.prefsStorage();
    let stored: Record<string, unknown> = {};
    try {
      const text = store?.getItem(PREFS_KEY);
      if (text) stored = JSON.parse(text) as Record<string, unknown>;
    } catch {
      // unreadable: the defaults
    }
    return { ...DEFAULT_PREFS, ...stored } as AppPrefs;
  }

  async setPrefs(prefs: AppPrefs): Promise<AppPrefs> {
    if (!['system', 'light', 'dark'].includes(prefs.theme)) {
      throw new EngineError(400, `theme: ${JSON.stringify(prefs.theme)} is not one of system, light, dark`);
    }
    const value = { ...DEFAULT_PREFS, ...prefs };
    this.prefsStorage()?.setItem(PREFS_KEY, JSON.stringify(value));
    return value;
  }

  private prefsStorage(): Pick<Storage, 'getItem' | 'setItem'> | undefined {
    if (this.storage) return this.storage;
    return typeof localStorage === 'undefined' ? undefined : localStorage;
  }
  private readonly base: string;
  private readonly token: string | undefined;
  private readonly fetchFn: typeof fetch;

  private readonly storage?: Pick<Storage, 'getItem' | 'setItem'>;
  private readonly ws?: typeof WebSocket;
  private readonly location?: string;

  constructor(opts: HttpBackendOptions = {}) {
    this.base = (opts.baseUrl ?? '').replace(/\/$/, '') + '/engine';
    this.token = opts.token;
    this.fetchFn = opts.fetch ?? globalThis.fetch.bind(globalThis);
    this.storage = opts.storage;
    this.ws = opts.WebSocket;
    this.location = opts.location;
  }

  /**
   * The bridge's WebSocket on `/engine/exec/{id}/start` (bridge/server.mjs): binary messages
   * both ways, `{"event":"open"}` first; a refused exec closes it with 4000 + berthd's status.
   */
  execStart(execId: string, handlers: ExecHandlers): Promise<ExecSession> {
    const WS = this.ws ?? globalThis.WebSocket;
    const url = new URL(`${this.base}/exec/${encodeURIComponent(execId)}/start`, this.location ?? globalThis.location?.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const protocols = [EXEC_PROTOCOL];
    if (this.token) protocols.push(`berth.token.${this.token}`);
    return new Promise<ExecSession>((resolve, reject) => {
      let ws: WebSocket;
      try {
        ws = new WS(url.toString(), protocols);
      } catch (e) {
        reject(new EngineError(0, `cannot reach the bridge: ${(e as Error).message}`));
        return;
      }
      ws.binaryType = 'arraybuffer';
      let opened = false;
      let closedByUs = false;
      const encoder = new TextEncoder();
      const session: ExecSession = {
        send: (data) => {
          if (ws.readyState !== WS.OPEN) return;
          ws.send(typeof data === 'string' ? encoder.encode(data) : data);
        },
        resize: async (rows, cols) => {
          const r = await this.request({ method: 'POST', path: `/exec/${encodeURIComponent(execId)}/resize`, query: { h: rows, w: cols } });
          if (r.status < 200 || r.status > 299) throw EngineError.fromResponse(r.status, r.text);
        },
        close: () => {
          closedByUs = true;
          if (ws.readyState === WS.CONNECTING || ws.readyState === WS.OPEN) ws.close(1000);
        },
      };
      ws.onmessage = (m: MessageEvent) => {
        if (typeof m.data === 'string') {
          if (!opened) {
            opened = true;
            resolve(session);
          }
          return;
        }
        if (opened) handlers.onData(new Uint8Array(m.data as ArrayBuffer));
      };
      ws.onclose = (ev: CloseEvent) => {
        const refused = ev.code >= 4000 && ev.code < 5000;
        const err = refused
          ? new EngineError(ev.code - 4000, ev.reason || `HTTP ${ev.code - 4000}`)
          : ev.code === 1000
            ? undefined
            : new EngineError(0, `the terminal's connection broke (${ev.code}${ev.reason ? ': ' + ev.reason : ''})`);
        if (!opened) {
          opened = true;
          reject(err ?? new EngineError(0, 'the bridge closed the terminal before it started'));
          return;
        }
        if (!closedByUs) handlers.onClose(err);
      };
    });
  }

  private init(req: EngineRequest, signal?: AbortSignal): [string, RequestInit] {
    const headers: Record<string, string> = { ...(req.headers ?? {}) };
    if (this.token) headers['X-Berth-Token'] = this.token;
    const body = encodeBody(req.body);
    if (body && !Object.keys(headers).some((k) => k.toLowerCase() === 'content-type')) {
      headers['Content-Type'] = body.contentType;
    }
    return [
      this.base + pathWithQuery(req.path, req.query),
      { method: req.method, headers, body: body?.text, signal, cache: 'no-store' },
    ];
  }

  async request(req: EngineRequest): Promise<EngineResponse> {
    const [url, init] = this.init(req);
    let resp: Response;
    try {
      resp = await this.fetchFn(url, init);
    } catch (e) {
      throw new EngineError(0, `cannot reach the bridge: ${(e as Error).message}`);
    }
    return { status: resp.status, headers: headersOf(resp.headers), text: await resp.text() };
  }

  async stream(req: EngineRequest, handlers: StreamHandlers, signal?: AbortSignal): Promise<void> {
    const [url, init] = this.init(req, signal);
    let resp: Response;
    try {
      resp = await this.fetchFn(url, init);
    } catch (e) {
      if (signal?.aborted) return;
      throw new EngineError(0, `cannot reach the bridge: ${(e as Error).message}`);
    }
    if (resp.status < 200 || resp.status > 299) {
      throw EngineError.fromResponse(resp.status, await resp.text());
    }
    handlers.onOpen?.({ status: resp.status, headers: headersOf(resp.headers) });
    if (!resp.body) return;
    const reader = resp.body.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return;
        if (value && value.length) handlers.onChunk(value);
      }
    } catch (e) {
      if (signal?.aborted) return;
      throw new EngineError(0, `the stream broke: ${(e as Error).message}`);
    } finally {
      reader.releaseLock();
    }
  }
}
