// Picks the backend: Tauri IPC inside the desktop app, else HTTP to the dev bridge that served
// the page. The bridge's token comes in the URL's fragment (`#token=…`, printed by the bridge)
// and is kept for the tab's session.
import { HttpBackend } from './http';
import { TauriBackend, inTauri } from './tauri';
import type { Backend } from './types';

export * from './types';
export { HttpBackend } from './http';
export { TauriBackend } from './tauri';

const TOKEN_KEY = 'berth-bridge-token';

function bridgeToken(): string | undefined {
  const m = /(?:^#|[#&])token=([^&]+)/.exec(location.hash);
  if (m) {
    const token = decodeURIComponent(m[1]);
    sessionStorage.setItem(TOKEN_KEY, token);
    // Keep the token out of the address bar (and of screenshots, history, bookmarks).
    const rest = location.hash.replace(/(^#|&)token=[^&]+/, '$1').replace(/^#&/, '#');
    history.replaceState(null, '', location.pathname + location.search + (rest === '#' ? '' : rest));
    return token;
  }
  return sessionStorage.getItem(TOKEN_KEY) ?? undefined;
}

export function createBackend(): Backend {
  if (inTauri()) return new TauriBackend();
  return new HttpBackend({ token: bridgeToken() });
}
export { openShell, execState, exitMessage, shellExecBody, type Shell, type ShellOptions } from './exec';
