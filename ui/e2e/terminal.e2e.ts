// The exec terminal and the logs' ANSI colours, in headless chromium through the dev bridge
// (its exec WebSocket) against a real berthd and the fixture registry. Screenshot:
// docs/screenshots/container-terminal.png.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Browser, Page } from 'playwright-core';
import type { Bridge } from '../bridge/server.mjs';
import { Berthd, bridgeFor, openApp, reportFailure, engineCall, fixtures, launchBrowser, screenshotDir } from './harness';

let berthd: Berthd;
let bridge: Bridge;
let browser: Browser;
let page: Page;
let image: string;
let running = '';
let stopped = '';
let noShell = '';
const consoleErrors: string[] = [];

const WAIT = { timeout: 30_000 };

/** The terminal's whole buffer, read from xterm through the page. */
function terminalText(): Promise<string> {
  return page.evaluate(() => {
    const el = document.querySelector('[data-testid="terminal"]') as (HTMLElement & { xterm?: { buffer: { active: { length: number; getLine(i: number): { translateToString(trim: boolean): string } | undefined } } } }) | null;
    const buf = el?.xterm?.buffer.active;
    if (!buf) return '';
    const out: string[] = [];
    for (let i = 0; i < buf.length; i++) out.push(buf.getLine(i)?.translateToString(true) ?? '');
    return out.join('\n');
  });
}

async function create(name: string, cmd: string[]): Promise<string> {
  const made = await engineCall(berthd.socket, 'POST', `/containers/create?name=${name}`, { Image: image, Cmd: cmd });
  expect(made.status, made.body).toBe(201);
  return made.json().Id as string;
}

beforeAll(async () => {
  const fx = fixtures();
  image = `${fx.BERTH_FIX_OPEN}/berth/busybox:latest`;
  berthd = new Berthd();
  await berthd.start();
  const pulled = await engineCall(berthd.socket, 'POST', `/images/create?fromImage=${encodeURIComponent(`${fx.BERTH_FIX_OPEN}/berth/busybox`)}&tag=latest`);
  expect(pulled.status, pulled.body).toBe(200);
  // Coloured output (red, then a bold 256-colour word and truecolor), then it idles.
  running = await create('e2e-term', [
    'sh',
    '-c',
    `trap "exit 0" TERM; printf '\\033[31mred\\033[0m plain \\033[1;38;5;208morange\\033[0m \\033[38;2;10;200;30mtrue\\033[0m\\n'; echo '<b>not bold</b>'; while true; do sleep 1; done`,
  ]);
  const started = await engineCall(berthd.socket, 'POST', `/containers/${running}/start`);
  expect(started.status, started.body).toBe(204);
  stopped = await create('e2e-term-stopped', ['true']);
  // A running container without /bin/sh: the exec fails.
  noShell = await create('e2e-term-noshell', ['sh', '-c', 'rm /bin/sh; trap "exit 0" TERM; while true; do sleep 1; done']);
  expect((await engineCall(berthd.socket, 'POST', `/containers/${noShell}/start`)).status).toBe(204);
  bridge = await bridgeFor(berthd);
  browser = await launchBrowser();
  page = await openApp(browser, bridge, consoleErrors);
});

afterEach(async (ctx) => {
  if (ctx.task.result?.state === 'fail') await reportFailure(ctx.task.name, page, berthd);
});

afterAll(async () => {
  await browser?.close();
  await bridge?.close();
  await berthd?.stop();
});

describe('the container terminal and coloured logs', () => {
  it('shows ANSI colours in the logs as styled spans, markup as text, and still filters', async () => {
    await page.goto(`${bridge.url}#/containers/${running}/logs`);
    const log = page.getByTestId('log');
    await log.getByText('plain', { exact: false }).first().waitFor(WAIT);
    const red = log.locator('span', { hasText: /^red$/ });
    expect(await red.evaluate((e) => getComputedStyle(e).color)).toBe('rgb(208, 49, 45)');
    const orange = log.locator('span', { hasText: /^orange$/ });
    expect(await orange.evaluate((e) => [getComputedStyle(e).color, getComputedStyle(e).fontWeight])).toEqual(['rgb(255, 135, 0)', '700']);
    expect(await log.locator('span', { hasText: /^true$/ }).evaluate((e) => getComputedStyle(e).color)).toBe('rgb(10, 200, 30)');
    // No escape characters left, and the HTML in the log is text.
    const text = (await log.textContent()) ?? '';
    expect(text).toContain('red plain orange true');
    expect(text).not.toContain('\x1b');
    expect(text).not.toContain('[31m');
    expect(await log.locator('b').count()).toBe(0);
    await log.getByText('<b>not bold</b>').waitFor(WAIT);
    // The filter searches the text without the escapes.
    await page.getByLabel('Search the log').fill('red plain');
    await expect.poll(() => log.locator('.line').count(), WAIT).toBe(1);
    await page.getByLabel('Search the log').fill('');
    fs.mkdirSync(screenshotDir, { recursive: true });
    await page.screenshot({ path: path.join(screenshotDir, 'container-logs-colours.png') });
  });

  it('opens a shell in the Terminal tab: typed input runs, its output is in the terminal', async () => {
    await page.getByRole('tab', { name: 'Terminal' }).click();
    await expect.poll(() => page.getByTestId('terminal-status').textContent(), WAIT).toContain('in the container');
    // The keyboard goes to the terminal (xterm's hidden textarea) without a click.
    await expect.poll(() => page.evaluate(() => !!document.activeElement?.closest('[data-testid="terminal"]')), WAIT).toBe(true);
    await expect.poll(terminalText, WAIT).toMatch(/[#$] ?$/m); // the prompt
    await page.keyboard.type('echo berth-$((6*7))');
    await page.keyboard.press('Enter');
    await expect.poll(terminalText, WAIT).toContain('berth-42');
    expect(await terminalText()).toContain('echo berth-$((6*7))');
    // The terminal got the page's size (resize), so a full-width line does not wrap early.
    await page.keyboard.type('stty size');
    await page.keyboard.press('Enter');
    const size = await page.evaluate(() => {
      const el = document.querySelector('[data-testid="terminal"]') as HTMLElement & { xterm?: { rows: number; cols: number } };
      return `${el.xterm?.rows} ${el.xterm?.cols}`;
    });
    await expect.poll(terminalText, WAIT).toContain(`\n${size}`);
    expect(Number(size.split(' ')[1])).toBeGreaterThan(100);
    await page.keyboard.type('ls --color=always /');
    await page.keyboard.press('Enter');
    await expect.poll(terminalText, WAIT).toContain('proc');
    fs.mkdirSync(screenshotDir, { recursive: true });
    await page.screenshot({ path: path.join(screenshotDir, 'container-terminal.png') });
    // It follows the theme: the terminal's background becomes the dark one.
    const background = () =>
      page.evaluate(() => {
        const el = document.querySelector('[data-testid="terminal"]') as HTMLElement & { xterm?: { options: { theme?: { background?: string } } } };
        return el.xterm?.options.theme?.background;
      });
    expect(await background()).toBe('#f3f4f6');
    await page.emulateMedia({ colorScheme: 'dark' });
    await expect
      .poll(background, WAIT)
      .toBe('#11141a');
    await page.emulateMedia({ colorScheme: 'light' });
  });

  it('ends the exec when the user leaves the tab', async () => {
    const exec = await page.getByTestId('terminal').getAttribute('data-exec-id');
    expect(exec).toBeTruthy();
    expect((await engineCall(berthd.socket, 'GET', `/exec/${exec}/json`)).json().Running).toBe(true);
    await page.getByRole('tab', { name: 'Logs' }).click();
    await expect.poll(async () => (await engineCall(berthd.socket, 'GET', `/exec/${exec}/json`)).json().Running, WAIT).toBe(false);
  });

  it('says so for a container that is not running', async () => {
    await page.goto(`${bridge.url}#/containers/${stopped}/terminal`);
    await expect.poll(() => page.getByTestId('terminal-message').textContent(), WAIT).toContain('not running');
    expect(await page.getByTestId('terminal').isVisible()).toBe(false);
  });

  it('says what failed when the shell cannot be started', async () => {
    await page.goto(`${bridge.url}#/containers/${noShell}/terminal`);
    await expect.poll(() => page.getByTestId('terminal-status').textContent(), WAIT).toContain('/bin/sh could not be started in this container (exit code 127)');
    // berthd's own words are in the terminal.
    expect(await terminalText()).toContain('/bin/sh');
    await page.getByRole('button', { name: 'New shell' }).waitFor(WAIT);
  });

  it('logged no errors in the page', () => {
    expect(consoleErrors).toEqual([]);
  });
});
