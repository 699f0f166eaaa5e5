import { describe, expect, it } from 'vitest';
import { childPath, errorsByField, fromDocument, mirrorHost, move, toDocument } from '../src/lib/stores/registries';
import type { SettingsDocument } from '../src/lib/api/types';

describe('registries model', () => {
  const doc: SettingsDocument = {
    'registry-mirrors': ['https://hub-a.example'],
    'insecure-registries': ['registry.lan:5000', 'm.lan:5001'],
    registries: {
      'docker.io': { mirrors: [{ url: 'http://m.lan:5001' }] },
      'quay.io': { mirrors: [{ url: 'https://q.example' }], 'mirror-only': true, ca: '/etc/ca.pem' },
    },
    vm: { cpus: 2 },
  };

  it('reads Docker Hub\'s mirrors from both keys, in order, with their insecure flag', () => {
    const m = fromDocument(doc);
    expect(m.hubShorthand).toBe(true);
    expect(m.registries.map((r) => r.name)).toEqual(['docker.io', 'quay.io']);
    expect(m.registries[0].mirrors.map((x) => [x.url, x.insecure])).toEqual([
      ['https://hub-a.example', false],
      ['http://m.lan:5001', true],
    ]);
    expect(m.registries[1].mirrorOnly).toBe(true);
    expect(m.mirrorInsecure).toEqual(['m.lan:5001']);
  });

  it('writes back the same document when nothing changed (in daemon.json form for the hub)', () => {
    const { doc: out } = toDocument(doc, fromDocument(doc));
    expect(out['registry-mirrors']).toEqual(['https://hub-a.example', 'http://m.lan:5001']);
    expect(out.registries?.['docker.io']).toBeUndefined();
    expect(out.registries?.['quay.io']).toEqual({ mirrors: [{ url: 'https://q.example' }], 'mirror-only': true, ca: '/etc/ca.pem' });
    expect(out['insecure-registries']).toEqual(['registry.lan:5000', 'm.lan:5001']);
    expect(out.vm).toEqual({ cpus: 2 });
  });

  it('uses registries["docker.io"] when the file had no registry-mirrors, and maps paths', () => {
    const m = fromDocument({});
    m.registries[0].mirrors = [
      { key: 'A', url: 'http://127.0.0.1:15000', insecure: false },
      { key: 'B', url: 'mirror.example', insecure: true },
    ];
    const { doc: out, paths } = toDocument({}, m);
    expect(out).toEqual({ registries: { 'docker.io': { mirrors: [{ url: 'http://127.0.0.1:15000' }, { url: 'mirror.example' }] } } });
    expect(paths.get('A')).toEqual(['registries["docker.io"].mirrors[0]']);
    const errs = errorsByField(
      [
        { path: 'registries["docker.io"].mirrors[1].url', message: '"mirror.example" is not a URL: it needs a scheme (https://mirror.example)' },
        { path: 'registy', message: 'unknown key "registy"' },
      ],
      paths,
    );
    expect(errs.get('B')).toEqual(['"mirror.example" is not a URL: it needs a scheme (https://mirror.example)']);
    expect(errs.get('')).toEqual(['registy: unknown key "registy"']);
  });

  it('adds and removes a mirror\'s host in insecure-registries', () => {
    const m = fromDocument(doc);
    m.registries[0].mirrors[1].insecure = false;
    m.registries[1].mirrors[0].insecure = true;
    const { doc: out, paths } = toDocument(doc, m);
    expect(out['insecure-registries']).toEqual(['registry.lan:5000', 'q.example']);
    expect(paths.get(m.registries[1].mirrors[0].key)).toContain('insecure-registries[1]');
  });

  it('keeps an added registry, empty, so its name is validated', () => {
    const m = fromDocument({});
    m.registries.push({ key: 'R', name: 'https://bad', mirrors: [], mirrorOnly: false, insecure: false });
    const { doc: out, paths } = toDocument({}, m);
    expect(out.registries).toEqual({ 'https://bad': {} });
    expect(errorsByField([{ path: 'registries["https://bad"]', message: 'a registry name has no scheme' }], paths).get('R')).toEqual([
      'a registry name has no scheme',
    ]);
  });

  it('writes JSON paths as berthd does', () => {
    expect(childPath('registries', 'docker.io')).toBe('registries["docker.io"]');
    expect(childPath('registries', 'localhost')).toBe('registries.localhost');
    expect(childPath('', 'vm')).toBe('vm');
  });

  it('moves items and parses hosts', () => {
    expect(move([1, 2, 3], 2, 0)).toEqual([3, 1, 2]);
    expect(move([1, 2, 3], 0, 5)).toEqual([1, 2, 3]);
    expect(mirrorHost('http://127.0.0.1:15000')).toBe('127.0.0.1:15000');
    expect(mirrorHost('https://m.example:443/')).toBe('m.example');
    expect(mirrorHost('m.example')).toBeNull();
  });
});
