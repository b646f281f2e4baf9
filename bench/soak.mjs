// The soak's load and its measurements (bench/soak.sh starts the processes and runs this).
//
// node bench/soak.mjs GATEWAY_URL POSTERN_PID CONFIG_FILE SECONDS
//
// For SECONDS, against a `postern serve` on loopback: sign-ins through the authorization flow
// (the sign-in form, consent, PKCE, the code exchange), refresh-token rotations, tools/call with
// the TEs, SSE streams opened and closed, and configuration reloads (the file edited, or
// SIGHUP). Every few seconds it samples the gateway's RSS, open file descriptors and store size
// (STORE_FILES: SQLite files, comma-separated; or PG_URL: the database whose tables are summed);
// at the end it prints a table, the least-squares slope per hour of each, and the requests and
// errors by kind. Exits 1 when a request failed in a way it must not, or the gateway died.
import { readFileSync, writeFileSync, readdirSync, statSync, existsSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';

const [gateway, pidText, configFile, secondsText] = process.argv.slice(2);
const pid = Number(pidText);
const seconds = Number(secondsText);
const deadline = Date.now() + seconds * 1000;
const sampleEvery = Number(process.env.SAMPLE_SECONDS ?? 5) * 1000;
const email = process.env.SOAK_EMAIL ?? 'soak@example.com';
const password = process.env.SOAK_PASSWORD ?? 'soak-password';
const redirectUri = 'http://127.0.0.1:9/callback';
// Two MCP server routes, each with its own TEs (a TE is bound to the server it was issued for).
const resources = [new URL('/mcp', gateway).href, new URL('/events', gateway).href];

const counts = new Map(); // "kind:outcome" -> n
const errors = new Map(); // "kind:what" -> n
const firstErrors = [];
const count = (key) => counts.set(key, (counts.get(key) ?? 0) + 1);
function error(kind, what, detail = '') {
  const key = `${kind}: ${what}`;
  errors.set(key, (errors.get(key) ?? 0) + 1);
  if (firstErrors.length < 20) firstErrors.push(`${new Date().toISOString()} ${key} ${detail}`.slice(0, 400));
}
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const running = () => Date.now() < deadline;
const b64url = (bytes) => Buffer.from(bytes).toString('base64url');

// ---- the user's browser: a cookie jar per sign-in, so every authorization signs in anew ----

function hiddenFields(html) {
  const fields = new URLSearchParams();
  for (const match of html.matchAll(/<input type="hidden" name="([^"]*)" value="([^"]*)">/g)) {
    fields.append(match[1], match[2].replaceAll('&amp;', '&').replaceAll('&quot;', '"').replaceAll('&#39;', "'"));
  }
  return fields;
}

async function authorize(clientId, resource) {
  const jar = new Map();
  const browse = async (url, init = {}) => {
    const headers = { ...(init.headers || {}) };
    if (jar.size) headers.cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
    const response = await fetch(url, { ...init, headers, redirect: 'manual', signal: AbortSignal.timeout(30000) });
    for (const cookie of response.headers.getSetCookie()) {
      const [pair] = cookie.split(';');
      const at = pair.indexOf('=');
      jar.set(pair.slice(0, at), pair.slice(at + 1));
    }
    return response;
  };
  const verifier = b64url(randomBytes(32));
  const start = new URL('/.pomerium/mcp/authorize', gateway);
  start.search = new URLSearchParams({
    response_type: 'code', client_id: clientId, redirect_uri: redirectUri, state: b64url(randomBytes(8)),
    code_challenge: b64url(createHash('sha256').update(verifier).digest()), code_challenge_method: 'S256', resource,
  }).toString();
  let next = start.href;
  let signedIn = false;
  for (let step = 0; step < 12; step++) {
    if (next.startsWith(redirectUri)) {
      const code = new URL(next).searchParams.get('code');
      if (!code) throw new Error(`no code in ${next}`);
      return { code, verifier, signedIn };
    }
    const response = await browse(next);
    if (response.status >= 300 && response.status < 400) {
      await response.arrayBuffer();
      next = new URL(response.headers.get('location'), next).href;
      continue;
    }
    const html = await response.text();
    if (response.status !== 200) throw new Error(`${response.status} at ${new URL(next).pathname}: ${html.slice(0, 200)}`);
    if (html.includes('name="password"')) {
      const form = hiddenFields(html);
      form.set('email', email);
      form.set('password', password);
      const posted = await browse(new URL('/.pomerium/sign_in', gateway), { method: 'POST', body: form });
      await posted.arrayBuffer();
      if (posted.status !== 303) throw new Error(`sign-in answered ${posted.status}`);
      signedIn = true;
      next = new URL(posted.headers.get('location'), gateway).href;
      continue;
    }
    if (html.includes('name="decision" value="allow"')) {
      const form = hiddenFields(html);
      form.set('decision', 'allow');
      const approved = await browse(new URL('/.pomerium/mcp/authorize', gateway), { method: 'POST', body: form });
      await approved.arrayBuffer();
      if (approved.status !== 302 && approved.status !== 303) throw new Error(`consent answered ${approved.status}`);
      next = new URL(approved.headers.get('location'), gateway).href;
      continue;
    }
    throw new Error(`unexpected page at ${new URL(next).pathname}`);
  }
  throw new Error('too many steps');
}

async function token(form) {
  const response = await fetch(new URL('/.pomerium/mcp/token', gateway), {
    method: 'POST', body: new URLSearchParams(form), signal: AbortSignal.timeout(30000),
  });
  const text = await response.text();
  return { status: response.status, text, body: response.status === 200 ? JSON.parse(text) : null };
}

// ---- the load ----

const clients = [];
const grants = []; // { clientId, resource, access, refresh, born }
const maxGrants = 8;
// A grant older than this is left to expire (the soak's mcp_refresh_token_max_ttl is longer).
const grantLife = Number(process.env.GRANT_SECONDS ?? 240) * 1000;

async function register() {
  const response = await fetch(new URL('/.pomerium/mcp/register', gateway), {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ client_name: 'postern-soak', redirect_uris: [redirectUri], grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'], token_endpoint_auth_method: 'none' }),
  });
  if (response.status !== 201) throw new Error(`registration answered ${response.status}: ${await response.text()}`);
  return (await response.json()).client_id;
}

async function signIns() {
  let n = 0;
  while (running()) {
    const clientId = clients[n % clients.length];
    const resource = resources[n++ % resources.length];
    try {
      const { code, verifier, signedIn } = await authorize(clientId, resource);
      if (!signedIn) error('sign-in', 'no sign-in form (a fresh browser must sign in)');
      const { status, text, body } = await token({ grant_type: 'authorization_code', code, code_verifier: verifier, client_id: clientId, redirect_uri: redirectUri, resource });
      if (status !== 200) error('code exchange', `HTTP ${status}`, text);
      else {
        count('sign-in + code exchange: ok');
        grants.push({ clientId, resource, access: body.access_token, refresh: body.refresh_token, born: Date.now() });
        if (grants.length > maxGrants) grants.shift();
      }
    } catch (e) {
      error('sign-in', e.message.split(':')[0], e.message);
    }
    await sleep(Number(process.env.SIGN_IN_PAUSE_MS ?? 2000));
  }
}

async function refreshes() {
  while (running()) {
    const grant = grants[Math.floor(Math.random() * grants.length)];
    if (grant && Date.now() - grant.born < grantLife && !grant.busy) {
      grant.busy = true;
      try {
        const { status, text, body } = await token({ grant_type: 'refresh_token', refresh_token: grant.refresh, client_id: grant.clientId });
        if (status === 200) {
          grant.refresh = body.refresh_token;
          grant.access = body.access_token;
          count('refresh rotation: ok');
        } else error('refresh', `HTTP ${status}`, text);
      } catch (e) {
        error('refresh', e.name, e.message);
      } finally {
        grant.busy = false;
      }
    }
    await sleep(Number(process.env.REFRESH_PAUSE_MS ?? 500));
  }
}

// A grant for the server at `path`, young enough to be refreshed on.
function grantFor(path) {
  const fresh = grants.filter((g) => Date.now() - g.born < grantLife && g.resource.endsWith(path));
  return fresh[Math.floor(Math.random() * fresh.length)];
}

async function toolCalls() {
  let id = 0;
  while (running()) {
    const grant = grantFor('/mcp');
    if (!grant) { await sleep(200); continue; }
    try {
      const response = await fetch(new URL('/mcp', gateway), {
        method: 'POST',
        headers: { authorization: `Bearer ${grant.access}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
        body: JSON.stringify({ jsonrpc: '2.0', id: ++id, method: 'tools/call', params: { name: 'test_simple_text', arguments: {} } }),
        signal: AbortSignal.timeout(30000),
      });
      const text = await response.text();
      if (response.status === 200 && text.includes('"result"')) count('tools/call: ok');
      else error('tools/call', `HTTP ${response.status}`, text);
    } catch (e) {
      error('tools/call', e.name, e.message);
    }
    await sleep(Number(process.env.TOOL_PAUSE_MS ?? 20));
  }
}

// An SSE stream held 6 to 12 s: it must answer 200 and deliver its ticks (one at once, then every
// 5 s), then the client closes it.
async function streams() {
  while (running()) {
    const grant = grantFor('/events');
    if (!grant) { await sleep(200); continue; }
    const hold = 6000 + Math.random() * 6000;
    const stop = new AbortController();
    const timer = setTimeout(() => stop.abort(), hold);
    let ticks = 0;
    try {
      const response = await fetch(new URL('/events', gateway), {
        headers: { authorization: `Bearer ${grant.access}`, accept: 'text/event-stream' }, signal: stop.signal,
      });
      if (response.status !== 200) {
        error('sse', `HTTP ${response.status}`, await response.text());
        await sleep(500);
      } else {
        const decoder = new TextDecoder();
        for await (const chunk of response.body) ticks += (decoder.decode(chunk).match(/^data: tick/gm) ?? []).length;
        error('sse', 'stream ended before the client closed it', `${ticks} ticks`);
      }
    } catch (e) {
      if (e.name !== 'AbortError') error('sse', e.name, e.message);
      else if (ticks < 2) error('sse', 'fewer than 2 ticks in 6 s or more', `${ticks} ticks`);
      else count('sse stream: ok');
    } finally {
      clearTimeout(timer);
    }
  }
}

// Every RELOAD_SECONDS, the configuration changes (a spare route comes and goes: the file
// watcher reloads it), and every other time SIGHUP forces a reload of the same file.
async function reloads() {
  const original = readFileSync(configFile, 'utf8');
  const spare = '  - {from: http://localhost, prefix: /spare, to: http://127.0.0.1:9, allow_any_authenticated_user: true}\n';
  let n = 0;
  while (running()) {
    await sleep(Number(process.env.RELOAD_SECONDS ?? 15) * 1000);
    if (!running()) break;
    n++;
    if (n % 2) writeFileSync(configFile, n % 4 === 1 ? original + spare : original);
    else process.kill(pid, 'SIGHUP');
    count(n % 2 ? 'reload: file edited' : 'reload: SIGHUP');
  }
}

// ---- the measurements ----

const samples = []; // [seconds, rss MiB, fds, store KiB]
function storeBytes() {
  if (process.env.PG_URL) {
    const sql = "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname = current_schema()";
    return Number(execFileSync('psql', [process.env.PG_URL, '-Atc', sql], { encoding: 'utf8' }).trim());
  }
  return (process.env.STORE_FILES ?? '').split(',').filter(Boolean)
    .reduce((sum, file) => sum + (existsSync(file) ? statSync(file).size : 0), 0);
}
function alive() {
  return existsSync(`/proc/${pid}/status`) && !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
}
const started = Date.now();
async function sampler() {
  while (running()) {
    if (!alive()) { error('gateway', 'the process died'); return; }
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const rss = Number(/VmRSS:\s+(\d+)/.exec(status)[1]) / 1024;
    const fds = readdirSync(`/proc/${pid}/fd`).length;
    samples.push([(Date.now() - started) / 1000, rss, fds, storeBytes() / 1024]);
    await sleep(sampleEvery);
  }
}

// Least-squares slope of y over x (per second).
function slope(points) {
  const n = points.length;
  if (n < 2) return NaN;
  const mx = points.reduce((s, [x]) => s + x, 0) / n;
  const my = points.reduce((s, [, y]) => s + y, 0) / n;
  const sxy = points.reduce((s, [x, y]) => s + (x - mx) * (y - my), 0);
  const sxx = points.reduce((s, [x]) => s + (x - mx) ** 2, 0);
  return sxx ? sxy / sxx : NaN;
}

// ---- the run ----

for (let i = 0; i < 4; i++) clients.push(await register());
const workers = [sampler(), signIns(), refreshes(), reloads()];
const toolWorkers = Number(process.env.TOOL_WORKERS ?? 4);
const streamWorkers = Number(process.env.STREAM_WORKERS ?? 20);
for (let i = 0; i < toolWorkers; i++) workers.push(toolCalls());
for (let i = 0; i < streamWorkers; i++) workers.push(streams());
await Promise.all(workers);
if (!alive()) error('gateway', 'the process died');

const store = process.env.PG_URL ? 'PostgreSQL tables' : 'SQLite files';
console.log(`\nsoak: ${seconds} s against ${gateway} (${store}), sampled every ${sampleEvery / 1000} s`);
console.log(`${'t (s)'.padStart(7)} ${'RSS MiB'.padStart(9)} ${'fds'.padStart(5)} ${'store KiB'.padStart(10)}`);
const step = Math.max(1, Math.ceil(samples.length / 40));
samples.forEach((s, i) => {
  if (i % step === 0 || i === samples.length - 1) {
    console.log(`${s[0].toFixed(0).padStart(7)} ${s[1].toFixed(1).padStart(9)} ${String(s[2]).padStart(5)} ${s[3].toFixed(0).padStart(10)}`);
  }
});
// The first minute is warm-up (pools, caches, the first sign-ins): the slopes are over the rest
// when the run is long enough.
const steady = samples.filter(([t]) => t >= 60).length >= 10 ? samples.filter(([t]) => t >= 60) : samples;
const perHour = (column) => slope(steady.map((s) => [s[0], s[column]])) * 3600;
console.log(`slope per hour (least squares, from t=${steady[0]?.[0].toFixed(0)} s): RSS ${perHour(1).toFixed(1)} MiB/h, fds ${perHour(2).toFixed(1)}/h, store ${perHour(3).toFixed(0)} KiB/h`);
// Expired rows are collected every 5 minutes and the soak's grants live up to 10: the store
// levels off after about 15 minutes. The second half shows whether it did. RSS jumps by ~19 MiB
// while a sign-in hashes its password, so the lowest RSS of each minute is the baseline.
const half = samples.filter(([t]) => t >= samples.at(-1)[0] / 2);
const halfSlope = (column) => slope(half.map((s) => [s[0], s[column]])) * 3600;
const floors = [...Map.groupBy(half, ([t]) => Math.floor(t / 60)).values()].map((group) => [group[0][0], Math.min(...group.map((s) => s[1]))]);
console.log(`second half (from t=${half[0]?.[0].toFixed(0)} s): RSS ${halfSlope(1).toFixed(1)} MiB/h (lowest of each minute: ${(slope(floors) * 3600).toFixed(1)} MiB/h, ${floors[0]?.[1].toFixed(1)} -> ${floors.at(-1)?.[1].toFixed(1)} MiB), fds ${halfSlope(2).toFixed(1)}/h, store ${halfSlope(3).toFixed(0)} KiB/h`);
console.log('\nrequests by kind:');
for (const [key, n] of [...counts].sort()) console.log(`  ${key}: ${n}`);
console.log(`errors by kind: ${errors.size ? '' : 'none'}`);
for (const [key, n] of [...errors].sort()) console.log(`  ${key}: ${n}`);
for (const line of firstErrors) console.log(`  first: ${line}`);
const must = ['sign-in + code exchange: ok', 'refresh rotation: ok', 'tools/call: ok', 'sse stream: ok'];
const missing = must.filter((key) => !counts.get(key));
if (missing.length) console.log(`nothing succeeded for: ${missing.join(', ')}`);
process.exit(errors.size || missing.length ? 1 : 0);
