#!/usr/bin/env node
// @ts-check
// The dev bridge: serves the built UI and forwards `/engine/<path>` to berthd's Unix socket, so
// the UI runs in a plain browser (development, end-to-end tests). Answers are streamed chunk by
// chunk (pull progress, logs, events). Listens on 127.0.0.1 only.
//
// berthd's socket is owner-only; a TCP port is not. So the bridge requires a token on every
// engine request (`X-Berth-Token`, random unless given; the UI reads it from the URL fragment
// the bridge prints), checks the Host header (against DNS rebinding), and a custom header means
// a cross-origin page cannot send one without a CORS preflight, which the bridge never grants.
//
//   node bridge/server.mjs [--socket PATH] [--port N] [--dist DIR] [--token T]
//
// Also a module: `startBridge({ socket, port, dist, token })` (the end-to-end tests use it).
//
// An exec's hijacked stream (`POST /exec/{id}/start` with `Upgrade: tcp`) is something a browser
// cannot open, so the bridge offers it as a WebSocket on `/engine/exec/{id}/start`: the same
// Host check, the token in the subprotocol list (`berth.token.<token>`, a browser cannot set
// headers on a WebSocket) beside `berth.exec.v1`, and an Origin of 127.0.0.1/localhost (a page
// of any origin may open a WebSocket, so the token is what keeps them out). Binary messages carry
// the raw bytes both ways; the bridge's first message is the text `{"event":"open","status":101}`
// once berthd switched protocols. An exec berthd refuses closes the WebSocket with code
// 4000 + its HTTP status and its message as the reason; the process's end closes it with 1000.

import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { WebSocketServer } from 'ws';

const here = path.dirname(fileURLToPath(import.meta.url));

/** Headers that belong to one hop, never forwarded. */
const HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'host',
  'x-berth-token',
  'origin',
  'referer',
  'cookie',
]);

const TYPES = /** @type {Record<string, string>} */ ({
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.map': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
});

const SECURITY_HEADERS = {
  'Content-Security-Policy':
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'X-Frame-Options': 'DENY',
};

/** The socket berthd listens on by default (as `berth start` and berthd choose it). */
export function defaultSocket() {
  if (process.env.BERTH_SOCKET) return process.env.BERTH_SOCKET;
  const runtime = process.env.XDG_RUNTIME_DIR;
  if (runtime) return path.join(runtime, 'berth', 'berthd.sock');
  return path.join(process.env.HOME ?? '/', '.berth', 'run', 'berthd.sock');
}

/**
 * @param {string} a
 * @param {string} b
 */
function sameToken(a, b) {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && crypto.timingSafeEqual(x, y);
}

/** The subprotocol of the exec WebSocket (docs/ui.md). */
export const EXEC_PROTOCOL = 'berth.exec.v1';
const TOKEN_PROTOCOL = 'berth.token.';

/**
 * A WebSocket close reason: at most 123 bytes of UTF-8.
 * @param {string} s
 */
function closeReason(s) {
  let out = s.replace(/\s+/g, ' ').trim();
  while (Buffer.byteLength(out) > 123) out = out.slice(0, -1);
  return out;
}

/**
 * Refuses an upgrade request with a plain HTTP answer.
 * @param {import('node:stream').Duplex} sock
 * @param {number} status
 * @param {string} message
 */
function refuseUpgrade(sock, status, message) {
  const body = JSON.stringify({ message });
  sock.end(
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ''}\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}

/**
 * @param {http.ServerResponse} res
 * @param {number} status
 * @param {string} message
 */
function fail(res, status, message) {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  res.writeHead(status, { 'Content-Type': 'application/json', ...SECURITY_HEADERS });
  res.end(JSON.stringify({ message }));
}

/**
 * @typedef {{ socket?: string, port?: number, dist?: string, token?: string | null, log?: (line: string) => void }} BridgeOptions
 * @typedef {{ url: string, port: number, token: string | null, close: () => Promise<void> }} Bridge
 */

/**
 * Starts the bridge. `token: null` turns the token check off (never outside a throwaway setup).
 * @param {BridgeOptions} [opts]
 * @returns {Promise<Bridge>}
 */
export function startBridge(opts = {}) {
  const socket = opts.socket ?? defaultSocket();
  const dist = path.resolve(opts.dist ?? path.join(here, '..', 'dist'));
  const token = opts.token === undefined ? crypto.randomBytes(18).toString('base64url') : opts.token;
  const log = opts.log ?? (() => {});
  /** @type {Set<import('node:net').Socket>} */
  const sockets = new Set();
  let port = 0;

  /** @param {string | undefined} host */
  const hostAllowed = (host) => host === `127.0.0.1:${port}` || host === `localhost:${port}`;

  /**
   * @param {http.IncomingMessage} req
   * @param {http.ServerResponse} res
   * @param {string} target berthd's path and query
   */
  function proxy(req, res, target) {
    /** @type {http.OutgoingHttpHeaders} */
    const headers = {};
    for (const [k, v] of Object.entries(req.headers)) {
      if (!HOP.has(k) && v !== undefined) headers[k] = v;
    }
    headers.host = 'berthd';
    const upstream = http.request({ socketPath: socket, method: req.method, path: target, headers }, (up) => {
      /** @type {http.OutgoingHttpHeaders} */
      const out = { 'Cache-Control': 'no-store', 'X-Content-Type-Options': 'nosniff' };
      for (const [k, v] of Object.entries(up.headers)) {
        if (!HOP.has(k) && v !== undefined) out[k] = v;
      }
      res.writeHead(up.statusCode ?? 502, out);
      res.flushHeaders();
      up.on('data', (chunk) => res.write(chunk));
      up.on('end', () => res.end());
      up.on('error', () => res.destroy());
    });
    upstream.on('error', (e) => fail(res, 502, `berthd at ${socket}: ${e.message}`));
    // A client that goes away (a closed log view, an aborted pull) ends the engine request.
    res.on('close', () => {
      if (!res.writableFinished) upstream.destroy();
    });
    req.pipe(upstream);
    log(`${req.method} ${target}`);
  }

  /**
   * @param {http.IncomingMessage} req
   * @param {http.ServerResponse} res
   * @param {string} pathname
   */
  function serveStatic(req, res, pathname) {
    if (req.method !== 'GET' && req.method !== 'HEAD') return fail(res, 405, 'method not allowed');
    let rel = decodeURIComponent(pathname);
    if (rel === '/' || rel === '') rel = '/index.html';
    const file = path.resolve(dist, '.' + rel);
    if (file !== dist && !file.startsWith(dist + path.sep)) return fail(res, 404, 'not found');
    fs.stat(file, (err, st) => {
      if (err || !st.isFile()) {
        if (rel === '/index.html') return fail(res, 404, `no built UI in ${dist}: run npm run build`);
        return fail(res, 404, 'not found');
      }
      const ext = path.extname(file);
      res.writeHead(200, {
        'Content-Type': TYPES[ext] ?? 'application/octet-stream',
        'Content-Length': st.size,
        'Cache-Control': rel.startsWith('/assets/') ? 'public, max-age=31536000, immutable' : 'no-cache',
        ...SECURITY_HEADERS,
      });
      if (req.method === 'HEAD') return res.end();
      fs.createReadStream(file).pipe(res);
    });
  }

  const server = http.createServer((req, res) => {
    res.socket?.setNoDelay(true);
    if (!hostAllowed(req.headers.host)) return fail(res, 421, 'unexpected Host header');
    const url = new URL(req.url ?? '/', `http://${req.headers.host}`);
    if (url.pathname === '/engine' || url.pathname.startsWith('/engine/')) {
      if (req.method === 'OPTIONS') return fail(res, 403, 'cross-origin requests are not allowed');
      const given = req.headers['x-berth-token'];
      if (token !== null && (typeof given !== 'string' || !sameToken(given, token))) {
        return fail(res, 401, 'missing or wrong X-Berth-Token (open the URL the bridge printed)');
      }
      // Keep the path as sent (image names carry escaped slashes).
      const raw = (req.url ?? '').slice('/engine'.length) || '/';
      return proxy(req, res, raw.startsWith('/') ? raw : '/' + raw);
    }
    serveStatic(req, res, url.pathname);
  });
  // An exec's hijacked stream, as a WebSocket (see the top of the file). Nothing else upgrades.
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: 1 << 20,
    handleProtocols: (protocols) => (protocols.has(EXEC_PROTOCOL) ? EXEC_PROTOCOL : false),
  });
  /** @param {string | undefined} origin */
  const originAllowed = (origin) => {
    if (origin === undefined) return true; // not a browser
    try {
      const u = new URL(origin);
      return u.protocol === 'http:' && ['127.0.0.1', 'localhost', '[::1]'].includes(u.hostname);
    } catch {
      return false;
    }
  };
  server.on('upgrade', (req, sock, head) => {
    if (!hostAllowed(req.headers.host)) return refuseUpgrade(sock, 421, 'unexpected Host header');
    const url = new URL(req.url ?? '/', `http://${req.headers.host}`);
    const m = /^\/engine\/exec\/([A-Za-z0-9_.-]{1,128})\/start$/.exec(url.pathname);
    if (!m || String(req.headers.upgrade).toLowerCase() !== 'websocket') {
      return refuseUpgrade(sock, 501, 'only an exec start is offered as a WebSocket (/engine/exec/{id}/start)');
    }
    if (!originAllowed(req.headers.origin)) return refuseUpgrade(sock, 403, 'cross-origin requests are not allowed');
    const offered = String(req.headers['sec-websocket-protocol'] ?? '')
      .split(',')
      .map((p) => p.trim());
    const given = offered.find((p) => p.startsWith(TOKEN_PROTOCOL))?.slice(TOKEN_PROTOCOL.length);
    if (token !== null && (given === undefined || !sameToken(given, token))) {
      return refuseUpgrade(sock, 401, 'missing or wrong token (open the URL the bridge printed)');
    }
    if (!offered.includes(EXEC_PROTOCOL)) return refuseUpgrade(sock, 400, `the WebSocket must offer ${EXEC_PROTOCOL}`);
    wss.handleUpgrade(req, sock, head, (ws) => execStream(ws, m[1]));
  });

  /**
   * Starts exec `id` on berthd with the connection upgraded, and pipes it to `ws` both ways.
   * @param {import('ws').WebSocket} ws
   * @param {string} id
   */
  function execStream(ws, id) {
    const target = `/exec/${id}/start`;
    log(`WS POST ${target}`);
    /** @type {import('node:stream').Duplex | null} */
    let conn = null;
    const body = JSON.stringify({ Detach: false, Tty: true });
    const upstream = http.request({
      socketPath: socket,
      method: 'POST',
      path: target,
      headers: {
        host: 'berthd',
        'Content-Type': 'application/json',
        'Content-Length': Buffer.byteLength(body),
        Connection: 'Upgrade',
        Upgrade: 'tcp',
      },
    });
    upstream.on('upgrade', (res, s, rest) => {
      conn = s;
      if (ws.readyState !== ws.OPEN) return s.destroy();
      s.setNoDelay?.(true);
      ws.send(JSON.stringify({ event: 'open', status: res.statusCode }));
      /** @param {Buffer} d */
      const out = (d) => {
        if (ws.readyState !== ws.OPEN) return;
        // Output faster than the page reads it waits in the socket, not in memory.
        if (ws.bufferedAmount > 1 << 20) s.pause();
        ws.send(d, () => {
          if (s.isPaused() && ws.bufferedAmount < 1 << 18) s.resume();
        });
      };
      if (rest.length) out(rest);
      s.on('data', out);
      s.on('end', () => ws.close(1000, 'the process exited'));
      s.on('error', () => ws.close(1011, 'the connection to berthd broke'));
      s.on('close', () => {
        if (ws.readyState === ws.OPEN) ws.close(1000, 'the process exited');
      });
    });
    upstream.on('response', (res) => {
      const parts = /** @type {Buffer[]} */ ([]);
      res.on('data', (c) => parts.push(c));
      res.on('end', () => {
        const text = Buffer.concat(parts).toString('utf8');
        let message = text.trim() || `HTTP ${res.statusCode}`;
        try {
          const v = JSON.parse(text);
          if (v && typeof v.message === 'string') message = v.message;
        } catch {
          // not JSON: the text is the message
        }
        const status = res.statusCode ?? 502;
        ws.close(4000 + (status >= 100 && status < 1000 ? status : 502), closeReason(message));
      });
    });
    upstream.on('error', (e) => {
      if (!conn) ws.close(4502, closeReason(`berthd at ${socket}: ${e.message}`));
    });
    ws.on('message', (data) => {
      if (!conn) return; // nothing is sent before the open message
      conn.write(Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(new Uint8Array(data)));
    });
    // The page went away or closed the terminal: so does the connection to berthd.
    // Input already sent is written first (a shell told to exit gets to read it).
    ws.on('close', () => {
      const c = conn;
      if (!c) return upstream.destroy();
      c.end();
      setTimeout(() => c.destroy(), 2_000).unref();
    });
    ws.on('error', () => ws.terminate());
    upstream.end(body);
  }
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });

  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 7780, '127.0.0.1', () => {
      const addr = server.address();
      port = typeof addr === 'object' && addr ? addr.port : 0;
      resolve({
        url: `http://127.0.0.1:${port}/`,
        port,
        token,
        close: () =>
          new Promise((done) => {
            for (const s of sockets) s.destroy();
            server.close(() => done());
          }),
      });
    });
  });
}

/** @param {string[]} argv */
function parseArgs(argv) {
  /** @type {BridgeOptions} */
  const o = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--socket') o.socket = val();
    else if (a === '--port') o.port = Number(val());
    else if (a === '--dist') o.dist = val();
    else if (a === '--token') o.token = val();
    else if (a === '-h' || a === '--help') {
      console.log('usage: node bridge/server.mjs [--socket PATH] [--port N (7780; 0 = any)] [--dist DIR] [--token T]');
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  if (o.token === undefined && process.env.BERTH_BRIDGE_TOKEN) o.token = process.env.BERTH_BRIDGE_TOKEN;
  if (o.port === undefined && process.env.BERTH_BRIDGE_PORT) o.port = Number(process.env.BERTH_BRIDGE_PORT);
  return o;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (e) {
    console.error(String(/** @type {Error} */ (e).message));
    process.exit(2);
  }
  const verbose = !!process.env.BERTH_BRIDGE_VERBOSE;
  startBridge({ ...opts, log: verbose ? (l) => console.log(l) : undefined }).then(
    (b) => {
      console.log(`berth dev bridge → ${opts.socket ?? defaultSocket()}`);
      console.log(`open ${b.url}${b.token ? `#token=${b.token}` : ''}`);
      const stop = () => b.close().then(() => process.exit(0));
      process.on('SIGINT', stop);
      process.on('SIGTERM', stop);
    },
    (e) => {
      console.error(`bridge: ${e.message}`);
      process.exit(1);
    },
  );
}
