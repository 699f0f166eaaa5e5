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

import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { fileURLToPath } from 'node:url';

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
  // Attach and exec hijack the connection; the UI does not use them yet.
  server.on('upgrade', (_req, sock) => {
    sock.end('HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\n\r\n');
  });
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
