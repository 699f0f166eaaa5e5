// The Registries pane's model: the settings document's mirror keys as an editable list per
// registry, back into a document, and the admin API's errors (by JSON path) onto its fields.
// Pure functions; the pane (views/RegistriesPane.svelte) keeps the state.
import type { FieldError, SettingsDocument } from '../api/types';

export const DOCKER_HUB = 'docker.io';

export interface MirrorRow {
  /** Stable identity for keyed lists, drag and drop and error mapping. */
  key: string;
  url: string;
  /** Its host[:port] is listed in `insecure-registries`. */
  insecure: boolean;
}

export interface RegistryRow {
  key: string;
  /** As in image references: host or host:port, `docker.io`, or `*`. */
  name: string;
  mirrors: MirrorRow[];
  mirrorOnly: boolean;
  insecure: boolean;
}

export interface RegistriesModel {
  registries: RegistryRow[];
  /** Docker Hub's mirrors were written as daemon.json's `registry-mirrors`; keep that form. */
  hubShorthand: boolean;
  /** `insecure-registries` entries that belonged to a mirror when the document was read. */
  mirrorInsecure: string[];
}

let seq = 0;
export function newKey(prefix: string): string {
  return `${prefix}${++seq}`;
}

/** JSON path of a child key, as berthd writes them (`a.b`, `a["docker.io"]`). */
export function childPath(parent: string, key: string): string {
  const plain = key.length > 0 && /^[A-Za-z0-9_-]+$/.test(key);
  if (plain) return parent ? `${parent}.${key}` : key;
  return `${parent}[${JSON.stringify(key)}]`;
}

/** `host[:port]` of a mirror URL, or null when it does not parse. */
export function mirrorHost(url: string): string | null {
  try {
    const u = new URL(url.trim());
    if (u.protocol !== 'http:' && u.protocol !== 'https:') return null;
    return u.host || null;
  } catch {
    return null;
  }
}

export function fromDocument(doc: SettingsDocument): RegistriesModel {
  const insecureList = (doc['insecure-registries'] ?? []).map(String);
  const insecureSet = new Set(insecureList);
  const used = new Set<string>();
  const mirror = (url: string): MirrorRow => {
    const host = mirrorHost(url);
    const insecure = !!host && insecureSet.has(host);
    if (insecure && host) used.add(host);
    return { key: newKey('m'), url, insecure };
  };
  const regs = doc.registries ?? {};
  const hubShort = doc['registry-mirrors'] ?? [];
  const hub = regs[DOCKER_HUB] ?? {};
  const rows: RegistryRow[] = [
    {
      key: newKey('r'),
      name: DOCKER_HUB,
      mirrors: [...hubShort.map(mirror), ...(hub.mirrors ?? []).map((m) => mirror(m.url))],
      mirrorOnly: !!hub['mirror-only'],
      insecure: !!hub.insecure,
    },
  ];
  for (const [name, r] of Object.entries(regs)) {
    if (name === DOCKER_HUB) continue;
    rows.push({
      key: newKey('r'),
      name,
      mirrors: (r.mirrors ?? []).map((m) => mirror(m.url)),
      mirrorOnly: !!r['mirror-only'],
      insecure: !!r.insecure,
    });
  }
  return { registries: rows, hubShorthand: hubShort.length > 0, mirrorInsecure: [...used] };
}

/** Where each field of the model lands in the document (field key → JSON path prefixes). */
export type PathMap = Map<string, string[]>;

/**
 * The document to save: `base` (the document as read) with its mirror keys replaced by the
 * model's. Keys of a registry the pane does not edit (`ca`, unknown ones) are kept.
 */
export function toDocument(base: SettingsDocument, m: RegistriesModel): { doc: SettingsDocument; paths: PathMap } {
  const doc: SettingsDocument = { ...base };
  const paths: PathMap = new Map();
  const add = (key: string, path: string) => paths.set(key, [...(paths.get(key) ?? []), path]);
  const baseRegs = base.registries ?? {};
  const registries: Record<string, Record<string, unknown>> = {};
  delete doc['registry-mirrors'];
  for (const r of m.registries) {
    const name = r.name.trim();
    const rPath = childPath('registries', name);
    add(r.key, rPath);
    const entry: Record<string, unknown> = { ...(baseRegs[name] ?? {}) };
    delete entry.mirrors;
    delete entry['mirror-only'];
    delete entry.insecure;
    const urls = r.mirrors.map((x) => x.url.trim());
    if (name === DOCKER_HUB && m.hubShorthand) {
      if (urls.length) doc['registry-mirrors'] = urls;
      r.mirrors.forEach((x, i) => add(x.key, `registry-mirrors[${i}]`));
    } else if (urls.length) {
      entry.mirrors = urls.map((url) => ({ url }));
      r.mirrors.forEach((x, i) => add(x.key, `${rPath}.mirrors[${i}]`));
    }
    if (r.mirrorOnly) {
      entry['mirror-only'] = true;
      add(`${r.key}:mirror-only`, `${rPath}.mirror-only`);
    }
    if (r.insecure) {
      entry.insecure = true;
      add(`${r.key}:insecure`, `${rPath}.insecure`);
    }
    if (Object.keys(entry).length || name !== DOCKER_HUB) {
      // A registry the user added stays even when it is empty, so its name is checked.
      registries[name] = entry;
    }
  }
  if (Object.keys(registries).length) doc.registries = registries;
  else delete doc.registries;

  // insecure-registries: the entries that were not a mirror's, then the mirrors marked insecure.
  const owned = new Set(m.mirrorInsecure);
  const list = (base['insecure-registries'] ?? []).filter((h) => !owned.has(h));
  const owners = new Map<string, string>();
  for (const r of m.registries) {
    for (const x of r.mirrors) {
      const host = x.insecure ? mirrorHost(x.url) : null;
      if (host && !list.includes(host)) list.push(host);
      if (host && !owners.has(host)) owners.set(host, x.key);
    }
  }
  list.forEach((h, i) => {
    const owner = owners.get(h);
    if (owner) add(owner, `insecure-registries[${i}]`);
  });
  if (list.length) doc['insecure-registries'] = list;
  else delete doc['insecure-registries'];
  return { doc, paths };
}

function under(path: string, prefix: string): boolean {
  return path === prefix || path.startsWith(prefix + '.') || path.startsWith(prefix + '[');
}

/**
 * Each error on the field it concerns (the longest matching path wins: a mirror's error is not
 * also its registry's); errors no field owns go under `''`.
 */
export function errorsByField(errors: FieldError[], paths: PathMap): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const e of errors) {
    let best = '';
    let bestLen = -1;
    for (const [key, prefixes] of paths) {
      for (const p of prefixes) {
        if (under(e.path, p) && p.length > bestLen) {
          best = key;
          bestLen = p.length;
        }
      }
    }
    out.set(best, [...(out.get(best) ?? []), best ? e.message : `${e.path}: ${e.message}`]);
  }
  return out;
}

/** The list with the item at `from` moved to `to`. */
export function move<T>(list: T[], from: number, to: number): T[] {
  if (from === to || from < 0 || to < 0 || from >= list.length || to >= list.length) return list;
  const out = list.slice();
  const [x] = out.splice(from, 1);
  out.splice(to, 0, x);
  return out;
}
