// The one interface between the UI and berthd. Everything above `lib/backend/` speaks the
// Docker Engine API and Berth's admin API through it, never through fetch or Tauri directly.
//
// Paths are berthd's own, without a version prefix: `/containers/json`, `/berth/v1/settings`.
// Two implementations: `http.ts` (a browser, through the dev bridge in `ui/bridge/`) and
// `tauri.ts` (the desktop app, through the commands `src-tauri/` registers; see docs/ui.md).

export type Method = 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

export type QueryValue = string | number | boolean | undefined | null;

export interface EngineRequest {
  method: Method;
  /** berthd's path, starting with `/`, without `/v1.xx`. */
  path: string;
  /** Query parameters; `undefined`/`null` values are left out. */
  query?: Record<string, QueryValue>;
  headers?: Record<string, string>;
  /** A string is sent as is; anything else as JSON. */
  body?: unknown;
}

export interface EngineResponse {
  status: number;
  /** Header names in lower case. */
  headers: Record<string, string>;
  /** The body as text (every answer used here is JSON or text). */
  text: string;
}

export interface StreamHead {
  status: number;
  headers: Record<string, string>;
}

export interface StreamHandlers {
  /** Called once, when the answer's head arrives with a 2xx status. */
  onOpen?(head: StreamHead): void;
  /** Called for every chunk of the body, as it arrives. */
  onChunk(chunk: Uint8Array): void;
}

/**
 * The app's own preferences (not berthd's settings). In the desktop app they are the shell's
 * `desktop.json` (`prefs_get`/`prefs_set`, src-tauri/src/prefs.rs); in a browser, which has no
 * app, they are kept in localStorage. Keys this version does not know are kept.
 */
export interface AppPrefs {
  keepEngineRunningOnQuit: boolean;
  startAtLogin: boolean;
  theme: 'system' | 'light' | 'dark';
  engineBackend: string;
  [key: string]: unknown;
}

export const DEFAULT_PREFS: AppPrefs = {
  keepEngineRunningOnQuit: true,
  startAtLogin: false,
  theme: 'system',
  engineBackend: '',
};

/** What an exec session's owner hears (`Backend.execStart`). */
export interface ExecHandlers {
  /** Output of the process (with a TTY: the terminal's raw bytes). */
  onData(chunk: Uint8Array): void;
  /**
   * The session ended: the process exited (berthd closed the stream; no argument) or the
   * transport broke (`error`). Not called after the owner's own `close()`.
   */
  onClose(error?: EngineError): void;
}

/** A started exec: its hijacked stream, both ways (`POST /exec/{id}/start` upgraded). */
export interface ExecSession {
  /** Input for the process, in order (a string is sent as UTF-8). */
  send(data: string | Uint8Array): void;
  /** `POST /exec/{id}/resize?h=&w=`: the terminal's size in rows and columns. */
  resize(rows: number, cols: number): Promise<void>;
  /** Ends the stream (the connection to berthd is closed). */
  close(): void;
}

export interface Backend {
  readonly kind: 'http' | 'tauri';
  /**
   * Starts exec `execId` (made with `POST /containers/{id}/exec`) attached: berthd's hijacked
   * connection, which a browser cannot open itself, carried by the bridge's WebSocket or the
   * shell's `exec_*` commands. Resolves once berthd switched protocols; rejects with an
   * `EngineError` (berthd's status and message: 404 for an unknown exec, 409 for a container
   * that is not running) otherwise.
   */
  execStart(execId: string, handlers: ExecHandlers): Promise<ExecSession>;
  /** The app's preferences (defaults for keys not stored). */
  getPrefs(): Promise<AppPrefs>;
  /** Stores the whole preferences object; resolves to what is now in force. */
  setPrefs(prefs: AppPrefs): Promise<AppPrefs>;
  /** A request whose whole answer is read. Resolves for every HTTP status. */
  request(req: EngineRequest): Promise<EngineResponse>;
  /**
   * A streamed answer (pull progress, logs, events). Resolves when the body ends or `signal`
   * aborts (then without error); rejects with an `EngineError` for a non-2xx status (its body
   * read whole) or a transport failure.
   */
  stream(req: EngineRequest, handlers: StreamHandlers, signal?: AbortSignal): Promise<void>;
}

/** A failed call: an HTTP error status from berthd, or the transport failing (`status` 0). */
export class EngineError extends Error {
  readonly status: number;
  readonly body: unknown;
  constructor(status: number, message: string, body?: unknown) {
    super(message);
    this.name = 'EngineError';
    this.status = status;
    this.body = body;
  }

  /** From an error answer: Docker's `{"message"}` when there is one, else the text. */
  static fromResponse(status: number, text: string): EngineError {
    let body: unknown = text;
    let message = text.trim() || `HTTP ${status}`;
    try {
      body = JSON.parse(text);
      if (body && typeof body === 'object' && typeof (body as { message?: unknown }).message === 'string') {
        message = (body as { message: string }).message;
      }
    } catch {
      // not JSON: the text is the message
    }
    return new EngineError(status, message, body);
  }
}

/** `path?query` with the query encoded, `undefined`/`null` values left out. */
export function pathWithQuery(path: string, query?: Record<string, QueryValue>): string {
  if (!query) return path;
  const parts: string[] = [];
  for (const [k, v] of Object.entries(query)) {
    if (v === undefined || v === null) continue;
    parts.push(`${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`);
  }
  return parts.length ? `${path}?${parts.join('&')}` : path;
}

/** The body to send and its content type. */
export function encodeBody(body: unknown): { text: string; contentType: string } | undefined {
  if (body === undefined) return undefined;
  if (typeof body === 'string') return { text: body, contentType: 'text/plain' };
  return { text: JSON.stringify(body), contentType: 'application/json' };
}
