import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseDocument, validate } from '../src/lib/settings/schema';
import { check, convertMemory, fromDocument, pendingRestart, vmPatch, withVm } from '../src/lib/stores/resources';
import { applyTheme, loadPrefs, savePrefs, appPrefs } from '../src/lib/stores/prefs';
import { HttpBackend, PREFS_KEY } from '../src/lib/backend/http';
import { get } from 'svelte/store';
// @ts-expect-error: a plain .mjs script without types
import { generate, outFile, schemaFile } from '../scripts/gen-types.mjs';

describe('the settings schema validator', () => {
  it('accepts a full valid document', () => {
    expect(
      validate({
        'registry-mirrors': ['https://m.example'],
        'insecure-registries': ['r.lan:5000'],
        registries: { 'docker.io': { mirrors: [{ url: 'http://x' }], 'mirror-only': true, ca: null }, '*': { insecure: true } },
        vm: { cpus: 4, memory: 4096, disk: 64 },
        debug: null,
        features: { buildkit: true },
        'default-address-pools': [{ base: '10.0.0.0/8', size: 24 }],
      }),
    ).toEqual([]);
    expect(validate({})).toEqual([]);
  });

  it('reports each problem by berthd\'s JSON path', () => {
    const errors = validate({
      registries: { 'docker.io': { mirrors: [{ url: 'http://a' }, { url: 5 }, {}], bogus: 1 } },
      vm: { cpus: 0, memory: 1.5, disk: 20000 },
      'registry-mirrors': 'https://x',
      features: { a: 'yes' },
      nope: true,
    });
    const byPath = Object.fromEntries(errors.map((e) => [e.path, e.message]));
    expect(byPath['registries["docker.io"].mirrors[1].url']).toMatch(/expected a string, found a number/);
    expect(byPath['registries["docker.io"].mirrors[2]']).toMatch(/missing the required key "url"/);
    expect(byPath['registries["docker.io"].bogus']).toMatch(/unknown key/);
    expect(byPath['vm.cpus']).toMatch(/at least 1/);
    expect(byPath['vm.memory']).toMatch(/expected an integer or null/);
    expect(byPath['vm.disk']).toMatch(/at most 16384/);
    expect(byPath['registry-mirrors']).toMatch(/expected an array/);
    expect(byPath['features.a']).toMatch(/expected a boolean/);
    expect(byPath.nope).toMatch(/unknown key "nope"/);
    expect(validate([])[0]).toEqual({ path: '(the document)', message: 'expected an object, found an array' });
  });

  it('points at a JSON syntax error\'s line', () => {
    const r = parseDocument('{\n  "vm": {\n    "cpus": 2,\n  }\n}');
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.error.message).toBeTruthy();
      expect(r.error.line).toBe(4);
    }
    expect(parseDocument('{"a": 1}')).toEqual({ ok: true, value: { a: 1 } });
  });
});

describe('the type generator', () => {
  it('has written the committed file from the committed schema (npm run check fails otherwise)', () => {
    expect(fs.readFileSync(outFile, 'utf8')).toBe(generate(fs.readFileSync(schemaFile, 'utf8')));
    expect(path.basename(outFile)).toBe('settings.ts');
  });

  it('turns schema features into TypeScript', () => {
    const out: string = generate(
      JSON.stringify({
        title: 'T',
        type: 'object',
        additionalProperties: false,
        properties: {
          'a-b': { type: ['integer', 'null'], description: 'two\nlines' },
          list: { type: 'array', items: { $ref: '#/$defs/X' } },
          map: { type: 'object', additionalProperties: { type: 'boolean' } },
          any: { type: ['array', 'null'], items: true },
        },
        $defs: { X: { type: 'object', properties: { u: { type: 'string' } }, required: ['u'], additionalProperties: false } },
      }),
    );
    expect(out).toContain('export interface Settings {');
    expect(out).toContain('  "a-b"?: number | null;');
    expect(out).toContain('   * two\n   * lines');
    expect(out).toContain('  list?: X[];');
    expect(out).toContain('  map?: Record<string, boolean>;');
    expect(out).toContain('  any?: unknown[] | null;');
    expect(out).toContain('export interface X {\n  u: string;\n}');
    expect(() => generate(JSON.stringify({ type: 'object', oneOf: [] }))).toThrow(/unsupported schema keyword oneOf/);
  });
});

describe('the Resources model', () => {
  const current = { Cpus: 2, MemoryMiB: 2048, DiskGiB: 32 };

  it('reads vm values, memory in GiB when whole', () => {
    expect(fromDocument({ vm: { cpus: 4, memory: 8192, disk: 64 } })).toEqual({ cpus: '4', memory: '8', memoryUnit: 'GiB', disk: '64' });
    expect(fromDocument({ vm: { memory: 1536 } })).toEqual({ cpus: '', memory: '1536', memoryUnit: 'MiB', disk: '' });
    expect(convertMemory('1.5', 'GiB', 'MiB')).toBe('1536');
    expect(convertMemory('1536', 'MiB', 'GiB')).toBe('1.5');
  });

  it('checks ranges and refuses a smaller disk than the one there is', () => {
    const ok = check({ cpus: '4', memory: '1.5', memoryUnit: 'GiB', disk: '40' }, current);
    expect(ok).toEqual({ values: { cpus: 4, memory: 1536, disk: 40 }, errors: [] });
    const bad = check({ cpus: '0', memory: '100', memoryUnit: 'MiB', disk: '16' }, current);
    expect(bad.errors.map((e) => e.path)).toEqual(['vm.cpus', 'vm.memory', 'vm.disk']);
    expect(bad.errors[2].message).toMatch(/32 GiB now and cannot shrink/);
    expect(check({ cpus: '1.5', memory: 'x', memoryUnit: 'MiB', disk: '' }, null).errors.map((e) => e.message)).toEqual([
      'must be a whole number',
      'not a number',
    ]);
  });

  it('knows which saved values wait for a VM restart', () => {
    expect(pendingRestart({ vm: { cpus: 4, memory: 2048, disk: 32 } }, current)).toEqual(['vm.cpus']);
    expect(pendingRestart({ vm: { memory: 4096, disk: 64 } }, current)).toEqual(['vm.memory', 'vm.disk']);
    expect(pendingRestart({ vm: { cpus: 4 } }, null)).toEqual([]);
  });

  it('builds the merge patch and the document', () => {
    const doc = { vm: { cpus: 2, memory: 2048 }, 'registry-mirrors': ['https://m'] };
    expect(vmPatch(doc, { cpus: 4, memory: 2048, disk: null })).toEqual({ vm: { cpus: 4 } });
    expect(vmPatch(doc, { cpus: null, memory: 2048, disk: 50 })).toEqual({ vm: { cpus: null, disk: 50 } });
    expect(vmPatch(doc, { cpus: 2, memory: 2048, disk: null })).toEqual({});
    expect(withVm(doc, { cpus: null, memory: null, disk: null })).toEqual({ 'registry-mirrors': ['https://m'] });
  });
});

describe('the app preferences', () => {
  function memoryStorage() {
    const m = new Map<string, string>();
    return { getItem: (k: string) => m.get(k) ?? null, setItem: (k: string, v: string) => void m.set(k, v), m };
  }

  it('are kept in localStorage by the HTTP backend, with defaults', async () => {
    const storage = memoryStorage();
    const b = new HttpBackend({ fetch: (async () => new Response('')) as unknown as typeof fetch, storage });
    expect(await b.getPrefs()).toEqual({ keepEngineRunningOnQuit: true, startAtLogin: false, theme: 'system', engineBackend: '' });
    await b.setPrefs({ ...(await b.getPrefs()), theme: 'dark', startAtLogin: true });
    expect(JSON.parse(storage.m.get(PREFS_KEY) as string)).toMatchObject({ theme: 'dark', startAtLogin: true });
    expect((await b.getPrefs()).theme).toBe('dark');
    await expect(b.setPrefs({ ...(await b.getPrefs()), theme: 'purple' as 'dark' })).rejects.toThrow(/not one of/);
    storage.m.set(PREFS_KEY, '{broken');
    expect((await b.getPrefs()).theme).toBe('system');
  });

  it('apply the theme to the root element at once', async () => {
    const root = { dataset: {} as Record<string, string> } as unknown as HTMLElement;
    applyTheme('dark', root);
    expect(root.dataset.theme).toBe('dark');
    applyTheme('system', root);
    expect(root.dataset.theme).toBeUndefined();

    const storage = memoryStorage();
    const b = new HttpBackend({ fetch: (async () => new Response('')) as unknown as typeof fetch, storage });
    const p = await loadPrefs(b);
    const saved = await savePrefs(b, p, { theme: 'light' });
    expect(saved.theme).toBe('light');
    expect(get(appPrefs).theme).toBe('light');
  });
});
