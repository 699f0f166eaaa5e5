// The exec terminal's transport in a browser: HttpBackend's WebSocket through the real dev
// bridge to a stand-in berthd that hijacks `POST /exec/{id}/start` as berthd does; and the
// bridge's checks on the WebSocket upgrade (Host, Origin, token).
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { startBridge, type Bridge } from '../bridge/server.mjs';
import { HttpBackend } from '../src/lib/backend/http';
import { openShell, shellExecBody, exitMessage } from '../src/lib/backend/exec';
import { EngineError, type Backend, type ExecSession } from '../src/lib/backend/types';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-exec-test-'));
const socket = path.join(dir, 'engine.sock');
const seen: { url?: string; head: string; body: string }[] = [];
const input: Record<string, string> = {};
const ended: Record<string, boolean> = {};
const conns: Record<string, Duplex> = {};

const engine = http.createServer((req, res) => {
  let body = '';
  req.on('data', (c) => (body += c));
  req.on('end', () => {
    seen.push({ url: req.url, head: JSON.stringify(req.headers), body });
    if (req.url === '/containers/web/exec') {
      res.writeHead(201, { 'Content-Type': 'application/json' });
      return res.end('{"Id":"e1"}');
    }
    if (req.url === '/containers/stopped/exec') {
      res.writeHead(409, { 'Content-Type': 'application/json' });
      return res.end('{"message":"container stopped is not running"}');
    }
    res.writeHead(200);
    res.end();
  });
});
// berthd's hijack: 101, then the raw stream both ways (here: a prompt and an echo).
engine.on('upgrade', (req, sock, head) => {
  const id = /^\/exec\/([^/]+)\/start$/.exec(req.url ?? '')?.[1] ?? '';
  seen.push({ url: req.url, head: JSON.stringify(req.headers), body: head.toString() });
  if (id === 'missing') {
    const body = '{"message":"No such exec instance: missing"}';
    sock.end(`HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
    return;
  }
  conns[id] = sock;
  input[id] = '';
  ended[id] = false;
  let skip = Number(req.headers['content-length'] ?? 0) - head.length; // the start request's body
  sock.write('HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n$ ');
  sock.on('data', (d: Buffer) => {
    let text = d.toString('latin1');
    if (skip > 0) {
      const n = Math.min(skip, text.length);
      text = text.slice(n);
      skip -= n;
    }
    input[id] += text;
    if (text) sock.write(text);
    if (input[id].includes('exit\r')) sock.end('\r\n');
  });
  sock.on('end', () => {
    ended[id] = true;
    sock.end();
  });
  sock.on('error', () => {});
});

let bridge: Bridge;
let backend: Backend;

beforeAll(async () => {
  await new Promise<void>((r) => engine.listen(socket, () => r()));
  bridge = await startBridge({ socket, port: 0, dist: dir, token: 'sekrit' });
  backend = new HttpBackend({ baseUrl: bridge.url, token: 'sekrit', WebSocket: WebSocket as unknown as typeof globalThis.WebSocket });
});

afterAll(async () => {
  await bridge.close();
  for (const c of Object.values(conns)) c.destroy();
  await new Promise<void>((r) => engine.close(() => r()));
  fs.rmSync(dir, { recursive: true, force: true });
});

async function until(f: () => boolean, what: string) {
  const deadline = Date.now() + 5000;
  while (!f()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('exec through the dev bridge', () => {
  it('makes a shell exec, hijacks its start both ways, resizes, and hears it end', async () => {
    let out = '';
    let closed: EngineError | undefined | 'open' = 'open';
    const shell = await openShell(backend, 'web', { rows: 30, cols: 100 }, {
      onData: (c) => (out += new TextDecoder().decode(c)),
      onClose: (e) => (closed = e),
    });
    expect(shell.execId).toBe('e1');
    const create = seen.find((s) => s.url === '/containers/web/exec');
    expect(JSON.parse(create?.body ?? '{}')).toEqual(shellExecBody({ rows: 30, cols: 100 }));
    expect(JSON.parse(create?.body ?? '{}')).toMatchObject({ Tty: true, AttachStdin: true, Cmd: ['/bin/sh'], ConsoleSize: [30, 100] });
    const start = seen.find((s) => s.url === '/exec/e1/start');
    expect(JSON.parse(start?.head ?? '{}')).toMatchObject({ connection: 'Upgrade', upgrade: 'tcp', host: 'berthd' });
    expect(JSON.parse(start?.head ?? '{}')['sec-websocket-protocol']).toBeUndefined();
    await until(() => out === '$ ', 'the prompt');
    shell.session.send('echo hi\r');
    shell.session.send(new Uint8Array([0xc3, 0xa9])); // é, as bytes
    await until(() => out.startsWith('$ echo hi\r'), 'the echo');
    await until(() => input.e1 === 'echo hi\r\xc3\xa9', 'the input, in order');
    await shell.session.resize(40, 120);
    expect(seen.some((s) => s.url === '/exec/e1/resize?h=40&w=120')).toBe(true);
    await until(() => seen.some((s) => s.url === '/exec/e1/resize?h=30&w=100'), 'the first resize');
    shell.session.send('exit\r');
    await until(() => closed !== 'open', 'the end');
    expect(closed).toBeUndefined();
  });

  it('closing the session ends the input after what was sent', async () => {
    const shell = await openShell(backend, 'web', { rows: 24, cols: 80 }, { onData: () => {}, onClose: () => {} });
    await until(() => input.e1 === '', 'the new session');
    shell.session.send('\x03\x04');
    shell.session.close();
    await until(() => ended.e1 === true, 'the half-close');
    expect(input.e1).toBe('\x03\x04');
  });

  it('rejects with berthd\'s status and message', async () => {
    await expect(backend.execStart('missing', { onData: () => {}, onClose: () => {} })).rejects.toMatchObject({
      status: 404,
      message: 'No such exec instance: missing',
    });
    await expect(openShell(backend, 'stopped', { rows: 24, cols: 80 }, { onData: () => {}, onClose: () => {} })).rejects.toMatchObject({
      status: 409,
      message: 'container stopped is not running',
    });
    expect(exitMessage(127)).toMatch(/could not be started/);
    expect(exitMessage(0)).toBe('The shell exited with code 0.');
  });

  it('refuses a WebSocket without the token, from another origin or Host, or elsewhere', async () => {
    const status = (url: string, protocols: string[], headers: Record<string, string> = {}) =>
      new Promise<number>((resolve) => {
        const ws = new WebSocket(url, protocols, { headers });
        ws.on('unexpected-response', (_req, res) => {
          resolve(res.statusCode ?? 0);
          res.resume();
        });
        ws.on('open', () => {
          resolve(101);
          ws.close();
        });
        ws.on('error', () => {});
      });
    const url = `ws://127.0.0.1:${bridge.port}/engine/exec/e1/start`;
    expect(await status(url, ['berth.exec.v1'])).toBe(401);
    expect(await status(url, ['berth.exec.v1', 'berth.token.wrong'])).toBe(401);
    expect(await status(url, ['berth.exec.v1', 'berth.token.sekrit'], { Origin: 'https://evil.example' })).toBe(403);
    expect(await status(url, ['berth.exec.v1', 'berth.token.sekrit'], { Host: 'evil.example' })).toBe(421);
    expect(await status(`ws://127.0.0.1:${bridge.port}/engine/containers/web/attach`, ['berth.exec.v1', 'berth.token.sekrit'])).toBe(501);
    expect(await status(`ws://127.0.0.1:${bridge.port}/engine/exec/..%2Fx/start`, ['berth.exec.v1', 'berth.token.sekrit'])).toBe(501);
    expect(await status(url, ['berth.token.sekrit'])).toBe(400);
    expect(await status(url, ['berth.exec.v1', 'berth.token.sekrit'], { Origin: `http://127.0.0.1:${bridge.port}` })).toBe(101);
  });
});
