// Short messages at the bottom of the window (announced to screen readers).
import { writable } from 'svelte/store';

export interface Toast {
  id: number;
  kind: 'info' | 'error';
  text: string;
}

export const toasts = writable<Toast[]>([]);
let next = 1;

export function toast(text: string, kind: Toast['kind'] = 'info', ms = kind === 'error' ? 8000 : 3500): void {
  const id = next++;
  toasts.update((t) => [...t, { id, kind, text }]);
  setTimeout(() => dismiss(id), ms);
}

export function dismiss(id: number): void {
  toasts.update((t) => t.filter((x) => x.id !== id));
}

/** Runs an action, reporting its failure as a toast; answers whether it succeeded. */
export async function attempt(what: string, f: () => Promise<unknown>): Promise<boolean> {
  try {
    await f();
    return true;
  } catch (e) {
    toast(`${what}: ${(e as Error).message}`, 'error');
    return false;
  }
}
