// The dev bridge against a stand-in berthd on a Unix socket: the token and Host checks, and
// that a streamed answer reaches the browser chunk by chunk, not when it ends.
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBridge, type Bridge } from '../bridge/server.mjs';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-bridge-test-'));
const socket = path.join(dir, 'engine.sock');
let release: (() => void) | null = null;
const seen: { method?: string; url?: string; headers: http.IncomingHttpHeaders; body: string }[] = [];

const engine = http.createServer((req, res) => {
  let body = '';
  req.on('data', (c) => (body += c));
  req.on('end', () => {
    seen.push({ method: req.method, url: req.url, headers: req.headers, body });
    if (req.url === '/events') {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.write('{"Type":"container","Action":"start"}\n');
      // The rest only when the test says so.
      release = () => res.end('{"Type":"container","Action":"die"}\n');
      return;
    }
    res.writeHead(200, { 'Content-Type': 'application/json', ETag: '"v1"' });
    res.end(JSON.stringify({ ok: true }));
  });
});

let bridge: Bridge;

beforeAll(async () => {
  await new Promise<void>((r) => engine.listen(socket, () => r()));
  bridge = await startBridge({ socket, port: 0, dist: dir, token: 'sekrit' });
});

afterAll(async () => {
  await bridge.close();
  await new Promise<void>((r) => engine.close(() => r()));
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('dev bridge', () => {
  it('forwards method, path, query, headers and body, and answers headers back', async () => {
    const r = await fetch(`${bridge.url}engine/images/a%2Fb/tag?repo=x&tag=1`, {
      method: 'PUT',
      headers: { 'X-Berth-Token': 'sekrit', 'If-Match': '"v0"', 'Content-Type': 'application/json' },
      body: '{"a":1}',
    });
    expect(r.status).toBe(200);
    expect(r.headers.get('etag')).toBe('"v1"');
    const got = seen.at(-1);
    expect(got?.method).toBe('PUT');
    expect(got?.url).toBe('/images/a%2Fb/tag?repo=x&tag=1');
    expect(got?.headers['if-match']).toBe('"v0"');
    expect(got?.headers['x-berth-token']).toBeUndefined();
    expect(got?.body).toBe('{"a":1}');
  });

  it('refuses engine requests without the token, or for another Host', async () => {
    expect((await fetch(`${bridge.url}engine/_ping`)).status).toBe(401);
    expect((await fetch(`${bridge.url}engine/_ping`, { headers: { 'X-Berth-Token': 'wrong!' } })).status).toBe(401);
    const status = await new Promise<number>((resolve) => {
      http.get({ host: '127.0.0.1', port: bridge.port, path: '/engine/_ping', headers: { Host: 'evil.example', 'X-Berth-Token': 'sekrit' } }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
    });
    expect(status).toBe(421);
  });

  it('streams a body chunk by chunk', async () => {
    const r = await fetch(`${bridge.url}engine/events`, { headers: { 'X-Berth-Token': 'sekrit' } });
    const reader = (r.body as ReadableStream<Uint8Array>).getReader();
    const first = await reader.read();
    // The engine has not ended its answer: the first line came through on its own.
    expect(new TextDecoder().decode(first.value)).toBe('{"Type":"container","Action":"start"}\n');
    (release as unknown as () => void)();
    let rest = '';
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      rest += new TextDecoder().decode(value);
    }
    expect(rest).toBe('{"Type":"container","Action":"die"}\n');
  });

  it('does not serve files outside the UI', async () => {
    const r = await fetch(`${bridge.url}..%2f..%2fetc%2fpasswd`);
    expect(r.status).toBe(404);
  });
});
