import { describe, expect, it, vi } from 'vitest';
import { get, writable } from 'svelte/store';
import { ContainersStore, REFETCH_ALL_THRESHOLD, filtered, matchesFilter, type ContainerFilter } from '../src/lib/stores/containers';
import { eventEffect } from '../src/lib/stores/events';
import { LiveUpdates } from '../src/lib/stores/live';
import { usage } from '../src/lib/stores/images';
import type { ContainerSummary, DockerEvent } from '../src/lib/api/types';
import { EngineError } from '../src/lib/backend/types';

const c = (id: string, over: Partial<ContainerSummary> = {}): ContainerSummary => ({
  Id: id,
  Names: [`/${id}-name`],
  Image: 'busybox',
  ImageID: 'sha256:img',
  Created: 100,
  State: 'running',
  Status: 'Up 1 second',
  Ports: [],
  ...over,
});

const ev = (Type: string, Action: string, ID: string): DockerEvent => ({ Type, Action, Actor: { ID, Attributes: {} }, time: 1, timeNano: 1e9 });

function fakeEngine(initial: ContainerSummary[]) {
  const db = new Map(initial.map((x) => [x.Id, x]));
  return {
    db,
    listContainers: vi.fn(async () => [...db.values()]),
    container: vi.fn(async (id: string) => db.get(id) ?? null),
  };
}

const now = (f: () => void) => f();

describe('event effects', () => {
  it('maps Docker events to re-reads', () => {
    expect(eventEffect(ev('container', 'start', 'a'))).toEqual({ kind: 'container', id: 'a', op: 'refresh' });
    expect(eventEffect(ev('container', 'destroy', 'a'))).toEqual({ kind: 'container', id: 'a', op: 'remove' });
    expect(eventEffect(ev('container', 'health_status: healthy', 'a'))).toEqual({ kind: 'container', id: 'a', op: 'refresh' });
    expect(eventEffect(ev('container', 'exec_start: sh', 'a'))).toEqual({ kind: 'none' });
    expect(eventEffect(ev('container', 'attach', 'a'))).toEqual({ kind: 'none' });
    expect(eventEffect(ev('image', 'pull', 'busybox:latest'))).toEqual({ kind: 'images' });
    expect(eventEffect(ev('image', 'untag', 'sha256:x'))).toEqual({ kind: 'images' });
    expect(eventEffect(ev('network', 'connect', 'n'))).toEqual({ kind: 'none' });
  });
  it('reads the old status/id form', () => {
    expect(eventEffect({ status: 'die', id: 'abc', from: 'busybox', time: 1 } as unknown as DockerEvent)).toEqual({
      kind: 'container',
      id: 'abc',
      op: 'refresh',
    });
  });
});

describe('containers store', () => {
  it('loads newest first', async () => {
    const e = fakeEngine([c('old', { Created: 1 }), c('new', { Created: 9 })]);
    const s = new ContainersStore(e, now);
    await s.load();
    expect(get(s).items.map((x) => x.Id)).toEqual(['new', 'old']);
    expect(get(s).loaded).toBe(true);
  });

  it('adds, updates and drops single containers on touch', async () => {
    const e = fakeEngine([c('a')]);
    const s = new ContainersStore(e, now);
    await s.load();
    e.db.set('b', c('b', { Created: 200 }));
    e.db.set('a', c('a', { State: 'exited' }));
    await Promise.all([s.touch('a'), s.touch('b')]);
    expect(get(s).items.map((x) => [x.Id, x.State])).toEqual([
      ['b', 'running'],
      ['a', 'exited'],
    ]);
    e.db.delete('a');
    await s.touch('a');
    expect(get(s).items.map((x) => x.Id)).toEqual(['b']);
    expect(e.listContainers).toHaveBeenCalledTimes(1);
  });

  it('coalesces a burst into one batch, and a big burst into one list read', async () => {
    const e = fakeEngine([]);
    let flush: (() => void) | null = null;
    let scheduled = 0;
    const s = new ContainersStore(e, (f) => {
      scheduled++;
      flush = f;
    });
    await s.load();
    const ids = Array.from({ length: REFETCH_ALL_THRESHOLD + 5 }, (_, i) => `c${i}`);
    for (const id of ids) e.db.set(id, c(id));
    const done = ids.map((id) => s.touch(id));
    expect(scheduled).toBe(1);
    (flush as unknown as () => void)();
    await Promise.all(done);
    expect(e.container).not.toHaveBeenCalled();
    expect(e.listContainers).toHaveBeenCalledTimes(2);
    expect(get(s).items).toHaveLength(ids.length);
  });

  it('keeps what it shows when a single read fails', async () => {
    const e = fakeEngine([c('a')]);
    const s = new ContainersStore(e, now);
    await s.load();
    e.container.mockRejectedValueOnce(new Error('boom'));
    await s.touch('a');
    expect(get(s).items.map((x) => x.Id)).toEqual(['a']);
  });

  it('filters by text and state', () => {
    const x = c('abc123', { Names: ['/web'], Image: 'nginx:1', State: 'exited', Ports: [{ PrivatePort: 80, PublicPort: 8080, Type: 'tcp' }] });
    const f = (text: string, state: ContainerFilter['state'] = 'all') => matchesFilter(x, { text, state });
    expect(f('WEB')).toBe(true);
    expect(f('nginx')).toBe(true);
    expect(f('abc')).toBe(true);
    expect(f('8080')).toBe(true);
    expect(f('redis')).toBe(false);
    expect(f('', 'running')).toBe(false);
    expect(f('', 'stopped')).toBe(true);
    const store = writable({ items: [x, c('r')], loaded: true });
    const filter = writable<ContainerFilter>({ text: '', state: 'running' });
    expect(get(filtered(store, filter)).map((y) => y.Id)).toEqual(['r']);
  });

  it('counts images in use', () => {
    expect(usage([c('a'), c('b'), c('x', { ImageID: 'sha256:other' })]).get('sha256:img')).toBe(2);
  });
});

describe('live updates', () => {
  function streamingEngine() {
    let push: ((e: DockerEvent) => void) | null = null;
    let end: (() => void) | null = null;
    return {
      push: (e: DockerEvent) => push?.(e),
      end: () => end?.(),
      events: vi.fn((on: (e: DockerEvent) => void, _signal: AbortSignal, onOpen?: () => void) => {
        push = on;
        onOpen?.();
        return new Promise<void>((resolve) => (end = resolve));
      }),
    };
  }

  it('turns events into store updates and re-reads on (re)connect', async () => {
    const eng = fakeEngine([c('a')]);
    const containers = new ContainersStore(eng, now);
    const images = { stale: vi.fn(), load: vi.fn(async () => {}) };
    const stream = streamingEngine();
    const live = new LiveUpdates(stream, containers, images);
    const seen: DockerEvent[] = [];
    live.onEvent((e) => seen.push(e));
    live.start();
    expect(get(live.status)).toEqual({ state: 'live' });
    await Promise.resolve();
    expect(eng.listContainers).toHaveBeenCalledTimes(1);
    expect(images.load).toHaveBeenCalledTimes(1);

    eng.db.set('b', c('b', { Created: 300 }));
    stream.push(ev('container', 'create', 'b'));
    await containers.touch('zzz-noop');
    expect(get(containers).items.map((x) => x.Id)).toContain('b');

    stream.push(ev('container', 'destroy', 'a'));
    expect(get(containers).items.map((x) => x.Id)).not.toContain('a');

    stream.push(ev('image', 'pull', 'busybox'));
    expect(images.stale).toHaveBeenCalledTimes(1);
    expect(seen).toHaveLength(3);
    live.stop();
  });

  it('says when berthd has no event stream, and retries after a broken one', async () => {
    vi.useFakeTimers();
    try {
      const containers = { touch: vi.fn(async () => {}), remove: vi.fn(), load: vi.fn(async () => {}) };
      const images = { stale: vi.fn(), load: vi.fn(async () => {}) };
      const missing = { events: vi.fn(() => Promise.reject(new EngineError(404, 'page not found'))) };
      const a = new LiveUpdates(missing, containers, images);
      a.start();
      await vi.advanceTimersByTimeAsync(0);
      expect(get(a.status).state).toBe('unavailable');

      const broken = { events: vi.fn(() => Promise.reject(new EngineError(0, 'connection reset'))) };
      const b = new LiveUpdates(broken, containers, images);
      b.start();
      await vi.advanceTimersByTimeAsync(0);
      expect(get(b.status)).toMatchObject({ state: 'retrying', inSeconds: 2 });
      await vi.advanceTimersByTimeAsync(2000);
      expect(broken.events).toHaveBeenCalledTimes(2);
      b.stop();
    } finally {
      vi.useRealTimers();
    }
  });
});
