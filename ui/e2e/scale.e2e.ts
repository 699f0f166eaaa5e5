// The lists at scale: 1,000 containers and 500 images from a stand-in engine (a Node server on
// a Unix socket that answers the few Docker API calls the lists make, and an event stream the
// test writes to). Measures what issue 6 asks: time from an event to its painted row, the
// page's idle CPU and memory; and checks that the list stays windowed and keyboard-navigable.
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser, Page } from 'playwright-core';
import { startBridge, type Bridge } from '../bridge/server.mjs';
import { launchBrowser, uiDir } from './harness';

const N_CONTAINERS = 1000;
const N_IMAGES = 500;

function container(i: number, created: number) {
  const id = i.toString(16).padStart(8, '0').repeat(8);
  return {
    Id: id,
    Names: [`/svc-${i}`],
    Image: `registry.example/team/app-${i % 37}:v${i % 5}`,
    ImageID: `sha256:${(i % N_IMAGES).toString(16).padStart(64, '0')}`,
    Command: 'sleep infinity',
    Created: created,
    State: i % 3 ? 'running' : 'exited',
    Status: i % 3 ? 'Up 2 hours' : 'Exited (0) 1 hour ago',
    Ports: i % 4 ? [] : [{ IP: '127.0.0.1', PrivatePort: 80, PublicPort: 20000 + i, Type: 'tcp' }],
    Labels: {},
  };
}

class FakeEngine {
  readonly dir = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-ui-scale-'));
  readonly socket = path.join(this.dir, 'engine.sock');
  readonly containers = new Map<string, ReturnType<typeof container>>();
  private streams = new Set<http.ServerResponse>();
  private server = http.createServer((req, res) => this.handle(req, res));

  constructor() {
    const now = Math.floor(Date.now() / 1000);
    for (let i = 0; i < N_CONTAINERS; i++) {
      const c = container(i, now - 3600 - i * 60);
      this.containers.set(c.Id, c);
    }
  }

  listen(): Promise<void> {
    return new Promise((r) => this.server.listen(this.socket, () => r()));
  }

  get eventStreams(): number {
    return this.streams.size;
  }

  event(id: string, action: string) {
    const line = JSON.stringify({ Type: 'container', Action: action, Actor: { ID: id, Attributes: {} }, scope: 'local', time: Math.floor(Date.now() / 1000), timeNano: Date.now() * 1e6 }) + '\n';
    for (const s of this.streams) s.write(line);
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse) {
    const url = new URL(req.url ?? '/', 'http://engine');
    const json = (v: unknown) => {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(v));
    };
    if (url.pathname === '/events') {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.flushHeaders();
      this.streams.add(res);
      res.on('close', () => this.streams.delete(res));
      return;
    }
    if (url.pathname === '/containers/json') {
      const f = url.searchParams.get('filters');
      const ids: string[] | undefined = f ? JSON.parse(f).id : undefined;
      const all = [...this.containers.values()];
      return json(ids ? all.filter((c) => ids.some((id) => c.Id.startsWith(id))) : all);
    }
    if (url.pathname === '/images/json') {
      return json(
        Array.from({ length: N_IMAGES }, (_, i) => ({
          Id: `sha256:${i.toString(16).padStart(64, '0')}`,
          RepoTags: [`registry.example/team/app-${i}:v1`],
          RepoDigests: [],
          Created: 1_700_000_000 - i * 1000,
          Size: 5_000_000 + i * 12345,
          Containers: -1,
        })),
      );
    }
    if (url.pathname === '/berth/v1/engine') return json({ Backend: 'fake', State: 'running', Core: { Version: 1 } });
    res.writeHead(404, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ message: `not in the stand-in engine: ${req.method} ${url.pathname}` }));
  }

  close(): Promise<void> {
    for (const s of this.streams) s.destroy();
    return new Promise((r) =>
      this.server.close(() => {
        fs.rmSync(this.dir, { recursive: true, force: true });
        r();
      }),
    );
  }
}

let engine: FakeEngine;
let bridge: Bridge;
let browser: Browser;
let page: Page;

beforeAll(async () => {
  engine = new FakeEngine();
  await engine.listen();
  bridge = await startBridge({ socket: engine.socket, port: 0, dist: path.join(uiDir, 'dist') });
  browser = await launchBrowser();
  page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
  await page.goto(`${bridge.url}#token=${bridge.token}`);
  await page.getByTestId('container-count').getByText(`${N_CONTAINERS} total`).waitFor({ timeout: 30_000 });
  await page.getByTestId('live-status').getByText('Live').waitFor({ timeout: 10_000 });
});

afterAll(async () => {
  await browser?.close();
  await bridge?.close();
  await engine?.close();
});

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

describe(`${N_CONTAINERS} containers`, () => {
  it('renders only the rows in view, and the keyboard reaches the last one', async () => {
    const rows = await page.locator('[role="grid"] [role="row"][aria-rowindex]').count();
    expect(rows).toBeLessThan(60);
    const grid = page.getByRole('grid', { name: /^Containers/ });
    await grid.focus();
    await page.keyboard.press('End');
    const active = await grid.getAttribute('aria-activedescendant');
    expect(active).toBe(`row-${[...engine.containers.values()].at(-1)?.Id}`);
    await page.locator(`[id="${active}"]`).waitFor({ state: 'visible' });
    await page.keyboard.press('Home');
  });

  it('paints a row for a new container soon after its event (figures in the log)', async () => {
    const times: number[] = [];
    for (let k = 0; k < 20; k++) {
      const c = container(N_CONTAINERS + k, Math.floor(Date.now() / 1000) + k);
      c.Names = [`/bench-${k}`];
      engine.containers.set(c.Id, c);
      const t0 = performance.now();
      engine.event(c.Id, 'create');
      await page.waitForFunction((name) => !!Array.from(document.querySelectorAll('a.name')).find((a) => a.textContent === name), `bench-${k}`, {
        polling: 'raf',
        timeout: 10_000,
      });
      times.push(performance.now() - t0);
    }
    const m = median(times);
    console.log(`event → painted row, ${N_CONTAINERS} containers: median ${m.toFixed(1)} ms, max ${Math.max(...times).toFixed(1)} ms (20 events)`);
    expect(m).toBeLessThan(500);
  });

  it('filters 1,000 rows as you type', async () => {
    const t0 = performance.now();
    await page.getByLabel('Search containers').fill('svc-99');
    await page.getByTestId('container-count').waitFor();
    await page.waitForFunction(() => document.querySelectorAll('[role="grid"] [role="row"][aria-rowindex]').length <= 12, null, { polling: 'raf' });
    console.log(`search over ${N_CONTAINERS} containers: ${(performance.now() - t0).toFixed(1)} ms to the filtered list`);
    await page.getByLabel('Search containers').fill('');
    // The state filter from the keyboard: one Tab stop, arrows choose.
    await page.getByRole('radio', { name: 'All' }).focus();
    await page.keyboard.press('ArrowRight');
    expect(await page.getByRole('radio', { name: 'Running' }).getAttribute('aria-checked')).toBe('true');
    expect(await page.evaluate(() => document.activeElement?.textContent)).toBe('Running');
    const grid = page.getByRole('grid', { name: /^Containers/ });
    await expect.poll(() => grid.getAttribute('aria-rowcount')).toBe(String(1 + [...engine.containers.values()].filter((c) => c.State === 'running').length));
    await page.keyboard.press('ArrowLeft');
    expect(await page.getByRole('radio', { name: 'All' }).getAttribute('aria-checked')).toBe('true');
  });

  it('idles at ~0 CPU with the event stream open (figures in the log)', async () => {
    const cdp = await page.context().newCDPSession(page);
    await cdp.send('Performance.enable');
    await new Promise((r) => setTimeout(r, 1000));
    const metric = async () => {
      const { metrics } = await cdp.send('Performance.getMetrics');
      return Object.fromEntries(metrics.map((m: { name: string; value: number }) => [m.name, m.value]));
    };
    const a = await metric();
    const seconds = 5;
    await new Promise((r) => setTimeout(r, seconds * 1000));
    const b = await metric();
    const busy = b.TaskDuration - a.TaskDuration;
    const heapMb = b.JSHeapUsedSize / 1e6;
    const elements = await page.evaluate(() => document.querySelectorAll('*').length);
    console.log(
      `idle over ${seconds} s: ${((busy / seconds) * 100).toFixed(2)} % of a core in the page's main thread; JS heap ${heapMb.toFixed(1)} MB; ${elements} elements in the document`,
    );
    expect(busy / seconds).toBeLessThan(0.02);
    expect(engine.eventStreams).toBe(1);
  });

  it('lists 500 images', async () => {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Images' }).click();
    await page.getByTestId('image-count').getByText(`${N_IMAGES} images`).waitFor({ timeout: 10_000 });
    expect(await page.locator('[role="grid"] [role="row"][aria-rowindex]').count()).toBeLessThan(60);
  });
});
