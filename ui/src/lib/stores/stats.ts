// CPU and memory of the containers in view, from one-shot `GET /containers/{id}/stats?stream=false`
// reads. No timer: a read happens when a running container's row comes into view or changes
// (an event re-read it), at most once per `minAgeMs` per container, a few at a time.
import { writable, type Readable } from 'svelte/store';
import type { ContainerSummary, DockerStats } from '../api/types';
import type { Engine } from '../api/docker';

export interface Usage {
  /** Percent of one CPU (as `docker stats`: 200 % is two CPUs busy); null without two samples. */
  cpuPercent: number | null;
  /** Bytes in use, page cache left out (as `docker stats`). */
  memory: number | null;
  memoryLimit: number | null;
  at: number;
}

/** `docker stats`'s formulas. */
export function usageOf(s: DockerStats, at: number): Usage {
  let cpuPercent: number | null = null;
  const cpu = s.cpu_stats;
  const pre = s.precpu_stats;
  const total = cpu?.cpu_usage?.total_usage;
  const preTotal = pre?.cpu_usage?.total_usage;
  const sys = cpu?.system_cpu_usage;
  const preSys = pre?.system_cpu_usage;
  if (total !== undefined && preTotal !== undefined && sys !== undefined && preSys !== undefined && preSys > 0) {
    const dCpu = total - preTotal;
    const dSys = sys - preSys;
    const online = cpu?.online_cpus || cpu?.cpu_usage?.percpu_usage?.length || 1;
    cpuPercent = dSys > 0 && dCpu >= 0 ? (dCpu / dSys) * online * 100 : 0;
  }
  const m = s.memory_stats;
  let memory: number | null = m?.usage ?? null;
  if (memory !== null) {
    const cache = m?.stats?.inactive_file ?? m?.stats?.total_inactive_file ?? m?.stats?.cache ?? 0;
    memory = Math.max(0, memory - (cache < memory ? cache : 0));
  }
  return { cpuPercent, memory, memoryLimit: m?.limit ?? null, at };
}

export interface StatsOptions {
  minAgeMs?: number;
  concurrency?: number;
  now?: () => number;
}

export class StatsStore implements Readable<Map<string, Usage>> {
  private readonly store = writable(new Map<string, Usage>());
  private readonly map = new Map<string, Usage>();
  /** When each container was last asked for (read or attempted). */
  private readonly asked = new Map<string, number>();
  private readonly queue: string[] = [];
  /** Rows wanted too soon after their last read: read once when they are due (one timer). */
  private readonly deferred = new Set<string>();
  private timer: ReturnType<typeof setTimeout> | null = null;
  private lastRows: ContainerSummary[] = [];
  private inFlight = 0;
  private readonly minAgeMs: number;
  private readonly concurrency: number;
  private readonly now: () => number;

  constructor(
    private readonly engine: Engine,
    opts: StatsOptions = {},
  ) {
    this.minAgeMs = opts.minAgeMs ?? 5_000;
    this.concurrency = opts.concurrency ?? 3;
    this.now = opts.now ?? Date.now;
  }

  subscribe(run: (v: Map<string, Usage>) => void): () => void {
    return this.store.subscribe(run);
  }

  /** The rows in view: their running containers are read unless read recently. */
  want(rows: ContainerSummary[]): void {
    this.lastRows = rows;
    this.collect(rows, true);
  }

  /** Stops the deferred read, if one is waiting. */
  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.deferred.clear();
  }

  private collect(rows: ContainerSummary[], defer: boolean): void {
    const t = this.now();
    let due = Infinity;
    let dropped = false;
    for (const c of rows) {
      if (c.State !== 'running') {
        // Stopped or paused: no figures (a paused one's would be stale).
        dropped = this.map.delete(c.Id) || dropped;
        continue;
      }
      const last = this.asked.get(c.Id);
      if (last !== undefined && t - last < this.minAgeMs) {
        // Changed or scrolled to again too soon: once more when due, not in a loop (a
        // deferred read does not defer again).
        if (defer && !this.queue.includes(c.Id)) {
          this.deferred.add(c.Id);
          due = Math.min(due, last + this.minAgeMs - t);
        }
        continue;
      }
      if (this.queue.includes(c.Id)) continue;
      this.asked.set(c.Id, t);
      this.queue.push(c.Id);
    }
    if (dropped) this.store.set(new Map(this.map));
    if (due !== Infinity && !this.timer) {
      this.timer = setTimeout(() => {
        this.timer = null;
        const ids = new Set(this.deferred);
        this.deferred.clear();
        this.collect(this.lastRows.filter((c) => ids.has(c.Id)), false);
      }, due);
    }
    this.pump();
  }

  private pump() {
    while (this.inFlight < this.concurrency && this.queue.length) {
      const id = this.queue.shift() as string;
      this.inFlight++;
      this.engine
        .containerStats(id)
        .then((s) => {
          this.map.set(id, usageOf(s, this.now()));
          this.store.set(new Map(this.map));
        })
        .catch(() => {
          // Gone or not answering: no figures, and no retry until the row is wanted again.
          if (this.map.delete(id)) this.store.set(new Map(this.map));
        })
        .finally(() => {
          this.inFlight--;
          this.pump();
        });
    }
  }
}
