// What the end-to-end tests run against: the fixture registries, a real berthd in a temporary
// directory (as crates/agent/tests/harness does it), the dev bridge, and Debian's chromium.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Page } from 'playwright-core';
import { startBridge, type Bridge } from '../bridge/server.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
export const uiDir = path.resolve(here, '..');
export const repoRoot = path.resolve(uiDir, '..');
export const screenshotDir = path.join(repoRoot, 'docs', 'screenshots');

/** The fixture env (BERTH_FIX_*): `scripts/fixtures up` when it was not given. */
export function fixtures(): Record<string, string> {
  let file = process.env.BERTH_FIXTURES_ENV;
  if (!file) {
    execFileSync(path.join(repoRoot, 'scripts', 'fixtures'), ['up'], { stdio: ['ignore', 'ignore', 'inherit'] });
    const dir = process.env.BERTH_FIXTURES_DIR ?? path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'berth', 'fixtures');
    file = path.join(dir, 'env');
  }
  const out: Record<string, string> = {};
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const m = /^([A-Z0-9_]+)=(.*)$/.exec(line.trim());
    if (m) out[m[1]] = m[2].replace(/^['"]|['"]$/g, '');
  }
  return out;
}

export function binDir(): string {
  if (process.env.BERTH_BIN_DIR) return process.env.BERTH_BIN_DIR;
  const target = process.env.CARGO_TARGET_DIR ?? path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'berth', 'target');
  return path.join(target, 'debug');
}

export interface EngineReply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
  json: () => any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

/** One request to berthd's socket, straight (not through the UI or the bridge). */
export function engineCall(socket: string, method: string, p: string, body?: unknown, headers: Record<string, string> = {}): Promise<EngineReply> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request(
      {
        socketPath: socket,
        method,
        path: p,
        headers: { Host: 'berthd', ...(data ? { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) } : {}), ...headers },
      },
      (res) => {
        const parts: Buffer[] = [];
        res.on('data', (c: Buffer) => parts.push(c));
        res.on('end', () => {
          const text = Buffer.concat(parts).toString('utf8');
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text, json: () => JSON.parse(text) });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.setTimeout(60_000, () => req.destroy(new Error(`${method} ${p}: timed out`)));
    if (data) req.write(data);
    req.end();
  });
}

export class Berthd {
  readonly dir: string;
  readonly socket: string;
  readonly log: string;
  private child: ChildProcess | null = null;

  constructor() {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-ui-e2e-'));
    this.socket = path.join(this.dir, 'berthd.sock');
    this.log = path.join(this.dir, 'berthd.log');
  }

  async start(): Promise<void> {
    const bin = binDir();
    const berthd = path.join(bin, 'berthd');
    if (!fs.existsSync(berthd)) throw new Error(`no berthd at ${berthd}: build it (cargo build -p berth-agent) or set BERTH_BIN_DIR`);
    const out = fs.openSync(this.log, 'a');
    this.child = spawn(
      berthd,
      ['--socket', this.socket, '--data-root', path.join(this.dir, 'data'), '--core-binary', path.join(bin, 'berth-core')],
      {
        stdio: ['ignore', out, out],
        env: { ...process.env, BERTH_LOG: 'info,berth_agent=debug', BERTH_SETTINGS: path.join(this.dir, 'settings.json') },
      },
    );
    const deadline = Date.now() + 60_000;
    for (;;) {
      if (this.child.exitCode !== null) throw new Error(`berthd exited at start (${this.child.exitCode}):\n${this.tail()}`);
      try {
        const r = await engineCall(this.socket, 'GET', '/_ping');
        if (r.status === 200) return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`berthd did not answer within 60 s:\n${this.tail()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  tail(lines = 40): string {
    try {
      return fs.readFileSync(this.log, 'utf8').split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  }

  /** Removes every container (their shims outlive berthd), stops berthd, removes the directory. */
  async stop(): Promise<void> {
    if (this.child && this.child.exitCode === null) {
      try {
        const list = (await engineCall(this.socket, 'GET', '/containers/json?all=1')).json() as { Id: string }[];
        for (const c of list) await engineCall(this.socket, 'DELETE', `/containers/${c.Id}?force=1`);
      } catch {
        // berthd is in trouble; stop it anyway
      }
      const exited = new Promise<void>((r) => this.child?.once('exit', () => r()));
      this.child.kill('SIGTERM');
      const timer = setTimeout(() => this.child?.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(timer);
    }
    if (!process.env.BERTH_E2E_KEEP) fs.rmSync(this.dir, { recursive: true, force: true, maxRetries: 3 });
  }
}

export async function launchBrowser(): Promise<Browser> {
  const executablePath = process.env.BERTH_CHROMIUM ?? '/usr/bin/chromium';
  if (!fs.existsSync(executablePath)) throw new Error(`no chromium at ${executablePath}: apt-get install chromium (or set BERTH_CHROMIUM)`);
  const args = ['--disable-gpu', '--disable-dev-shm-usage', '--no-first-run', '--password-store=basic', '--disable-features=Translate'];
  // Chromium refuses to run its sandbox as root (CI containers).
  if (process.getuid?.() === 0) args.push('--no-sandbox');
  return chromium.launch({ executablePath, headless: true, args });
}

/** Collects the page's console errors and uncaught exceptions (and with `http`, 4xx/5xx answers). */
export function collectErrors(page: Page, into: string[], http = false): void {
  page.on('console', (m) => {
    if (m.type() === 'error') into.push(m.text());
  });
  page.on('pageerror', (e) => into.push(String(e)));
  if (http) {
    page.on('response', (r) => {
      if (r.status() >= 400) into.push(`HTTP ${r.status()} for ${r.request().method()} ${new URL(r.url()).pathname}`);
    });
  }
}

/**
 * A page of the UI served by `bridge`, signed in with its token, once the main navigation
 * shows; its errors are collected into `errors` (with `http`, 4xx/5xx answers too).
 */
export async function openApp(browser: Browser, bridge: Bridge, errors: string[], http = false): Promise<Page> {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 760 }, colorScheme: 'light', deviceScaleFactor: 1 });
  const page = await ctx.newPage();
  collectErrors(page, errors, http);
  await page.goto(`${bridge.url}#token=${bridge.token}`);
  await page.getByRole('navigation', { name: 'Main' }).waitFor();
  return page;
}

/** After a failed test: a picture of the page in berthd's directory and berthd's log tail. */
export async function reportFailure(name: string, page: Page | undefined, berthd: Berthd): Promise<void> {
  if (!page) return;
  const file = path.join(berthd.dir, `failed-${name.replace(/\W+/g, '-').slice(0, 60)}.png`);
  await page.screenshot({ path: file }).catch(() => {});
  console.error(`screenshot of the failure: ${file}\nberthd log (tail):\n${berthd.tail(25)}`);
}

export async function bridgeFor(berthd: Berthd): Promise<Bridge> {
  return startBridge({ socket: berthd.socket, port: 0, dist: path.join(uiDir, 'dist') });
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = http.createServer();
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}
