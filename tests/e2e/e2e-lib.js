// What the end-to-end drivers share: finding npm modules, polling, and starting the real
// inferd on a free loopback port (`--port-file`), keeping its log and stopping it.
'use strict';
const {spawn} = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');

const repo = path.resolve(__dirname, '..', '..');
const npmModules = path.join(repo, 'third_party', 'npm', 'node_modules');

// A module from NODE_PATH, else from third_party/npm (scripts/setup.sh installs it there).
function need(name) {
  try { return require(name); } catch (e) { return require(path.join(npmModules, name)); }
}

// The value after `name` on the command line, or `dflt`.
function arg(name, dflt) {
  const argv = process.argv.slice(2);
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : dflt;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what, fn, timeoutMs = 60000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

// Every inferd still running, so that a failing driver can print their logs and kill them.
const running = new Set();

// Starts `inferd` with `args` plus --port-file and resolves once the port is known (not
// ready: the model may still load). The instance: {name, proc, log, exited, port, stop()}.
async function startInferd(inferd, name, args, {stopAfterMs = 30000} = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'inferd-e2e-'));
  const portFile = path.join(dir, 'port');
  const proc = spawn(inferd, [...args, '--port-file', portFile], {stdio: ['ignore', 'pipe', 'pipe']});
  const inst = {name, proc, log: '', exited: null, port: 0};
  proc.stdout.on('data', (d) => { inst.log += d; });
  proc.stderr.on('data', (d) => { inst.log += d; });
  inst.exitPromise = new Promise((resolve) => proc.on('exit', (code, sig) => {
    inst.exited = {code, sig};
    running.delete(inst);
    resolve(inst.exited);
  }));
  running.add(inst);
  await waitFor(`${name}: port file`, () => {
    if (inst.exited) throw new Error(`${name}: inferd exited early (${JSON.stringify(inst.exited)}):\n${inst.log}`);
    try { return (inst.port = parseInt(fs.readFileSync(portFile, 'utf8'), 10)); } catch (e) { return 0; }
  });
  // SIGTERM (a graceful drain), SIGKILL if it does not end in time; resolves to {code, sig}.
  inst.stop = async () => {
    if (inst.exited) return inst.exited;
    proc.kill('SIGTERM');
    const t = setTimeout(() => proc.kill('SIGKILL'), stopAfterMs);
    const r = await inst.exitPromise;
    clearTimeout(t);
    return r;
  };
  return inst;
}

// GET `p` on the loopback port, or POST `body` as JSON; resolves to {status, body, json()}.
function httpGet(port, p, body) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const headers = data === undefined ? {} : {'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data)};
    const req = http.request({host: '127.0.0.1', port, method: data === undefined ? 'GET' : 'POST', path: p, headers},
      (res) => {
        let buf = '';
        res.setEncoding('utf8');
        res.on('data', (c) => { buf += c; });
        res.on('end', () => resolve({status: res.statusCode, body: buf, json: () => JSON.parse(buf)}));
      });
    req.on('error', reject);
    req.setTimeout(60000, () => req.destroy(new Error('http timeout')));
    if (data !== undefined) req.write(data);
    req.end();
  });
}

module.exports = {repo, npmModules, need, arg, sleep, waitFor, running, startInferd, httpGet};
