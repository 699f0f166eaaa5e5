// What an event of `GET /events` means for the lists: which container to re-fetch or drop,
// whether the image list is stale. Pure (unit-tested); `live.ts` acts on it.
import type { DockerEvent } from '../api/types';

export type EventEffect =
  | { kind: 'container'; id: string; op: 'refresh' | 'remove' }
  | { kind: 'images' }
  | { kind: 'none' };

/** Container actions that change nothing a list or a detail page shows. */
const QUIET_CONTAINER_ACTIONS = new Set([
  'attach',
  'detach',
  'resize',
  'top',
  'export',
  'copy',
  'archive-path',
  'extract-to-dir',
  'exec_create',
  'exec_start',
  'exec_die',
  'exec_detach',
]);

export function eventEffect(e: DockerEvent): EventEffect {
  const type = e.Type ?? (e.id ? 'container' : '');
  const action = (e.Action ?? e.status ?? '').split(':')[0].trim();
  const id = e.Actor?.ID ?? e.id ?? '';
  if (type === 'container') {
    if (!id || QUIET_CONTAINER_ACTIONS.has(action)) return { kind: 'none' };
    return { kind: 'container', id, op: action === 'destroy' ? 'remove' : 'refresh' };
  }
  if (type === 'image') return { kind: 'images' };
  return { kind: 'none' };
}
