// A small JSON Schema validator for the features docs/settings.schema.json uses (type, with
// "null" in a list; properties, required, additionalProperties; items; $ref to #/$defs;
// minimum/maximum; the uint formats; enum). Errors carry berthd's JSON paths
// (`registries["docker.io"].mirrors[1].url`, `vm.cpus`), so the editor shows both sources alike.
import type { FieldError } from '../api/types';
import { settingsSchema } from '../api/generated/settings';

export type Schema = boolean | { [key: string]: unknown };

export function childPath(parent: string, key: string): string {
  if (/^[A-Za-z0-9_-]+$/.test(key)) return parent ? `${parent}.${key}` : key;
  return `${parent}[${JSON.stringify(key)}]`;
}

function kindOf(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'number';
  return typeof v;
}

function describe(types: string[]): string {
  const names = types.map((t) => (t === 'integer' ? 'an integer' : t === 'null' ? 'null' : t === 'array' ? 'an array' : t === 'object' ? 'an object' : `a ${t}`));
  return names.length > 1 ? `${names.slice(0, -1).join(', ')} or ${names[names.length - 1]}` : names[0];
}

export function validate(value: unknown, root: Schema = settingsSchema): FieldError[] {
  const errors: FieldError[] = [];
  const defs = (typeof root === 'object' ? (root.$defs as Record<string, Schema>) : undefined) ?? {};
  const at = (path: string) => path || '(the document)';

  function check(v: unknown, s: Schema, path: string) {
    if (s === true) return;
    if (s === false) {
      errors.push({ path: at(path), message: 'not allowed here' });
      return;
    }
    if (typeof s.$ref === 'string') {
      const m = /^#\/\$defs\/(.+)$/.exec(s.$ref);
      const target = m ? defs[m[1]] : undefined;
      if (target === undefined) throw new Error(`unsupported $ref ${s.$ref}`);
      check(v, target, path);
    }
    const kind = kindOf(v);
    if (s.type !== undefined) {
      const types = (Array.isArray(s.type) ? s.type : [s.type]) as string[];
      const ok = types.includes(kind) || (kind === 'integer' && types.includes('number'));
      if (!ok) {
        errors.push({ path: at(path), message: `expected ${describe(types)}, found ${kind === 'integer' ? 'a number' : describe([kind])}` });
        return;
      }
    }
    if (Array.isArray(s.enum) && !s.enum.some((x) => JSON.stringify(x) === JSON.stringify(v))) {
      errors.push({ path: at(path), message: `must be one of ${s.enum.map((x) => JSON.stringify(x)).join(', ')}` });
    }
    if (typeof v === 'number') {
      if (typeof s.minimum === 'number' && v < s.minimum) errors.push({ path: at(path), message: `must be at least ${s.minimum}` });
      if (typeof s.maximum === 'number' && v > s.maximum) errors.push({ path: at(path), message: `must be at most ${s.maximum}` });
      if (typeof s.format === 'string' && /^uint/.test(s.format) && v < 0) errors.push({ path: at(path), message: 'must not be negative' });
    }
    if (kind === 'array' && s.items !== undefined) {
      (v as unknown[]).forEach((x, i) => check(x, s.items as Schema, `${path}[${i}]`));
    }
    if (kind === 'object') {
      const obj = v as Record<string, unknown>;
      const props = (s.properties as Record<string, Schema>) ?? {};
      for (const r of (s.required as string[]) ?? []) {
        if (!(r in obj)) errors.push({ path: at(path), message: `missing the required key "${r}"` });
      }
      for (const [k, x] of Object.entries(obj)) {
        const p = childPath(path, k);
        if (k in props) check(x, props[k], p);
        else if (s.additionalProperties === false) errors.push({ path: p, message: `unknown key "${k}"` });
        else if (s.additionalProperties !== undefined) check(x, s.additionalProperties as Schema, p);
      }
    }
  }
  check(value, root, '');
  return errors;
}

/** Where (line, column, both from 1) a JSON.parse error points, when the engine says. */
export function parseError(text: string, e: unknown): { message: string; line?: number; column?: number } {
  const msg = (e as Error).message ?? String(e);
  let pos: number | undefined;
  const m = /position (\d+)/.exec(msg);
  if (m) pos = Number(m[1]);
  const lc = /line (\d+) column (\d+)/.exec(msg);
  if (lc) return { message: msg, line: Number(lc[1]), column: Number(lc[2]) };
  if (pos === undefined) return { message: msg };
  const before = text.slice(0, pos).split('\n');
  return { message: msg, line: before.length, column: before[before.length - 1].length + 1 };
}

/** The document, or the syntax error. */
export function parseDocument(text: string): { ok: true; value: unknown } | { ok: false; error: { message: string; line?: number; column?: number } } {
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch (e) {
    return { ok: false, error: parseError(text, e) };
  }
}
