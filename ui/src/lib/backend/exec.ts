// A shell in a running container, over whichever backend runs: `POST /containers/{id}/exec`
// (a TTY, stdin and output attached), then `Backend.execStart` (the hijacked stream, which
// only the transports know how to carry), then the terminal's size. No transport code here.
import { EngineError, type Backend, type ExecHandlers, type ExecSession } from './types';

export interface ShellOptions {
  /** The command (default `/bin/sh`, which every image with a shell has). */
  cmd?: string[];
  rows: number;
  cols: number;
}

export interface Shell {
  execId: string;
  session: ExecSession;
}

/** The create body for an interactive exec with a terminal of `rows`×`cols`. */
export function shellExecBody(opts: ShellOptions): Record<string, unknown> {
  return {
    AttachStdin: true,
    AttachStdout: true,
    AttachStderr: true,
    Tty: true,
    Cmd: opts.cmd ?? ['/bin/sh'],
    Env: ['TERM=xterm-256color'],
    ConsoleSize: [opts.rows, opts.cols],
  };
}

/**
 * Makes the exec and starts it attached. Rejects with an `EngineError`: 409 for a container
 * that is not running, 404 for one that is gone, status 0 for a transport failure.
 */
export async function openShell(backend: Backend, containerId: string, opts: ShellOptions, handlers: ExecHandlers): Promise<Shell> {
  const r = await backend.request({
    method: 'POST',
    path: `/containers/${encodeURIComponent(containerId)}/exec`,
    body: shellExecBody(opts),
  });
  if (r.status < 200 || r.status > 299) throw EngineError.fromResponse(r.status, r.text);
  const execId = (JSON.parse(r.text) as { Id?: string }).Id;
  if (!execId) throw new EngineError(r.status, 'berthd answered the exec without an Id');
  const session = await backend.execStart(execId, handlers);
  // The size given at create applies at start; a resize makes sure of it (and of a size that
  // changed meanwhile).
  session.resize(opts.rows, opts.cols).catch(() => {});
  return { execId, session };
}

/** `GET /exec/{id}/json`: whether it runs and its exit code (null while it runs or unknown). */
export async function execState(backend: Backend, execId: string): Promise<{ running: boolean; exitCode: number | null }> {
  const r = await backend.request({ method: 'GET', path: `/exec/${encodeURIComponent(execId)}/json` });
  if (r.status < 200 || r.status > 299) throw EngineError.fromResponse(r.status, r.text);
  const v = JSON.parse(r.text) as { Running?: boolean; ExitCode?: number | null };
  return { running: !!v.Running, exitCode: v.Running ? null : (v.ExitCode ?? null) };
}

/** A sentence for a shell that ended with `code`. */
export function exitMessage(code: number | null, cmd = '/bin/sh'): string {
  if (code === 126 || code === 127) return `${cmd} could not be started in this container (exit code ${code}): the image may have no shell.`;
  if (code === null) return 'The shell ended.';
  return `The shell exited with code ${code}.`;
}
