// Aggregates Docker's JSON progress stream of a pull into per-layer bars and an overall figure.
import type { ProgressMessage } from '../api/types';

export type LayerPhase = 'waiting' | 'downloading' | 'verifying' | 'downloaded' | 'extracting' | 'complete' | 'exists';

export interface LayerProgress {
  id: string;
  phase: LayerPhase;
  /** The last status text, as docker prints it. */
  status: string;
  current: number;
  total: number;
  /** 0–1 for this layer (download 90 %, extraction the rest). */
  fraction: number;
  /** The endpoint it was fetched from, when berthd says ("Fetching from …"). */
  source?: string;
}

export interface PullState {
  reference: string;
  /** Layer ids in the order they were first seen. */
  order: string[];
  layers: Record<string, LayerProgress>;
  /** Lines without a layer: "Pulling from …", "Using mirror …", "Skipped …", "Digest: …". */
  notes: string[];
  digest?: string;
  /** 0–1 over every layer, 1 when the pull finished. */
  fraction: number;
  done: boolean;
  error?: string;
}

export function newPull(reference: string): PullState {
  return { reference, order: [], layers: {}, notes: [], fraction: 0, done: false };
}

const DOWNLOAD_SHARE = 0.9;

function layerFraction(l: LayerProgress): number {
  switch (l.phase) {
    case 'waiting':
      return 0;
    case 'downloading':
      return l.total > 0 ? DOWNLOAD_SHARE * Math.min(1, l.current / l.total) : 0;
    case 'verifying':
    case 'downloaded':
      return DOWNLOAD_SHARE;
    case 'extracting':
      return DOWNLOAD_SHARE + (l.total > 0 ? (1 - DOWNLOAD_SHARE) * Math.min(1, l.current / l.total) : 0);
    case 'complete':
    case 'exists':
      return 1;
  }
}

/** The overall fraction: layers weighted by size when every size is known, else equally. */
export function overall(s: Pick<PullState, 'order' | 'layers' | 'done'>): number {
  if (s.done) return 1;
  const ls = s.order.map((id) => s.layers[id]);
  if (!ls.length) return 0;
  const sized = ls.every((l) => l.total > 0 || l.phase === 'exists' || l.phase === 'complete');
  if (sized) {
    const weight = (l: LayerProgress) => (l.total > 0 ? l.total : 1);
    const total = ls.reduce((n, l) => n + weight(l), 0);
    return ls.reduce((n, l) => n + weight(l) * l.fraction, 0) / total;
  }
  return ls.reduce((n, l) => n + l.fraction, 0) / ls.length;
}

function phaseOf(status: string): LayerPhase | null {
  if (status === 'Pulling fs layer' || status === 'Waiting') return 'waiting';
  if (status === 'Downloading') return 'downloading';
  if (status === 'Verifying Checksum') return 'verifying';
  if (status === 'Download complete') return 'downloaded';
  if (status === 'Extracting') return 'extracting';
  if (status === 'Pull complete') return 'complete';
  if (status === 'Already exists') return 'exists';
  return null;
}

/** The next state after one progress message (the state given is not changed). */
export function applyProgress(prev: PullState, m: ProgressMessage): PullState {
  const s: PullState = { ...prev, layers: { ...prev.layers }, order: prev.order, notes: prev.notes };
  if (m.error || m.errorDetail) {
    s.error = m.errorDetail?.message ?? m.error ?? 'the pull failed';
    return s;
  }
  const status = m.status ?? '';
  if (m.id && !status.startsWith('Pulling from ') && !/^Digest: |^Status: /.test(status)) {
    const phase = phaseOf(status);
    let l = s.layers[m.id];
    if (!l) {
      if (!phase && !status.startsWith('Fetching from ') && !status.startsWith('Skipped ')) {
        // An id line that is not a layer's ("latest: Pulling from…" variants).
        s.notes = [...s.notes, `${m.id}: ${status}`];
        return s;
      }
      l = { id: m.id, phase: 'waiting', status, current: 0, total: 0, fraction: 0 };
      s.order = [...s.order, m.id];
    } else {
      l = { ...l };
    }
    if (phase) {
      // A layer never goes back (a late "Downloading" after "Pull complete" is ignored).
      const rank: LayerPhase[] = ['waiting', 'downloading', 'verifying', 'downloaded', 'extracting', 'complete', 'exists'];
      if (rank.indexOf(phase) >= rank.indexOf(l.phase) || l.phase === 'waiting') {
        l.phase = phase;
        l.status = status;
        if (m.progressDetail) {
          if (typeof m.progressDetail.total === 'number' && m.progressDetail.total > 0) l.total = m.progressDetail.total;
          if (typeof m.progressDetail.current === 'number') l.current = m.progressDetail.current;
        }
        if (phase === 'complete' || phase === 'downloaded') l.current = l.total;
      }
    } else if (status.startsWith('Fetching from ')) {
      l.source = status.slice('Fetching from '.length);
      l.status = status;
    } else {
      l.status = status;
    }
    l.fraction = layerFraction(l);
    s.layers[m.id] = l;
  } else if (status) {
    const note = m.id && status.startsWith('Pulling from ') ? `${m.id}: ${status}` : status;
    s.notes = [...s.notes, note];
    if (status.startsWith('Digest: ')) s.digest = status.slice('Digest: '.length);
    if (status.startsWith('Status: ')) s.done = true;
  }
  s.fraction = overall(s);
  return s;
}
