import { describe, expect, it, vi } from 'vitest';
import { get } from 'svelte/store';
import { StatsStore, usageOf } from '../src/lib/stores/stats';
import type { Engine } from '../src/lib/api/docker';
import type { ContainerSummary, DockerStats } from '../src/lib/api/types';

const row = (Id: string, State = 'running') => ({ Id, State, Names: [`/${Id}`], Image: 'x', Created: 0, Status: '', Ports: [] }) as ContainerSummary;
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
