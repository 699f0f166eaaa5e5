// The containers list: loaded once, then kept current item by item from events (and after the
// UI's own actions). Bursts of events are coalesced; a large burst re-reads the list once.
import { writable, derived, type Readable } from 'svelte/store';
import type { Engine } from '../api/docker';
import type { ContainerSummary } from '../api/types';

export interface ListState<T> {
  items: T[];
  loaded: boolean;
  error?: string;
}

/** Above this many pending ids one list read is cheaper than many single reads. */
export const REFETCH_ALL_THRESHOLD = 20;

export class ContainersStore implements Readable<ListState<ContainerSummary>> {
  private readonly state = writable<ListState<ContainerSummary>>({ items: [], loaded: false });
  readonly subscribe = this.state.subscribe;
  private pending = new Set<string>();
  private waiters: (() => void)[] = [];
  private scheduled = false;
  private running = false;
  private generation = 0;

  constructor(
    private readonly engine: Pick<Engine, 'listContainers' | 'container'>,
    /** How a batch waits for more events (tests pass an immediate one). */
    private readonly schedule: (f: () => void) => void = (f) => setTimeout(f, 16),
  ) {}

  async load(): Promise<void> {
    const gen = ++this.generation;
    this.pending.clear();
    try {
      const items = await this.engine.listContainers();
      if (gen !== this.generation) return;
      this.state.set({ items: sortContainers(items), loaded: true });
    } catch (e) {
      this.state.update((s) => ({ ...s, loaded: true, error: (e as Error).message }));
    }
  }

  /**
   * Marks a container stale; it is re-read (or dropped when gone) with the others touched in
   * the same moment. Resolves when it has been.
   */
  touch(id: string): Promise<void> {
    this.pending.add(id);
    const done = new Promise<void>((resolve) => this.waiters.push(resolve));
    this.kick();
    return done;
  }

  private kick(): void {
    if (this.scheduled || this.running) return;
    this.scheduled = true;
    this.schedule(() => {
      this.scheduled = false;
      void this.run();
    });
  }

  private async run(): Promise<void> {
    this.running = true;
    const waiters = this.waiters;
    this.waiters = [];
    try {
      await this.flush();
    } finally {
      this.running = false;
      for (const w of waiters) w();
      // Touched while this batch was being read: another batch.
      if (this.pending.size) this.kick();
    }
  }

  remove(id: string): void {
    this.state.update((s) => ({ ...s, items: s.items.filter((c) => c.Id !== id && !c.Id.startsWith(id)) }));
  }

  private async flush(): Promise<void> {
    const ids = [...this.pending];
    this.pending.clear();
    if (ids.length > REFETCH_ALL_THRESHOLD) return this.load();
    const gen = this.generation;
    const results = await Promise.all(
      ids.map((id) =>
        this.engine.container(id).then(
          (c) => [id, c] as const,
          () => [id, undefined] as const,
        ),
      ),
    );
    if (gen !== this.generation) return;
    this.state.update((s) => {
      let items = s.items;
      for (const [id, c] of results) {
        if (c === undefined) continue; // the read failed: keep what is shown
        const at = items.findIndex((x) => x.Id === id || x.Id.startsWith(id) || (c && x.Id === c.Id));
        if (c === null) {
          if (at >= 0) items = items.filter((_, i) => i !== at);
        } else if (at >= 0) {
          items = items.slice();
          items[at] = c;
        } else {
          items = sortContainers([...items, c]);
        }
      }
      return { ...s, items };
    });
  }
}

/** Newest first, as `docker ps`. */
export function sortContainers(items: ContainerSummary[]): ContainerSummary[] {
  return [...items].sort((a, b) => b.Created - a.Created || a.Id.localeCompare(b.Id));
}

export interface ContainerFilter {
  text: string;
  state: 'all' | 'running' | 'stopped' | 'paused';
}

export function matchesFilter(c: ContainerSummary, f: ContainerFilter): boolean {
  if (f.state === 'running' && c.State !== 'running') return false;
  if (f.state === 'paused' && c.State !== 'paused') return false;
  if (f.state === 'stopped' && (c.State === 'running' || c.State === 'paused' || c.State === 'restarting')) return false;
  const t = f.text.trim().toLowerCase();
  if (!t) return true;
  return (
    c.Names.some((n) => n.toLowerCase().includes(t)) ||
    c.Image.toLowerCase().includes(t) ||
    c.Id.startsWith(t) ||
    c.State.toLowerCase().includes(t) ||
    c.Ports.some((p) => String(p.PublicPort ?? '').includes(t) || String(p.PrivatePort).includes(t))
  );
}

export function filtered(store: Readable<ListState<ContainerSummary>>, filter: Readable<ContainerFilter>) {
  return derived([store, filter], ([s, f]) => s.items.filter((c) => matchesFilter(c, f)));
}

// --- Bulk actions: the list's selection and running an action over many containers.

/** Selected ids, a new set for each change (so a store or `$state` sees it). */
export function toggleSelected(sel: ReadonlySet<string>, id: string, on = !sel.has(id)): Set<string> {
  const next = new Set(sel);
  if (on) next.add(id);
  else next.delete(id);
  return next;
}

/** Whether the shown rows are all, some or none selected (the select-all box's state). */
export function selectionOf(sel: ReadonlySet<string>, shownIds: string[]): 'none' | 'some' | 'all' {
  let n = 0;
  for (const id of shownIds) if (sel.has(id)) n++;
  return n === 0 ? 'none' : n === shownIds.length ? 'all' : 'some';
}

/**
 * The select-all box: with every shown row selected it clears them, else it selects them all
 * (the whole filtered list, not only the rows a windowed list has in the DOM). Rows the filter
 * hides keep their state.
 */
export function toggleAllShown(sel: ReadonlySet<string>, shownIds: string[]): Set<string> {
  const next = new Set(sel);
  if (shownIds.length && selectionOf(sel, shownIds) === 'all') for (const id of shownIds) next.delete(id);
  else for (const id of shownIds) next.add(id);
  return next;
}

/** The selected containers among those shown (what a bulk action acts on), in list order. */
export function selectedShown(sel: ReadonlySet<string>, shown: ContainerSummary[]): ContainerSummary[] {
  return shown.filter((c) => sel.has(c.Id));
}

/** Drops the ids of containers that are gone. */
export function pruneSelection(sel: ReadonlySet<string>, items: ContainerSummary[]): Set<string> {
  const ids = new Set(items.map((c) => c.Id));
  const next = new Set([...sel].filter((id) => ids.has(id)));
  return next.size === sel.size ? (sel as Set<string>) : next;
}

export type BulkAction = 'start' | 'stop' | 'restart' | 'pause' | 'unpause';

export const isUp = (c: ContainerSummary) => c.State === 'running' || c.State === 'paused' || c.State === 'restarting';

/** The containers an action means something for (as the row's own buttons allow it). */
export function bulkTargets(action: BulkAction | 'delete', cs: ContainerSummary[]): ContainerSummary[] {
  switch (action) {
    case 'start':
      return cs.filter((c) => !isUp(c));
    case 'stop':
      return cs.filter(isUp);
    case 'restart':
      return cs.filter((c) => c.State !== 'paused');
    case 'pause':
      return cs.filter((c) => c.State === 'running');
    case 'unpause':
      return cs.filter((c) => c.State === 'paused');
    case 'delete':
      return cs;
  }
}

/**
 * What a bulk delete does: without `force` the running (or paused) ones are kept, as `docker
 * rm` without `-f` would refuse them; with it they are stopped and deleted.
 */
export function deletePlan(cs: ContainerSummary[], force: boolean): { remove: ContainerSummary[]; kept: ContainerSummary[] } {
  if (force) return { remove: cs, kept: [] };
  return { remove: cs.filter((c) => !isUp(c)), kept: cs.filter(isUp) };
}

export interface Failure<T> {
  item: T;
  error: Error;
}

/** Runs `f` over `items`, at most `limit` at a time; answers the failures (never rejects). */
export async function runLimited<T>(items: T[], limit: number, f: (item: T) => Promise<unknown>): Promise<Failure<T>[]> {
  const failures: Failure<T>[] = [];
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const item = items[next++];
      try {
        await f(item);
      } catch (e) {
        failures.push({ item, error: e instanceof Error ? e : new Error(String(e)) });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  // In the items' order, whatever order they finished in.
  return failures.sort((a, b) => items.indexOf(a.item) - items.indexOf(b.item));
}

/** One toast's text for the failures of a bulk action ("stop failed for 2 of 5: a: …; b: …"). */
export function failureText(verb: string, total: number, failures: { name: string; message: string }[], max = 3): string {
  const shown = failures.slice(0, max).map((f) => `${f.name}: ${f.message}`);
  const more = failures.length > max ? `; and ${failures.length - max} more` : '';
  return `${verb} failed for ${failures.length} of ${total}: ${shown.join('; ')}${more}`;
}
