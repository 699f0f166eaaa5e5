// Follows `GET /events` and turns each event into re-reads of what it changed. Reconnects after
// a failure; every (re)connection re-reads the lists, so nothing missed meanwhile stays stale.
import { writable, type Readable } from 'svelte/store';
import type { Engine } from '../api/docker';
import type { DockerEvent } from '../api/types';
import type { ContainersStore } from './containers';
import type { ImagesStore } from './images';
import { eventEffect } from './events';

export type LiveStatus =
  | { state: 'connecting' }
  | { state: 'live' }
  | { state: 'retrying'; message: string; inSeconds: number }
  | { state: 'unavailable'; message: string };

export class LiveUpdates {
  private readonly status_ = writable<LiveStatus>({ state: 'connecting' });
  readonly status: Readable<LiveStatus> = { subscribe: this.status_.subscribe };
  private abort: AbortController | null = null;
  private stopped = false;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private failures = 0;
  /** Listeners for every event (the detail page re-reads its container). */
  private readonly listeners = new Set<(e: DockerEvent) => void>();

  constructor(
    private readonly engine: Pick<Engine, 'events'>,
    private readonly containers: Pick<ContainersStore, 'touch' | 'remove' | 'load'>,
    private readonly images: Pick<ImagesStore, 'stale' | 'load'>,
  ) {}

  onEvent(f: (e: DockerEvent) => void): () => void {
    this.listeners.add(f);
    return () => this.listeners.delete(f);
  }

  handle(e: DockerEvent): void {
    const effect = eventEffect(e);
    if (effect.kind === 'container') {
      if (effect.op === 'remove') this.containers.remove(effect.id);
      else void this.containers.touch(effect.id);
    } else if (effect.kind === 'images') {
      this.images.stale();
    }
    for (const f of this.listeners) f(e);
  }

  start(): void {
    this.stopped = false;
    this.connect();
  }

  stop(): void {
    this.stopped = true;
    this.abort?.abort();
    if (this.retryTimer) clearTimeout(this.retryTimer);
  }

  private connect(): void {
    if (this.stopped) return;
    const abort = new AbortController();
    this.abort = abort;
    this.status_.set({ state: 'connecting' });
    this.engine
      .events(
        (e) => this.handle(e),
        abort.signal,
        () => {
          this.failures = 0;
          this.status_.set({ state: 'live' });
          void this.containers.load();
          void this.images.load();
        },
      )
      .then(
        () => this.retry('the event stream ended'),
        (e: { status?: number; message?: string }) => {
          if (e.status === 404 || e.status === 501) {
            this.status_.set({
              state: 'unavailable',
              message: `this berthd has no event stream (GET /events: ${e.status}); lists refresh after your own actions only`,
            });
            return;
          }
          this.retry(e.message ?? String(e));
        },
      );
  }

  private retry(message: string): void {
    if (this.stopped) return;
    this.failures++;
    const inSeconds = Math.min(30, 2 ** Math.min(this.failures, 5));
    this.status_.set({ state: 'retrying', message, inSeconds });
    this.retryTimer = setTimeout(() => this.connect(), inSeconds * 1000);
  }
}
