import { describe, expect, it } from 'vitest';
import {
  bulkTargets,
  deletePlan,
  failureText,
  pruneSelection,
  runLimited,
  selectedShown,
  selectionOf,
  toggleAllShown,
  toggleSelected,
} from '../src/lib/stores/containers';
import type { ContainerSummary } from '../src/lib/api/types';

const c = (Id: string, State: string) => ({ Id, State, Names: [`/${Id}`], Image: 'x', Created: 0, Status: '', Ports: [] }) as unknown as ContainerSummary;
const list = [c('a', 'running'), c('b', 'exited'), c('p', 'paused'), c('n', 'created'), c('r', 'restarting')];

describe('the containers selection', () => {
  it('toggles one row, new sets each time', () => {
    const s0 = new Set<string>();
    const s1 = toggleSelected(s0, 'a');
    expect([...s1]).toEqual(['a']);
    expect(s0.size).toBe(0);
    expect(toggleSelected(s1, 'a').size).toBe(0);
    expect([...toggleSelected(s1, 'a', true)]).toEqual(['a']);
    expect(toggleSelected(s1, 'b', false)).not.toBe(s1);
  });

  it('select-all works on the shown (filtered) rows, whatever is in the DOM, and keeps hidden ones', () => {
    const shown = ['a', 'b', 'c'];
    let s = new Set(['z']); // selected, then hidden by a filter
    expect(selectionOf(s, shown)).toBe('none');
    s = toggleAllShown(s, shown);
    expect([...s].sort()).toEqual(['a', 'b', 'c', 'z']);
    expect(selectionOf(s, shown)).toBe('all');
    s = toggleAllShown(s, shown); // all shown selected: clears them
    expect([...s]).toEqual(['z']);
    s = toggleSelected(s, 'b');
    expect(selectionOf(s, shown)).toBe('some');
    expect([...toggleAllShown(s, shown)].sort()).toEqual(['a', 'b', 'c', 'z']);
    expect(selectionOf(new Set(), [])).toBe('none');
  });

  it('acts only on the selected rows shown, in list order, and forgets deleted containers', () => {
    const sel = new Set(['p', 'a', 'gone']);
    expect(selectedShown(sel, list).map((x) => x.Id)).toEqual(['a', 'p']);
    const pruned = pruneSelection(sel, list);
    expect([...pruned].sort()).toEqual(['a', 'p']);
    // Nothing gone: the same set (no needless update).
    expect(pruneSelection(pruned, list)).toBe(pruned);
  });

  it('offers each action to the containers it means something for', () => {
    const ids = (a: Parameters<typeof bulkTargets>[0]) => bulkTargets(a, list).map((x) => x.Id);
    expect(ids('start')).toEqual(['b', 'n']);
    expect(ids('stop')).toEqual(['a', 'p', 'r']);
    expect(ids('restart')).toEqual(['a', 'b', 'n', 'r']);
    expect(ids('pause')).toEqual(['a']);
    expect(ids('unpause')).toEqual(['p']);
    expect(ids('delete')).toHaveLength(5);
  });

  it('deletes running ones only with force', () => {
    const keep = deletePlan(list, false);
    expect(keep.remove.map((x) => x.Id)).toEqual(['b', 'n']);
    expect(keep.kept.map((x) => x.Id)).toEqual(['a', 'p', 'r']);
    expect(deletePlan(list, true)).toEqual({ remove: list, kept: [] });
  });

  it('runs with limited concurrency and reports failures in order', async () => {
    let inFlight = 0;
    let peak = 0;
    const done: number[] = [];
    const items = [1, 2, 3, 4, 5, 6, 7];
    const failures = await runLimited(items, 3, async (n) => {
      inFlight++;
      peak = Math.max(peak, inFlight);
      await new Promise((r) => setTimeout(r, (8 - n) * 2));
      inFlight--;
      if (n % 3 === 0) throw new Error(`no ${n}`);
      done.push(n);
    });
    expect(peak).toBe(3);
    expect(done.sort()).toEqual([1, 2, 4, 5, 7]);
    expect(failures.map((f) => [f.item, f.error.message])).toEqual([
      [3, 'no 3'],
      [6, 'no 6'],
    ]);
    expect(await runLimited([], 4, async () => {})).toEqual([]);
  });

  it('says which failed in one message', () => {
    expect(failureText('stop', 5, [{ name: 'a', message: 'boom' }])).toBe('stop failed for 1 of 5: a: boom');
    const many = ['a', 'b', 'c', 'd', 'e'].map((name) => ({ name, message: 'x' }));
    expect(failureText('delete', 5, many)).toBe('delete failed for 5 of 5: a: x; b: x; c: x; and 2 more');
  });
});
