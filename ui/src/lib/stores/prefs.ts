// The app's preferences (General pane): read and written through the backend (the desktop
// shell's prefs_get/prefs_set, or localStorage in a browser); the theme is applied at once.
import { writable } from 'svelte/store';
import { DEFAULT_PREFS, type AppPrefs, type Backend } from '../backend/types';

export type Theme = AppPrefs['theme'];

export const appPrefs = writable<AppPrefs>({ ...DEFAULT_PREFS });

/**
 * `system` follows `prefers-color-scheme` (no attribute); `light`/`dark` set
 * `data-theme` on the root element, which app.css's variables follow.
 */
export function applyTheme(theme: Theme, root: HTMLElement | undefined = globalThis.document?.documentElement): void {
  if (!root) return;
  if (theme === 'light' || theme === 'dark') root.dataset.theme = theme;
  else delete root.dataset.theme;
}

export async function loadPrefs(backend: Backend): Promise<AppPrefs> {
  const p = await backend.getPrefs();
  appPrefs.set(p);
  applyTheme(p.theme);
  return p;
}

/** Saves `change` over `current`; the theme applies when the backend accepted it. */
export async function savePrefs(backend: Backend, current: AppPrefs, change: Partial<AppPrefs>): Promise<AppPrefs> {
  const p = await backend.setPrefs({ ...current, ...change });
  appPrefs.set(p);
  applyTheme(p.theme);
  return p;
}
