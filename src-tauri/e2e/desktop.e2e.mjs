#!/usr/bin/env node
// The real desktop app (src-tauri, debug build) driven under Xvfb through WebDriver:
// tauri-driver in front of Debian's WebKitWebDriver, talked to with fetch (no client library).
// A fresh HOME and XDG dirs, the direct backend, berthd from the same build; the fixture
// registries (BERTH_FIXTURES_ENV, else `scripts/fixtures up`). See docs/desktop.md.
//
//   node src-tauri/e2e/desktop.e2e.mjs      (scripts/test runs it)
//
// BERTH_DESKTOP_BIN (the app), BERTH_BIN_DIR (berthd), BERTH_E2E_KEEP=1 keeps the temporary
// directory (logs, a screenshot of a failure).
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '..', '..');
const cache = process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache');
const target = process.env.CARGO_TARGET_DIR ?? path.join(cache, 'berth', 'target');
const appBin = process.env.BERTH_DESKTOP_BIN ?? path.join(target, 'debug', 'berth-desktop');
const binDir = process.env.BERTH_BIN_DIR ?? path.join(target, 'debug');
const screenshot = path.join(repoRoot, 'docs', 'screenshots', 'desktop-app.png');
const WAIT = 60_000;

const began = Date.now();
const children = [];
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-desktop-e2e-'));
const dirs = {
  home: path.join(tmp, 'home'),
  run: path.join(tmp, 'run'),
  config: path.join(tmp, 'config'),
  data: path.join(tmp, 'data'),
  cache: path.join(tmp, 'cache'),
};
for (const d of Object.values(dirs)) fs.mkdirSync(d, { recursive: true, mode: 0o700 });
const socket = path.join(dirs.run, 'berth', 'berthd.sock');
const berthdLog = path.join(dirs.run, 'berth', 'berthd.log');
const settingsFile = path.join(dirs.config, 'berth', 'settings.json');
const prefsFile = path.join(dirs.config, 'berth', 'desktop.json');

function log(msg) {
  console.log(`[${((Date.now() - began) / 1000).toFixed(1)}s] ${msg}`);
}

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what, f, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await f();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await sleep(200);
  }
}

function fixtures() {
  let file = process.env.BERTH_FIXTURES_ENV;
  if (!file) {
    execFileSync(path.join(repoRoot, 'scripts', 'fixtures'), ['up'], { stdio: ['ignore', 'ignore', 'inherit'] });
    file = path.join(process.env.BERTH_FIXTURES_DIR ?? path.join(cache, 'berth', 'fixtures'), 'env');
  }
  const out = {};
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const m = /^([A-Z0-9_]+)=(.*)$/.exec(line.trim());
    if (m) out[m[1]] = m[2].replace(/^['"]|['"]$/g, '');
  }
  return out;
}

/** One request to berthd's socket, straight. */
function engine(method, p, body) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request(
      {
        socketPath: socket,
        method,
        path: p,
        headers: { Host: 'berthd', ...(data ? { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) } : {}) },
      },
      (res) => {
        const parts = [];
        res.on('data', (c) => parts.push(c));
        res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(parts).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.setTimeout(120_000, () => req.destroy(new Error(`${method} ${p}: timed out`)));
    if (data) req.write(data);
    req.end();
  });
}

const pingOk = () => engine('GET', '/_ping').then((r) => r.status === 200 && r.body === 'OK', () => false);

function start(cmd, args, opts, name) {
  const out = fs.openSync(path.join(tmp, `${name}.log`), 'a');
  const child = spawn(cmd, args, { stdio: ['ignore', out, out], ...opts });
  children.push(child);
  return child;
}

/** Xvfb on a display it picks itself (-displayfd). */
async function startXvfb() {
  const child = spawn('Xvfb', ['-displayfd', '3', '-screen', '0', '1280x860x24', '-nolisten', 'tcp'], {
    stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
  });
  children.push(child);
  let text = '';
  return waitFor('Xvfb', () => {
    const chunk = child.stdio[3].read();
    if (chunk) text += chunk.toString();
    return /\d+\n/.test(text) ? `:${text.trim()}` : null;
  }, 15_000);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = s.address().port;
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

// ---- a minimal WebDriver client ----
let base = '';
let session = '';
const ELEMENT = 'element-6066-11e4-a52f-4a5410ee9d8b';

async function wd(method, p, body) {
  const r = await fetch(`${base}${p}`, {
    method,
    headers: body === undefined ? {} : { 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const j = await r.json().catch(() => ({}));
  if (!r.ok || (j.value && j.value.error)) throw new Error(`${method} ${p}: ${r.status} ${JSON.stringify(j.value ?? j).slice(0, 400)}`);
  return j.value;
}
const s = (p) => `/session/${session}${p}`;
const exec = (script, args = []) => wd('POST', s('/execute/sync'), { script, args });
const execAsync = (script, args = []) => wd('POST', s('/execute/async'), { script, args });
/** The app's own command, through the page's IPC. */
const invoke = (cmd, args = {}) =>
  execAsync(
    'const done = arguments[arguments.length - 1];' +
      'window.__TAURI_INTERNALS__.invoke(arguments[0], arguments[1]).then((v) => done({ ok: v }), (e) => done({ err: e }));',
    [cmd, args],
  ).then((r) => {
    if (r && 'err' in r) throw new Error(`${cmd}: ${JSON.stringify(r.err)}`);
    return r?.ok;
  });
const elementId = (v) => v?.[ELEMENT] ?? v?.ELEMENT ?? (v && Object.values(v)[0]);
async function find(css) {
  return elementId(await wd('POST', s('/element'), { using: 'css selector', value: css }));
}
const click = async (css) => wd('POST', s(`/element/${await find(css)}/click`), {});
async function type(css, text) {
  const el = await find(css);
  await wd('POST', s(`/element/${el}/clear`), {});
  await wd('POST', s(`/element/${el}/value`), { text });
}
const bodyText = () => exec('return document.body.innerText');
const frames = () => execAsync('const done = arguments[0]; requestAnimationFrame(() => requestAnimationFrame(() => done(true)));');

async function main() {
  const fx = fixtures();
  const open = fx.BERTH_FIX_OPEN;
  const image = `${open}/berth/busybox`;
  check(fs.existsSync(appBin), `the app at ${appBin} (cargo build in src-tauri/)`);
  check(fs.existsSync(path.join(binDir, 'berthd')), `berthd in ${binDir} (cargo build -p berth-agent)`);

  const display = await startXvfb();
  log(`Xvfb on ${display}`);
  const env = {
    ...process.env,
    HOME: dirs.home,
    XDG_RUNTIME_DIR: dirs.run,
    XDG_CONFIG_HOME: dirs.config,
    XDG_DATA_HOME: dirs.data,
    XDG_CACHE_HOME: dirs.cache,
    DISPLAY: display,
    BERTH_BACKEND: 'direct',
    BERTH_BERTHD: path.join(binDir, 'berthd'),
    NO_AT_BRIDGE: '1',
  };
  for (const k of ['BERTH_SOCKET', 'BERTH_SETTINGS', 'BERTH_DATA_ROOT', 'BERTH_DESKTOP_PREFS', 'WAYLAND_DISPLAY']) delete env[k];
  // A session bus of its own: the single-instance plugin (and the tray) live on D-Bus.
  let dbus = false;
  try {
    execFileSync('sh', ['-c', 'command -v dbus-daemon'], { stdio: 'ignore' });
    const bus = path.join(tmp, 'bus');
    start('dbus-daemon', ['--session', '--nofork', `--address=unix:path=${bus}`], { env }, 'dbus');
    await waitFor('the session bus', () => fs.existsSync(bus), 10_000);
    env.DBUS_SESSION_BUS_ADDRESS = `unix:path=${bus}`;
    dbus = true;
  } catch {
    log('no dbus-daemon: the single-instance check is skipped');
  }

  const port = await freePort();
  const nativePort = await freePort();
  start('tauri-driver', ['--port', String(port), '--native-port', String(nativePort)], { env }, 'tauri-driver');
  base = `http://127.0.0.1:${port}`;
  await waitFor('tauri-driver', () => fetch(`${base}/status`).then((r) => r.ok), 20_000);

  // 1. The app launches and starts berthd: the splash, then the dashboard.
  const t0 = Date.now();
  const created = await wd('POST', '/session', {
    capabilities: { alwaysMatch: { browserName: 'wry', 'tauri:options': { application: appBin } } },
  });
  session = created.sessionId;
  log(`session ${session} (app up in ${Date.now() - t0} ms)`);
  await waitFor('berthd answering at the socket the app chose', pingOk);
  log(`berthd answers at ${socket} (${Date.now() - t0} ms after launch)`);
  await waitFor('the dashboard', () => exec("return !!document.querySelector('nav[aria-label=\"Main\"]')"));
  const st = await invoke('engine_status');
  check(st.state === 'running', `engine_status running: ${JSON.stringify(st)}`);
  check(st.backend === 'direct' && st.socket === socket, `direct backend on ${socket}: ${JSON.stringify(st)}`);
  await waitFor('live updates (GET /events through engine_stream)', async () =>
    (await exec("return document.querySelector('[data-testid=live-status]')?.textContent ?? ''")).includes('Live'),
  );
  log(`engine ${st.state}: ${st.message}`);

  // 2. An image pulled and a container made straight through the socket.
  const pull = await engine('POST', `/images/create?fromImage=${encodeURIComponent(image)}&tag=latest`);
  check(pull.status === 200 && !pull.body.includes('"error"'), `pull: ${pull.status} ${pull.body.slice(-300)}`);
  const made = await engine('POST', '/containers/create?name=desktop-e2e', { Image: `${image}:latest`, Cmd: ['sleep', '600'] });
  check(made.status === 201, `create: ${made.status} ${made.body}`);
  const id = JSON.parse(made.body).Id;
  const started = await engine('POST', `/containers/${id}/start`);
  check(started.status === 204, `start: ${started.status} ${started.body}`);
  log('pulled and started a container through the socket');

  // 3. Images and Containers in the app (live, no reload).
  await click('nav[aria-label="Main"] a[href="#/images"]');
  await waitFor(`${image} in Images`, async () => (await bodyText()).includes(image));
  await click('nav[aria-label="Main"] a[href="#/containers"]');
  await waitFor('desktop-e2e running in Containers', async () =>
    exec(
      "const g = document.querySelector('[role=grid]'); const row = g && [...g.querySelectorAll('[role=row]')].find((r) => r.textContent.includes('desktop-e2e')); return !!row && /running/i.test(row.textContent);",
    ),
  );
  log('Images and Containers list them');

  // 3b. The container's Terminal tab: a shell through exec_start/exec_write (a Channel both
  // ways), the output read from xterm's buffer; leaving the tab ends the exec.
  await exec(`location.hash = '#/containers/${id}/terminal'`);
  await waitFor('the shell open', async () =>
    (await exec("return document.querySelector('[data-testid=terminal-status]')?.textContent ?? ''")).includes('in the container'),
  );
  const termText = () =>
    exec(
      "const b = document.querySelector('[data-testid=terminal]')?.xterm?.buffer.active; if (!b) return ''; const out = []; for (let i = 0; i < b.length; i++) out.push(b.getLine(i)?.translateToString(true) ?? ''); return out.join('\\n');",
    );
  await waitFor('the prompt', async () => /[#$] ?$/m.test(await termText()));
  const textarea = await find('[data-testid=terminal] textarea');
  await wd('POST', s(`/element/${textarea}/value`), { text: 'echo berth-$((6*7))\uE007' });
  await waitFor('berth-42 in the terminal', async () => (await termText()).includes('berth-42'));
  const execId = await exec("return document.querySelector('[data-testid=terminal]')?.dataset.execId ?? ''");
  check(!!execId, 'the exec id on the terminal');
  await exec(`location.hash = '#/containers/${id}/logs'`);
  await waitFor('the exec ended after leaving the tab', async () => {
    const r = await engine('GET', `/exec/${execId}/json`);
    return r.status === 200 && JSON.parse(r.body).Running === false;
  });
  log('a shell in the Terminal tab: berth-42, ended on leaving');

  // 4. Preferences: a Docker Hub mirror saved; berthd's settings file has it.
  await click('nav[aria-label="Main"] a[href="#/preferences/registries"]');
  await waitFor('the Docker Hub card', () => exec("return !!document.querySelector('section[data-registry=\"docker.io\"]')"));
  await click('section[data-registry="docker.io"] button[aria-label="Add a mirror for docker.io"]');
  await type('section[data-registry="docker.io"] input[aria-label="Mirror 1 of docker.io: URL"]', `http://${open}`);
  const apply = async () =>
    exec("return [...document.querySelectorAll('button')].find((b) => b.textContent.trim() === 'Apply') ?? null");
  await waitFor('Apply enabled', async () => (await exec("const b = [...document.querySelectorAll('button')].find((b) => b.textContent.trim() === 'Apply'); return !!b && !b.disabled")));
  const applyEl = elementId(await apply());
  await wd('POST', s(`/element/${applyEl}/click`), {});
  await waitFor('Saved and applied', async () =>
    (await exec("return document.querySelector('[data-testid=apply-status]')?.textContent ?? ''")).includes('Saved and applied'),
  );
  const saved = JSON.parse(fs.readFileSync(settingsFile, 'utf8'));
  const mirrors = saved.registries?.['docker.io']?.mirrors?.map((m) => m.url) ?? saved['registry-mirrors'] ?? [];
  check(mirrors.some((u) => u.replace(/\/$/, '') === `http://${open}`), `the mirror in ${settingsFile}: ${JSON.stringify(saved)}`);
  log(`mirror saved in ${settingsFile}`);

  // 5. The app's preferences: get/set, the file, start at login (an XDG autostart entry).
  const prefs = await invoke('prefs_get');
  check(prefs.keepEngineRunningOnQuit === true && prefs.theme === 'system', `default prefs: ${JSON.stringify(prefs)}`);
  await invoke('prefs_set', { value: { ...prefs, startAtLogin: true } });
  const onDisk = JSON.parse(fs.readFileSync(prefsFile, 'utf8'));
  check(onDisk.startAtLogin === true && onDisk.keepEngineRunningOnQuit === true, `prefs file: ${JSON.stringify(onDisk)}`);
  const autostart = path.join(dirs.config, 'autostart', 'berth.desktop');
  check(fs.readFileSync(autostart, 'utf8').includes('--hidden'), 'the autostart entry');
  await invoke('prefs_set', { value: { ...prefs, startAtLogin: false } });
  check(!fs.existsSync(autostart), 'the autostart entry removed');
  // The theme reaches the page's prefers-color-scheme (GTK's dark variant).
  await invoke('prefs_set', { value: { ...prefs, theme: 'dark' } });
  await waitFor('a dark page', () => exec("return matchMedia('(prefers-color-scheme: dark)').matches"), 10_000);
  await invoke('prefs_set', { value: prefs });
  await waitFor('a light page again', () => exec("return !matchMedia('(prefers-color-scheme: dark)').matches"), 10_000);
  let refused = '';
  await invoke('prefs_set', { value: { ...prefs, theme: 'blue' } }).catch((e) => (refused = e.message));
  check(refused.includes('bad_request'), `a bad theme refused: ${refused}`);
  log('preferences stored in desktop.json');

  // 6. The screenshot: Containers, the real window.
  await click('nav[aria-label="Main"] a[href="#/containers"]');
  await waitFor('the containers grid', async () => (await bodyText()).includes('desktop-e2e'));
  await frames();
  const png = await wd('GET', s('/screenshot'));
  fs.mkdirSync(path.dirname(screenshot), { recursive: true });
  fs.writeFileSync(screenshot, Buffer.from(png, 'base64'));
  log(`screenshot: ${path.relative(repoRoot, screenshot)}`);

  // 7. A second launch hands over to this one and exits.
  if (dbus) {
    const second = spawn(appBin, [], { env, stdio: 'ignore' });
    const code = await Promise.race([
      new Promise((r) => second.on('exit', (c) => r(c))),
      sleep(20_000).then(() => 'still running'),
    ]);
    if (code === 'still running') second.kill('SIGKILL');
    check(code === 0, `the second instance exited at once (got ${code})`);
    check((await invoke('engine_status')).state === 'running', 'the first instance still answers');
    log('single instance: the second launch exited');
  }

  // 8. Stop and start from the app (tray/menu actions are the same commands).
  const del = await engine('DELETE', `/containers/${id}?force=1`);
  check(del.status === 204, `delete: ${del.status} ${del.body}`);
  await invoke('engine_stop');
  await waitFor('engine stopped', async () => (await invoke('engine_status')).state === 'stopped');
  check(!(await pingOk()), 'nothing answers after Stop');
  await waitFor('the banner', () => exec("return !!document.querySelector('[data-testid=engine-banner]')"));
  await invoke('engine_start');
  await waitFor('engine running again', async () => (await invoke('engine_status')).state === 'running');
  check(await pingOk(), 'berthd answers after Start');
  log('engine stopped and started again from the app');

  // 9. Closing the app leaves berthd running (keepEngineRunningOnQuit); then stop it.
  await wd('DELETE', `/session/${session}`);
  session = '';
  await sleep(500);
  check(await pingOk(), 'berthd outlives the app');
  log('berthd outlives the app');

  // 10. A berthd that cannot start: the window says so, with the end of its log.
  const fake = path.join(tmp, 'bad-berthd');
  fs.writeFileSync(fake, '#!/bin/sh\necho "starting"\necho "Error: the settings file is not JSON: expected value at line 1" >&2\nexit 1\n', { mode: 0o755 });
  const run2 = path.join(tmp, 'run2');
  fs.mkdirSync(run2, { mode: 0o700 });
  const env2 = { ...env, XDG_RUNTIME_DIR: run2, BERTH_BERTHD: fake, XDG_CONFIG_HOME: path.join(tmp, 'config2') };
  delete env2.DBUS_SESSION_BUS_ADDRESS; // not the first app's bus: this one must not hand over
  const port2 = await freePort();
  const driver2 = start('tauri-driver', ['--port', String(port2), '--native-port', String(await freePort())], { env: env2 }, 'tauri-driver-2');
  const base1 = base;
  base = `http://127.0.0.1:${port2}`;
  try {
    await waitFor('tauri-driver (2)', () => fetch(`${base}/status`).then((r) => r.ok), 20_000);
    session = (await wd('POST', '/session', { capabilities: { alwaysMatch: { browserName: 'wry', 'tauri:options': { application: appBin } } } })).sessionId;
    await waitFor('the failed start on the splash', () =>
      exec("return document.querySelector('[data-testid=engine-splash]')?.dataset.state === 'failed'"),
    );
    const tail = await exec("return document.querySelector('[data-testid=engine-log-tail]')?.textContent ?? ''");
    check(tail.includes('the settings file is not JSON'), `the log tail on the splash: ${tail}`);
    await frames();
    fs.writeFileSync(path.join(tmp, 'splash-failed.png'), Buffer.from(await wd('GET', s('/screenshot')), 'base64'));
    const failed = await invoke('engine_status');
    check(failed.state === 'failed' && /exited before it answered/.test(failed.message), `engine_status: ${JSON.stringify(failed)}`);
    await wd('DELETE', `/session/${session}`);
    session = '';
    log('a berthd that cannot start: the splash shows its log');
  } finally {
    driver2.kill('SIGTERM');
    base = base1;
  }
}

async function cleanup(failed) {
  if (failed && session) {
    await wd('GET', s('/screenshot'))
      .then((png) => fs.writeFileSync(path.join(tmp, 'failure.png'), Buffer.from(png, 'base64')))
      .catch(() => {});
  }
  if (session) await wd('DELETE', `/session/${session}`).catch(() => {});
  // berthd runs in its own session: stop whoever serves the socket (it and its core).
  try {
    const list = JSON.parse((await engine('GET', '/containers/json?all=1')).body);
    for (const c of list) await engine('DELETE', `/containers/${c.Id}?force=1`);
  } catch {
    // not running
  }
  try {
    const pids = execFileSync('sh', ['-c', `pgrep -f -- '--socket ${socket}' || true`]).toString().split(/\s+/).filter(Boolean);
    for (const p of pids) process.kill(Number(p), 'SIGTERM');
    await waitFor('berthd gone', async () => !(await pingOk()) && !fs.existsSync(socket), 20_000).catch(() => {});
  } catch {
    // gone already
  }
  for (const c of children.reverse()) if (c.exitCode === null) c.kill('SIGTERM');
  if (failed) {
    const tail = (f) => (fs.existsSync(f) ? fs.readFileSync(f, 'utf8').split('\n').slice(-25).join('\n') : '(none)');
    console.error(`berthd log (tail):\n${tail(berthdLog)}\n\napp and drivers (tail):\n${tail(path.join(tmp, 'tauri-driver.log'))}`);
    console.error(`kept: ${tmp}`);
  } else if (!process.env.BERTH_E2E_KEEP) {
    fs.rmSync(tmp, { recursive: true, force: true, maxRetries: 3 });
  }
}

try {
  await main();
  await cleanup(false);
  log('desktop e2e: ok');
} catch (e) {
  console.error(`desktop e2e FAILED: ${e.stack ?? e}`);
  await cleanup(true);
  process.exit(1);
}
