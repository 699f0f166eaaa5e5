import { describe, expect, it } from 'vitest';
import { applyProgress, newPull, overall, type PullState } from '../src/lib/stores/pull';
import type { ProgressMessage } from '../src/lib/api/types';

const run = (msgs: ProgressMessage[], s: PullState = newPull('busybox')) => msgs.reduce(applyProgress, s);

describe('pull progress', () => {
  it('follows berthd\'s stream to 100 %', () => {
    // What berthd sent for 127.0.0.1:15000/berth/hello (recorded).
    const msgs: ProgressMessage[] = [
      { id: 'latest', progressDetail: {}, status: 'Pulling from berth/hello' },
      { id: '846753dc2329', progressDetail: {}, status: 'Pulling fs layer' },
      { id: '846753dc2329', progress: '[=====>  ]', progressDetail: { current: 100, total: 289 }, status: 'Downloading' },
    ];
    let s = run(msgs);
    expect(s.order).toEqual(['846753dc2329']);
    expect(s.notes).toEqual(['latest: Pulling from berth/hello']);
    expect(s.layers['846753dc2329'].phase).toBe('downloading');
    expect(s.fraction).toBeCloseTo((0.9 * 100) / 289);
    s = run(
      [
        { id: '846753dc2329', progressDetail: { current: 289, total: 289 }, status: 'Downloading' },
        { id: '846753dc2329', progressDetail: {}, status: 'Download complete' },
        { id: '846753dc2329', progressDetail: {}, status: 'Pull complete' },
      ],
      s,
    );
    expect(s.layers['846753dc2329'].fraction).toBe(1);
    expect(s.fraction).toBe(1);
    expect(s.done).toBe(false);
    s = run(
      [
        { status: 'Digest: sha256:08f4' },
        { status: 'Status: Downloaded newer image for 127.0.0.1:15000/berth/hello:latest' },
      ],
      s,
    );
    expect(s.done).toBe(true);
    expect(s.digest).toBe('sha256:08f4');
    expect(s.fraction).toBe(1);
  });

  it('weights layers by size and counts existing layers as done', () => {
    const s = run([
      { id: 'aaa', status: 'Already exists' },
      { id: 'bbb', status: 'Pulling fs layer' },
      { id: 'bbb', status: 'Downloading', progressDetail: { current: 500, total: 1000 } },
      { id: 'ccc', status: 'Downloading', progressDetail: { current: 0, total: 3000 } },
    ]);
    // aaa: weight 1 (size unknown), done; bbb: 0.45 of 1000; ccc: 0 of 3000
    expect(s.fraction).toBeCloseTo((1 + 450) / 4001);
    expect(s.layers.aaa.phase).toBe('exists');
  });

  it('handles extraction, mirror notes and layer sources', () => {
    const s = run([
      { status: 'Using mirror http://127.0.0.1:15000/' },
      { id: 'l1', status: 'Pulling fs layer' },
      { id: 'l1', status: 'Fetching from http://127.0.0.1:15001/' },
      { id: 'l1', status: 'Downloading', progressDetail: { current: 10, total: 10 } },
      { id: 'l1', status: 'Verifying Checksum' },
      { id: 'l1', status: 'Extracting', progressDetail: { current: 5, total: 10 } },
    ]);
    expect(s.notes).toEqual(['Using mirror http://127.0.0.1:15000/']);
    expect(s.layers.l1.source).toBe('http://127.0.0.1:15001/');
    expect(s.layers.l1.phase).toBe('extracting');
    expect(s.layers.l1.fraction).toBeCloseTo(0.95);
  });

  it('never goes back when a late line arrives', () => {
    const s = run([
      { id: 'l1', status: 'Pull complete' },
      { id: 'l1', status: 'Downloading', progressDetail: { current: 1, total: 10 } },
    ]);
    expect(s.layers.l1.phase).toBe('complete');
    expect(s.fraction).toBe(1);
  });

  it('records an error line', () => {
    const s = run([{ id: 'l1', status: 'Pulling fs layer' }, { errorDetail: { message: 'manifest unknown' }, error: 'manifest unknown' }]);
    expect(s.error).toBe('manifest unknown');
    expect(s.done).toBe(false);
  });

  it('is 0 without layers and 1 when done', () => {
    expect(overall({ order: [], layers: {}, done: false })).toBe(0);
    expect(overall({ order: [], layers: {}, done: true })).toBe(1);
  });

  it('does not change the state it is given', () => {
    const a = run([{ id: 'l1', status: 'Pulling fs layer' }]);
    const snapshot = JSON.stringify(a);
    applyProgress(a, { id: 'l1', status: 'Pull complete' });
    expect(JSON.stringify(a)).toBe(snapshot);
  });
});
