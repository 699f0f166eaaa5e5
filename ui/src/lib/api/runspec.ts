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

export function createBody(o: RunOptions): Record<string, unknown> {
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
    HostConfig: { PortBindings: bindings },
  };
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
