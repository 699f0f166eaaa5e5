// A hash router: #/containers, #/containers/<id>, #/images, #/preferences/registries.
import { readable } from 'svelte/store';

export interface Route {
  view: 'containers' | 'container' | 'images' | 'preferences';
  id?: string;
  pane?: string;
  tab?: string;
}

export function parseRoute(hash: string): Route {
  const parts = hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  switch (parts[0]) {
    case 'containers':
      return parts[1] ? { view: 'container', id: parts[1], tab: parts[2] ?? 'logs' } : { view: 'containers' };
    case 'images':
      return { view: 'images' };
    case 'preferences':
      return { view: 'preferences', pane: parts[1] ?? 'registries' };
    default:
      return { view: 'containers' };
  }
}

export const route = readable<Route>(parseRoute(typeof location === 'undefined' ? '' : location.hash), (set) => {
  const on = () => set(parseRoute(location.hash));
  window.addEventListener('hashchange', on);
  on();
  return () => window.removeEventListener('hashchange', on);
});

export function go(path: string): void {
  location.hash = path.startsWith('#') ? path : `#${path}`;
}
