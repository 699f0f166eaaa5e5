// The desktop app's own commands besides the engine's transport (docs/desktop.md): the
// engine's state while the shell starts berthd, Start/Stop, and the app's preferences. Only
// meaningful inside the Tauri shell (`inTauri()`).
import { invoke } from '@tauri-apps/api/core';
import { listen } from '@tauri-apps/api/event';

export type EngineProcessState = 'checking' | 'starting' | 'running' | 'stopping' | 'stopped' | 'failed';

/** `engine_status` and the `engine-status` event. */
export interface EngineStatus {
  state: EngineProcessState;
  message: string;
  /** While starting: berthd's latest log line; after a failure: the end of its log. */
  logTail: string | null;
  socket: string;
  log: string;
  berthd: string | null;
  backend: string | null;
  elapsedMs: number | null;
}

export interface DesktopPrefs {
  keepEngineRunningOnQuit: boolean;
  startAtLogin: boolean;
  theme: 'system' | 'light' | 'dark';
  engineBackend: string;
  [key: string]: unknown;
}

export function engineStatus(): Promise<EngineStatus> {
  return invoke<EngineStatus>('engine_status');
}

/** Calls `f` with every state change; resolves to the function that stops listening. */
export function onEngineStatus(f: (s: EngineStatus) => void): Promise<() => void> {
  return listen<EngineStatus>('engine-status', (e) => f(e.payload));
}

export function startEngine(): Promise<void> {
  return invoke('engine_start');
}

export function stopEngine(): Promise<void> {
  return invoke('engine_stop');
}

export function getPrefs(): Promise<DesktopPrefs> {
  return invoke<DesktopPrefs>('prefs_get');
}

export function setPrefs(value: DesktopPrefs): Promise<DesktopPrefs> {
  return invoke<DesktopPrefs>('prefs_set', { value });
}
