// The run dialog's input turned into a `POST /containers/create` body.
import type { RunOptions } from './types';

export interface PortSpec {
  hostIp?: string;
  hostPort?: string;
  containerPort: number;
  proto: 'tcp' | 'udp' | 'sctp';
}

/** `[ip:][hostPort:]containerPort[/proto]`, as `docker run -p`; throws with a readable message. */
export function parsePortSpec(spec: string): PortSpec {
  const s = spec.trim();
  let proto: PortSpec['proto'] = 'tcp';
  let rest = s;
  const slash = s.lastIndexOf('/');
  if (slash >= 0) {
    const p = s.slice(slash + 1).toLowerCase();
    if (p !== 'tcp' && p !== 'udp' && p !== 'sctp') throw new Error(`"${spec}": the protocol is tcp, udp or sctp`);
    proto = p;
    rest = s.slice(0, slash);
  }
  // An IPv6 host address is written in brackets: [::1]:8080:80
  let hostIp: string | undefined;
  const v6 = /^\[([^\]]+)\]:(.*)$/.exec(rest);
  if (v6) {
    hostIp = v6[1];
    rest = v6[2];
  }
  const parts = rest.split(':');
  if (parts.length > 3 || (hostIp && parts.length !== 2)) throw new Error(`"${spec}" is not [ip:][host port:]container port[/protocol]`);
  if (parts.length === 3) hostIp = parts.shift();
  const containerPart = parts.pop() as string;
  const hostPort = parts.pop();
  const num = (v: string, what: string) => {
    if (!/^\d+$/.test(v)) throw new Error(`"${spec}": the ${what} "${v}" is not a number`);
    const n = Number(v);
    if (n < 1 || n > 65535) throw new Error(`"${spec}": the ${what} ${n} is out of range (1-65535)`);
    return n;
  };
  const containerPort = num(containerPart, 'container port');
  if (hostPort !== undefined && hostPort !== '') num(hostPort, 'host port');
  return { hostIp: hostIp || undefined, hostPort: hostPort || undefined, containerPort, proto };
}

/** `KEY=value` (a key alone is passed as `KEY`, as docker does); throws when the key is bad. */
export function parseEnv(line: string): string {
  const t = line.trim();
  const key = t.split('=')[0];
  if (!/^[A-Za-z_][A-Za-z0-9_.-]*$/.test(key)) throw new Error(`"${line}": "${key}" is not a variable name`);
  return t;
}

/** The names docker accepts for a container. */
export function validName(name: string): boolean {
  return /^\/?[a-zA-Z0-9][a-zA-Z0-9_.-]*$/.test(name);
}

export function createBody(o: RunSpec): Record<string, unknown> {
  const exposed: Record<string, object> = {};
  const bindings: Record<string, { HostIp: string; HostPort: string }[]> = {};
  for (const p of o.ports.filter((x) => x.trim())) {
    const spec = parsePortSpec(p);
    const key = `${spec.containerPort}/${spec.proto}`;
    exposed[key] = {};
    (bindings[key] ??= []).push({ HostIp: spec.hostIp ?? '', HostPort: spec.hostPort ?? '' });
  }
  const body: Record<string, unknown> = {
    Image: o.image,
    Env: o.env.filter((x) => x.trim()).map(parseEnv),
    ExposedPorts: exposed,
    HostConfig: { PortBindings: bindings } as Record<string, unknown>,
  };
  const binds = volumeBinds(o.volumes ?? []);
  if (binds.length) (body.HostConfig as Record<string, unknown>).Binds = binds;
  if (o.cmd && o.cmd.length) body.Cmd = o.cmd;
  return body;
}

/**
 * A command line split into arguments as a POSIX shell would for simple input: whitespace
 * separates, '…' and "…" group (a backslash escapes inside "…" and outside quotes). Throws on
 * an unclosed quote.
 */
export function splitCommand(line: string): string[] {
  const out: string[] = [];
  let cur = '';
  let has = false;
  let quote: '"' | "'" | null = null;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i];
    if (quote === "'") {
      if (ch === "'") quote = null;
      else cur += ch;
    } else if (quote === '"') {
      if (ch === '"') quote = null;
      else if (ch === '\\' && i + 1 < line.length && '"\\$`'.includes(line[i + 1])) cur += line[++i];
      else cur += ch;
    } else if (ch === "'" || ch === '"') {
      quote = ch;
      has = true;
    } else if (ch === '\\' && i + 1 < line.length) {
      cur += line[++i];
      has = true;
    } else if (/\s/.test(ch)) {
      if (has || cur) out.push(cur);
      cur = '';
      has = false;
    } else {
      cur += ch;
    }
  }
  if (quote) throw new Error(`unclosed ${quote} in the command`);
  if (has || cur) out.push(cur);
  return out;
}

// --- Volumes: `docker run -v source:target[:ro]`.

/** One row of the run dialog's volumes: a named volume or an absolute host path, a target. */
export interface VolumeRow {
  source: string;
  target: string;
  readOnly: boolean;
}

/** A run request with volumes (RunOptions and the rows; `createBody` maps them). */
export interface RunSpec extends RunOptions {
  volumes?: VolumeRow[];
}

export interface VolumeRowErrors {
  source?: string;
  target?: string;
}

/** dockerd's volume name rule (a volume is one directory of `volumes/`). */
const VOLUME_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]+$/;

/** What the source of a row is: a named volume, a host path (a bind) or nothing yet. */
export function volumeKind(source: string): 'volume' | 'bind' | 'empty' {
  const s = source.trim();
  if (!s) return 'empty';
  return s.startsWith('/') || s.includes('/') || s.startsWith('.') || s.startsWith('~') ? 'bind' : 'volume';
}

/** `/a//b/` → `/a/b`: targets compared for duplicates as dockerd cleans them. */
export function cleanPath(p: string): string {
  const parts: string[] = [];
  for (const seg of p.trim().split('/')) {
    if (!seg || seg === '.') continue;
    if (seg === '..') parts.pop();
    else parts.push(seg);
  }
  return '/' + parts.join('/');
}

/**
 * Each row's problems, by field (an empty row has none and is left out of the request):
 * a source that is a valid volume name or an absolute host path, an absolute target other than
 * `/`, no `:` (the `-v` form's separator), and no target twice.
 */
export function validateVolumes(rows: VolumeRow[]): VolumeRowErrors[] {
  const errors: VolumeRowErrors[] = rows.map(() => ({}));
  const seen = new Map<string, number>();
  rows.forEach((r, i) => {
    const source = r.source.trim();
    const target = r.target.trim();
    if (!source && !target) return;
    const e = errors[i];
    const kind = volumeKind(source);
    if (kind === 'empty') e.source = 'Name a volume or give an absolute host path';
    else if (source.includes(':')) e.source = 'A source cannot contain ":"';
    else if (kind === 'bind' && !source.startsWith('/')) e.source = `A host path must be absolute (start with /): "${source}"`;
    else if (kind === 'volume' && !VOLUME_NAME.test(source)) {
      e.source = `"${source}" is not a volume name: two or more letters, digits, _ . - (starting with a letter or digit)`;
    }
    if (!target) e.target = 'The path in the container is needed';
    else if (!target.startsWith('/')) e.target = `The path in the container must be absolute (start with /): "${target}"`;
    else if (target.includes(':')) e.target = 'The path in the container cannot contain ":"';
    else if (cleanPath(target) === '/') e.target = 'The container\'s root "/" cannot be a mount point';
    else {
      const key = cleanPath(target);
      const first = seen.get(key);
      if (first !== undefined) e.target = `${key} is already the target of volume ${first + 1}`;
      else seen.set(key, i);
    }
  });
  return errors;
}

/**
 * The rows as the docker CLI sends `-v`: `HostConfig.Binds` entries `source:target[:ro]`, for
 * named volumes (created by the engine when missing) and host paths alike. Throws on a bad row.
 */
export function volumeBinds(rows: VolumeRow[]): string[] {
  const errors = validateVolumes(rows);
  const bad = errors.findIndex((e) => e.source || e.target);
  if (bad >= 0) throw new Error(`volume ${bad + 1}: ${errors[bad].source ?? errors[bad].target}`);
  return rows
    .filter((r) => r.source.trim() || r.target.trim())
    .map((r) => `${r.source.trim()}:${r.target.trim()}${r.readOnly ? ':ro' : ''}`);
}
