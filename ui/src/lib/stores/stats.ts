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

// --- The Stats tab: a streamed `GET /containers/{id}/stats?stream=1`, one sample a second,
// turned into points (CPU %, memory, network and block I/O rates) over the last minute.

/** The fields of a streamed stats object the Stats tab reads besides `DockerStats`'s. */
export interface StreamedStats extends DockerStats {
  read?: string;
  networks?: Record<string, { rx_bytes?: number; tx_bytes?: number }> | null;
  blkio_stats?: { io_service_bytes_recursive?: { op?: string; value?: number }[] | null } | null;
}

/** Cumulative byte counters of one sample. */
export interface Counters {
  rx: number;
  tx: number;
  read: number;
  write: number;
}

export function countersOf(s: StreamedStats): Counters {
  let rx = 0;
  let tx = 0;
  for (const n of Object.values(s.networks ?? {})) {
    rx += n?.rx_bytes ?? 0;
    tx += n?.tx_bytes ?? 0;
  }
  let read = 0;
  let write = 0;
  for (const e of s.blkio_stats?.io_service_bytes_recursive ?? []) {
    // cgroup v1 says "Read"/"Write", v2 (and berthd) "read"/"write"; "Total" is not summed.
    const op = (e.op ?? '').toLowerCase();
    if (op === 'read') read += e.value ?? 0;
    else if (op === 'write') write += e.value ?? 0;
  }
  return { rx, tx, read, write };
}

/** A sample's time: its `read` (RFC 3339, nanoseconds cut to milliseconds), else `fallback`. */
export function sampleTime(s: StreamedStats, fallback: number): number {
  if (!s.read || s.read.startsWith('0001-')) return fallback;
  const t = Date.parse(s.read.replace(/(\.\d{3})\d+/, '$1'));
  return Number.isFinite(t) ? t : fallback;
}

export interface StatsPoint {
  at: number;
  cpuPercent: number | null;
  memory: number | null;
  memoryLimit: number | null;
  /** Bytes per second since the sample before; null for the first sample. */
  rxRate: number | null;
  txRate: number | null;
  readRate: number | null;
  writeRate: number | null;
}

/** Bytes per second between two counter values; a counter that went back (a reset) is 0. */
export function rate(cur: number, prev: number, seconds: number): number {
  if (!(seconds > 0)) return 0;
  return cur >= prev ? (cur - prev) / seconds : 0;
}

/** The last `windowMs` of points from a stats stream. */
export class StatsSeries {
  points: StatsPoint[] = [];
  private prev: { at: number; c: Counters } | null = null;

  constructor(readonly windowMs = 60_000) {}

  /** Adds a sample that arrived at `arrived` (ms); answers the point made from it. */
  push(s: StreamedStats, arrived: number): StatsPoint {
    const at = sampleTime(s, arrived);
    const u = usageOf(s, at);
    const c = countersOf(s);
    const p = this.prev;
    const secs = p ? (at - p.at) / 1000 : 0;
    const has = p !== null && secs > 0;
    const point: StatsPoint = {
      at,
      cpuPercent: u.cpuPercent,
      memory: u.memory,
      memoryLimit: u.memoryLimit,
      rxRate: has ? rate(c.rx, p.c.rx, secs) : null,
      txRate: has ? rate(c.tx, p.c.tx, secs) : null,
      readRate: has ? rate(c.read, p.c.read, secs) : null,
      writeRate: has ? rate(c.write, p.c.write, secs) : null,
    };
    this.prev = { at, c };
    // A sample older than the last (a clock step) starts the window again.
    const last = this.points[this.points.length - 1];
    if (last && at < last.at) this.points = [];
    this.points = [...this.points.filter((x) => at - x.at <= this.windowMs), point];
    return point;
  }

  clear(): void {
    this.points = [];
    this.prev = null;
  }
}

/** A round upper bound for a graph's scale: 1, 2 or 5 × 10ⁿ at or above `v`, at least `floor`. */
export function niceMax(v: number, floor = 1): number {
  const x = Math.max(v, floor);
  if (!(x > 0) || !Number.isFinite(x)) return floor > 0 ? floor : 1;
  const p = Math.pow(10, Math.floor(Math.log10(x)));
  for (const m of [1, 2, 5, 10]) if (m * p >= x * (1 - 1e-9)) return m * p;
  return 10 * p;
}

export interface GraphBox {
  width: number;
  height: number;
  /** The value at the top edge. */
  max: number;
  /** The time at the right edge (the newest point) and how much time the width shows. */
  end: number;
  windowMs: number;
}

/**
 * An SVG path (`M x y L x y …`) through the points with a value; a null value breaks the line.
 * Time runs left to right with `end` at the right edge; values are clamped to [0, max].
 */
export function graphPath(points: { at: number; v: number | null }[], b: GraphBox): string {
  const out: string[] = [];
  let pen = false;
  for (const p of points) {
    if (p.v === null || !Number.isFinite(p.v)) {
      pen = false;
      continue;
    }
    const x = b.width - ((b.end - p.at) / b.windowMs) * b.width;
    if (x < -1e-6) continue;
    const v = Math.min(Math.max(p.v, 0), b.max);
    const y = b.height - (b.max > 0 ? (v / b.max) * b.height : 0);
    out.push(`${pen ? 'L' : 'M'}${round(x)} ${round(y)}`);
    pen = true;
  }
  return out.join(' ');
}

function round(n: number): number {
  return Math.round(n * 100) / 100;
}

/** One line of a graph: 'a' in the accent colour, 'b' the second (dashed). */
export interface GraphLine {
  name: string;
  tone: 'a' | 'b';
  points: { at: number; v: number | null }[];
}
