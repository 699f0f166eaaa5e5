import { describe, expect, it } from 'vitest';
import { containerName, formatBytes, formatPorts, percent, relativeTime, repoTags, shortId } from '../src/lib/format';

describe('formatBytes', () => {
  it('uses decimal units with three significant digits, as docker', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(999)).toBe('999 B');
    expect(formatBytes(1000)).toBe('1 kB');
    expect(formatBytes(1234)).toBe('1.23 kB');
    expect(formatBytes(12_345)).toBe('12.3 kB');
    expect(formatBytes(123_456)).toBe('123 kB');
    expect(formatBytes(4_300_000)).toBe('4.3 MB');
    expect(formatBytes(7_520_000_000)).toBe('7.52 GB');
  });
  it('shows a dash for unknown sizes', () => {
    expect(formatBytes(-1)).toBe('—');
    expect(formatBytes(undefined)).toBe('—');
    expect(formatBytes(NaN)).toBe('—');
  });
});

describe('relativeTime', () => {
  const now = Date.UTC(2026, 0, 10, 12, 0, 0);
  const ago = (s: number) => now / 1000 - s;
  it('counts in the largest whole unit', () => {
    expect(relativeTime(ago(2), now)).toBe('just now');
    expect(relativeTime(ago(1 * 45), now)).toBe('45 seconds ago');
    expect(relativeTime(ago(60), now)).toBe('1 minute ago');
    expect(relativeTime(ago(59 * 60), now)).toBe('59 minutes ago');
    expect(relativeTime(ago(2 * 3600 + 5), now)).toBe('2 hours ago');
    expect(relativeTime(ago(24 * 3600), now)).toBe('1 day ago');
    expect(relativeTime(ago(40 * 86400), now)).toBe('1 month ago');
    expect(relativeTime(ago(800 * 86400), now)).toBe('2 years ago');
  });
  it('handles zero and clock skew', () => {
    expect(relativeTime(0, now)).toBe('—');
    expect(relativeTime(ago(-3), now)).toBe('just now');
    expect(relativeTime(ago(-600), now)).toBe('in the future');
  });
});

describe('formatPorts', () => {
  it('links published tcp ports, merges IPv4/IPv6 twins, sorts', () => {
    const v = formatPorts([
      { IP: '::', PrivatePort: 80, PublicPort: 8080, Type: 'tcp' },
      { IP: '0.0.0.0', PrivatePort: 80, PublicPort: 8080, Type: 'tcp' },
      { IP: '127.0.0.1', PrivatePort: 53, PublicPort: 5353, Type: 'udp' },
      { PrivatePort: 443, Type: 'tcp' },
    ]);
    expect(v).toEqual([
      { label: '443/tcp' },
      { label: '127.0.0.1:5353→53/udp', href: undefined },
      { label: '8080→80/tcp', href: 'http://localhost:8080/' },
    ]);
  });
  it('keeps the host address berthd bound (127.0.0.1 by default)', () => {
    expect(formatPorts([{ IP: '127.0.0.1', PrivatePort: 80, PublicPort: 18080, Type: 'tcp' }])).toEqual([
      { label: '127.0.0.1:18080→80/tcp', href: 'http://127.0.0.1:18080/' },
    ]);
    expect(formatPorts([{ IP: '::1', PrivatePort: 80, PublicPort: 9000, Type: 'tcp' }])[0].href).toBe('http://[::1]:9000/');
  });
  it('is empty for no ports', () => {
    expect(formatPorts(null)).toEqual([]);
    expect(formatPorts([])).toEqual([]);
  });
});

describe('names and ids', () => {
  it('shortens ids and names', () => {
    expect(shortId('sha256:0123456789abcdef0123')).toBe('0123456789ab');
    expect(containerName({ Names: ['/web'], Id: 'abc' })).toBe('web');
    expect(containerName({ Names: [], Id: '0123456789abcdef' })).toBe('0123456789ab');
  });
  it('splits repo:tag at the last colon after the last slash', () => {
    expect(repoTags({ RepoTags: ['127.0.0.1:15000/berth/hello:latest', 'busybox:1.36'], RepoDigests: [] })).toEqual([
      { repo: '127.0.0.1:15000/berth/hello', tag: 'latest' },
      { repo: 'busybox', tag: '1.36' },
    ]);
    expect(repoTags({ RepoTags: [], RepoDigests: ['busybox@sha256:abc'] })).toEqual([{ repo: 'busybox', tag: '<none>' }]);
    expect(repoTags({ RepoTags: null, RepoDigests: null })).toEqual([{ repo: '<none>', tag: '<none>' }]);
  });
  it('clamps percentages', () => {
    expect(percent(0.999)).toBe(99);
    expect(percent(1)).toBe(100);
    expect(percent(1.5)).toBe(100);
    expect(percent(-1)).toBe(0);
  });
});
