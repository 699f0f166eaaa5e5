import { describe, expect, it, vi } from 'vitest';
import { get } from 'svelte/store';
import { StatsSeries, StatsStore, countersOf, graphPath, niceMax, rate, sampleTime, usageOf, type StreamedStats } from '../src/lib/stores/stats';
import type { Engine } from '../src/lib/api/docker';
import type { ContainerSummary, DockerStats } from '../src/lib/api/types';

const row = (Id: string, State = 'running') => ({ Id, State, Names: [`/${Id}`], Image: 'x', Created: 0, Status: '', Ports: [] }) as unknown as ContainerSummary;
const sample: DockerStats = {
  cpu_stats: { cpu_usage: { total_usage: 3_000_000_000 }, system_cpu_usage: 20_000_000_000, online_cpus: 4 },
  precpu_stats: { cpu_usage: { total_usage: 2_000_000_000 }, system_cpu_usage: 16_000_000_000 },
  memory_stats: { usage: 50_000_000, limit: 2_000_000_000, stats: { inactive_file: 10_000_000 } },
};
const flush = () => new Promise((r) => setTimeout(r, 0));

describe('container stats', () => {
  it('computes CPU and memory as docker stats does', () => {
    // 1 s of CPU over 4 s of system time on 4 CPUs: one CPU busy = 100 %.
    expect(usageOf(sample, 7)).toEqual({ cpuPercent: 100, memory: 40_000_000, memoryLimit: 2_000_000_000, at: 7 });
    // A single sample (no precpu): no CPU figure.
    expect(usageOf({ cpu_stats: sample.cpu_stats, memory_stats: { usage: 5 } }, 1).cpuPercent).toBeNull();
    expect(usageOf({}, 1)).toEqual({ cpuPercent: null, memory: null, memoryLimit: null, at: 1 });
  });

  it('reads running rows in view at most once per few seconds, a few at a time, no timers', async () => {
    let t = 1_000;
    const pending: (() => void)[] = [];
    const containerStats = vi.fn((id: string) => new Promise<DockerStats>((res, rej) => pending.push(() => (id === 'gone' ? rej(new Error('404')) : res(sample)))));
    const s = new StatsStore({ containerStats } as unknown as Engine, { minAgeMs: 5_000, concurrency: 2, now: () => t });
    s.want([row('a'), row('b'), row('c'), row('off', 'exited'), row('gone')]);
    expect(containerStats.mock.calls.map((c) => c[0])).toEqual(['a', 'b']);
    // Asked again at once (an event, a scroll): nothing more is read.
    s.want([row('a'), row('b'), row('c')]);
    expect(containerStats).toHaveBeenCalledTimes(2);
    while (pending.length) {
      pending.shift()!();
      await flush();
    }
    expect(containerStats.mock.calls.map((c) => c[0])).toEqual(['a', 'b', 'c', 'gone']);
    expect([...get(s).keys()].sort()).toEqual(['a', 'b', 'c']);
    t += 5_000;
    s.want([row('a', 'exited'), row('b')]);
    expect(containerStats).toHaveBeenCalledTimes(5);
    expect(get(s).has('a')).toBe(false);
  });

  it('reads a row wanted too soon once when it is due, then stops', async () => {
    vi.useFakeTimers();
    try {
      const containerStats = vi.fn(async () => sample);
      const s = new StatsStore({ containerStats } as unknown as Engine, { minAgeMs: 5_000 });
      s.want([row('a')]);
      await vi.advanceTimersByTimeAsync(1_000);
      s.want([row('a')]); // an event 1 s later
      expect(containerStats).toHaveBeenCalledTimes(1);
      await vi.advanceTimersByTimeAsync(4_000);
      expect(containerStats).toHaveBeenCalledTimes(2);
      await vi.advanceTimersByTimeAsync(60_000);
      expect(containerStats).toHaveBeenCalledTimes(2);
      expect(vi.getTimerCount()).toBe(0);
    } finally {
      vi.useRealTimers();
    }
  });
});

describe('the Stats tab', () => {
  const at = (sec: number) => `2026-12-02T01:00:${String(sec).padStart(2, '0')}.123456789Z`;
  const streamed = (sec: number, total: number, sys: number, rx: number, tx: number, r: number, w: number, pre?: [number, number]): StreamedStats => ({
    read: at(sec),
    cpu_stats: { cpu_usage: { total_usage: total }, system_cpu_usage: sys, online_cpus: 2 },
    precpu_stats: pre ? { cpu_usage: { total_usage: pre[0] }, system_cpu_usage: pre[1] } : {},
    memory_stats: { usage: 30_000_000, limit: 1_000_000_000, stats: { inactive_file: 5_000_000 } },
    networks: { eth0: { rx_bytes: rx, tx_bytes: tx }, eth1: { rx_bytes: 100, tx_bytes: 0 } },
    blkio_stats: { io_service_bytes_recursive: [{ op: 'read', value: r }, { op: 'write', value: w }, { op: 'Total', value: r + w }] },
  });

  it('sums the network and block I/O counters, and reads the sample time', () => {
    expect(countersOf(streamed(1, 0, 0, 1000, 200, 4096, 8192))).toEqual({ rx: 1100, tx: 200, read: 4096, write: 8192 });
    expect(countersOf({ blkio_stats: { io_service_bytes_recursive: [{ op: 'Read', value: 3 }, { op: 'Write', value: 4 }] } })).toEqual({ rx: 0, tx: 0, read: 3, write: 4 });
    expect(countersOf({ networks: null, blkio_stats: { io_service_bytes_recursive: null } })).toEqual({ rx: 0, tx: 0, read: 0, write: 0 });
    expect(sampleTime({ read: at(5) }, 0)).toBe(Date.parse('2026-12-02T01:00:05.123Z'));
    // A stopped container's zero time, or none: the arrival time.
    expect(sampleTime({ read: '0001-01-01T00:00:00Z' }, 42)).toBe(42);
    expect(sampleTime({}, 42)).toBe(42);
  });

  it('computes rates per second, a reset counter as 0', () => {
    expect(rate(3000, 1000, 2)).toBe(1000);
    expect(rate(10, 5000, 1)).toBe(0);
    expect(rate(10, 5, 0)).toBe(0);
  });

  it('turns consecutive samples into points: CPU as docker stats, rates from the deltas', () => {
    const s = new StatsSeries(60_000);
    const p1 = s.push(streamed(1, 1_000_000_000, 10_000_000_000, 1_100, 100, 0, 0), 0);
    // The first sample: no precpu, no rates yet.
    expect(p1).toMatchObject({ cpuPercent: null, memory: 25_000_000, memoryLimit: 1_000_000_000, rxRate: null, txRate: null });
    // 0.5 s of CPU over 2 s of system time on 2 CPUs = 50 %; 2 s later: 2 kB more received.
    const p2 = s.push(streamed(3, 1_500_000_000, 12_000_000_000, 5_100, 1_100, 8_192, 2_000, [1_000_000_000, 10_000_000_000]), 0);
    expect(p2.cpuPercent).toBeCloseTo(50);
    expect(p2).toMatchObject({ rxRate: 2_000, txRate: 500, readRate: 4_096, writeRate: 1_000 });
    expect(s.points).toHaveLength(2);
  });

  it('keeps only the last minute of points', () => {
    const s = new StatsSeries(10_000);
    for (let i = 0; i < 30; i++) s.push({ memory_stats: { usage: i } }, i * 1_000);
    expect(s.points).toHaveLength(11);
    expect(s.points[0].at).toBe(19_000);
    expect(s.points[10].at).toBe(29_000);
    // The clock went back: the window starts again.
    s.push({ memory_stats: { usage: 1 } }, 5_000);
    expect(s.points).toHaveLength(1);
  });

  it('scales graphs to round maxima', () => {
    expect(niceMax(0)).toBe(1);
    expect(niceMax(0.3, 1)).toBe(1);
    expect(niceMax(3.2)).toBe(5);
    expect(niceMax(57)).toBe(100);
    expect(niceMax(100)).toBe(100);
    expect(niceMax(101)).toBe(200);
    expect(niceMax(1_500_000, 1_000)).toBe(2_000_000);
    expect(niceMax(200, 1_000)).toBe(1_000);
    expect(niceMax(NaN, 5)).toBe(5);
  });

  it('draws a path with the newest point at the right edge, values clamped, gaps for nulls', () => {
    const box = { width: 300, height: 60, max: 100, end: 60_000, windowMs: 60_000 };
    const pts = [
      { at: 0, v: 0 },
      { at: 30_000, v: 50 },
      { at: 45_000, v: null },
      { at: 50_000, v: 150 },
      { at: 60_000, v: -5 },
    ];
    expect(graphPath(pts, box)).toBe('M0 60 L150 30 M250 0 L300 60');
    // Points older than the window are left out; nothing to draw is an empty path.
    expect(graphPath([{ at: -10_000, v: 1 }, { at: 60_000, v: 100 }], box)).toBe('M300 0');
    expect(graphPath([], box)).toBe('');
  });
});
