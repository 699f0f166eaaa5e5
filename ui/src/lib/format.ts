// Formatting shared by the views; pure functions (unit-tested in tests/format.test.ts).
import type { ContainerSummary, ImageSummary, PortSummary } from './api/types';

/** Bytes in Docker's style: decimal units (1 kB = 1000 B), three significant digits. */
export function formatBytes(n: number | undefined | null): string {
  if (n === undefined || n === null || !Number.isFinite(n) || n < 0) return '—';
  const units = ['B', 'kB', 'MB', 'GB', 'TB', 'PB'];
  let v = n;
  let u = 0;
  while (v >= 1000 && u < units.length - 1) {
    v /= 1000;
    u++;
  }
  if (u === 0) return `${n} B`;
  const digits = v >= 100 ? 0 : v >= 10 ? 1 : 2;
  return `${Number(v.toFixed(digits))} ${units[u]}`;
}

/** "just now", "5 seconds ago", "3 minutes ago", "2 hours ago", "4 days ago", "3 months ago"… */
export function relativeTime(unixSeconds: number, nowMs: number = Date.now()): string {
  if (!unixSeconds) return '—';
  const s = Math.round(nowMs / 1000 - unixSeconds);
  if (s < -5) return 'in the future';
  if (s < 5) return 'just now';
  const steps: [number, string][] = [
    [60, 'second'],
    [60, 'minute'],
    [24, 'hour'],
    [30, 'day'],
    [12, 'month'],
    [Infinity, 'year'],
  ];
  let v = s;
  for (const [size, unit] of steps) {
    if (v < size) {
      const n = Math.floor(v);
      return `${n} ${unit}${n === 1 ? '' : 's'} ago`;
    }
    v /= size;
  }
  return 'long ago';
}

/** A full, local date and time for tooltips. */
export function absoluteTime(unixSeconds: number): string {
  if (!unixSeconds) return '';
  return new Date(unixSeconds * 1000).toLocaleString();
}

/** `sha256:0123…` → the 12 hex digits Docker shows. */
export function shortId(id: string | undefined | null): string {
  if (!id) return '';
  return id.replace(/^sha256:/, '').slice(0, 12);
}

/** A container's name without Docker's leading slash. */
export function containerName(c: Pick<ContainerSummary, 'Names' | 'Id'>): string {
  const n = c.Names?.[0];
  return n ? n.replace(/^\//, '') : shortId(c.Id);
}

export interface PortView {
  /** "127.0.0.1:8080→80/tcp", "80/tcp" */
  label: string;
  /** The URL to open, for a published TCP port. */
  href?: string;
}

/** Published and exposed ports, sorted, duplicates (IPv4 + IPv6 of one binding) merged. */
export function formatPorts(ports: PortSummary[] | null | undefined): PortView[] {
  if (!ports?.length) return [];
  const sorted = [...ports].sort(
    (a, b) => (a.PublicPort ?? 0) - (b.PublicPort ?? 0) || a.PrivatePort - b.PrivatePort || a.Type.localeCompare(b.Type),
  );
  const seen = new Set<string>();
  const out: PortView[] = [];
  for (const p of sorted) {
    if (p.PublicPort) {
      const ip = !p.IP || p.IP === '0.0.0.0' || p.IP === '::' ? '' : p.IP;
      const key = `${p.PublicPort}-${p.PrivatePort}-${p.Type}-${ip.includes(':') ? '' : ip}`;
      if (seen.has(key)) continue;
      seen.add(key);
      const hostShown = ip.includes(':') ? `[${ip}]` : ip;
      const label = `${hostShown ? hostShown + ':' : ''}${p.PublicPort}→${p.PrivatePort}/${p.Type}`;
      const host = !ip ? 'localhost' : hostShown;
      out.push({ label, href: p.Type === 'tcp' ? `http://${host}:${p.PublicPort}/` : undefined });
    } else {
      const key = `-${p.PrivatePort}-${p.Type}`;
      if (seen.has(key)) continue;
      seen.add(key);
      out.push({ label: `${p.PrivatePort}/${p.Type}` });
    }
  }
  return out;
}

export interface RepoTag {
  repo: string;
  tag: string;
}

/** An image's names as repository + tag rows; `<none>` for a dangling image. */
export function repoTags(img: Pick<ImageSummary, 'RepoTags' | 'RepoDigests'>): RepoTag[] {
  const tags = (img.RepoTags ?? []).filter((t) => t !== '<none>:<none>');
  if (tags.length) {
    return tags.map((t) => {
      const i = t.lastIndexOf(':');
      return i > t.lastIndexOf('/') ? { repo: t.slice(0, i), tag: t.slice(i + 1) } : { repo: t, tag: '' };
    });
  }
  const digest = img.RepoDigests?.[0];
  return [{ repo: digest ? digest.split('@')[0] : '<none>', tag: '<none>' }];
}

/** A state word → a short class for colouring. */
export function stateTone(state: string): 'ok' | 'warn' | 'off' | 'bad' {
  switch (state) {
    case 'running':
      return 'ok';
    case 'paused':
    case 'restarting':
    case 'created':
      return 'warn';
    case 'dead':
    case 'removing':
      return 'bad';
    default:
      return 'off';
  }
}

/** A percentage for bars and labels, 0–100, whole numbers. */
export function percent(fraction: number): number {
  if (!Number.isFinite(fraction)) return 0;
  return Math.max(0, Math.min(100, Math.floor(fraction * 100 + 1e-9)));
}
