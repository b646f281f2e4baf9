// One URL for all your tools: the official MCP TypeScript SDK as a client of an aggregating route
// (aggregate.sh sets it up), through the full OAuth flow (discovery, registration, sign-in,
// consent, PKCE, token), then:
// - tools/list shows exactly the tools Ada could call on each member's own URL, prefixed: not
//   sqlite's describe_table (an mcp_tool deny rule on the sqlite route), nothing of the admin
//   member (its policy refuses her); calling those through the aggregate is refused too;
// - one tool of each member answers through the one URL; whoami shows the member got her identity;
// - notion before she connected her Notion account: a tool error that carries the connect URL;
//   this script follows that URL as her browser would (confirm, the provider's consent), and the
//   same call then returns her Notion results;
// - the sqlite member's process is stopped (SQLITE_PID): its tool answers a clear tool error
//   naming it (but not its internal address), the other members still answer, and tools/list
//   says sqlite is missing.
//
// With EXPECT_REFUSED set, only checks that EMAIL, whom the aggregate's policy refuses, gets no
// authorization.
//
// node aggregate-client.mjs GATEWAY_URL EMAIL PASSWORD AGGREGATE_PATH
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';
import { userAgent } from './browser.mjs';

const [gateway, email, password, aggregatePath] = process.argv.slice(2);
const redirectUrl = 'http://127.0.0.1:33419/callback';
const state = {};
const provider = {
  get redirectUrl() { return redirectUrl; },
  get clientMetadata() {
    return {
      client_name: 'postern-aggregate-client',
      redirect_uris: [redirectUrl],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    };
  },
  clientInformation() { return state.client; },
  saveClientInformation(info) { state.client = info; },
  tokens() { return state.tokens; },
  saveTokens(tokens) { state.tokens = tokens; },
  redirectToAuthorization(url) { state.authorizationUrl = url; },
  saveCodeVerifier(verifier) { state.verifier = verifier; },
  codeVerifier() { return state.verifier; },
};
const check = (ok, message) => { if (!ok) throw new Error(message); };
const show = (value) => JSON.stringify(value).slice(0, 600);

// The OAuth flow, as client.mjs runs it against a single server.
const url = new URL(aggregatePath, gateway);
try {
  await new Client({ name: 'postern-aggregate', version: '1.0.0' })
    .connect(new StreamableHTTPClientTransport(url, { authProvider: provider }));
  throw new Error('the aggregate let an unauthenticated client in');
} catch (error) {
  if (!(error instanceof UnauthorizedError)) throw error;
}
check(new URL(state.authorizationUrl).searchParams.get('resource') === url.href,
  `the client was not sent to authorize for the aggregate's URL: ${state.authorizationUrl}`);
if (process.env.EXPECT_REFUSED) {
  // A user the aggregate's own policy refuses (though every member's policy would let her in)
  // gets no code: a refusal page, or the client's redirect with an error.
  let outcome;
  try {
    const landing = await userAgent(state.authorizationUrl, { gateway, email, password, redirectPrefix: redirectUrl });
    check(!landing.searchParams.get('code'), `the aggregate's policy refuses ${email}, but she got a code: ${landing.href}`);
    outcome = `redirected with error=${landing.searchParams.get('error')}`;
  } catch (error) {
    check(/unexpected page \(403\)/.test(error.message), `${email}: ${error.message}`);
    outcome = error.message.slice(0, 200);
  }
  console.log(`ok: ${email} (outside the aggregate's policy) is refused at authorization: ${outcome}`);
  process.exit(0);
}
const landing = await userAgent(state.authorizationUrl, { gateway, email, password, redirectPrefix: redirectUrl });
const transport = new StreamableHTTPClientTransport(url, { authProvider: provider });
await transport.finishAuth(landing.searchParams.get('code'));
check(state.tokens?.access_token?.startsWith('pst_at_'), 'no TE from the token endpoint');
const client = new Client({ name: 'postern-aggregate', version: '1.0.0' });
await client.connect(transport);
console.log(`ok: signed in through the aggregate ${url.href} (server ${client.getServerVersion()?.name})`);
// The TE is bound to the aggregate's URL: it opens no member's own URL.
for (const path of ['/sqlite', '/whoami']) {
  const direct = await fetch(new URL(path, gateway), {
    method: 'POST',
    headers: { authorization: `Bearer ${state.tokens.access_token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list' }),
  });
  check(direct.status === 401, `the aggregate's TE opened the member's own URL ${path}: ${direct.status}`);
}
console.log("ok: the aggregate's TE is refused (401) at the members' own URLs");

async function listAll() {
  const tools = [];
  const pages = [];
  let cursor;
  do {
    const page = await client.listTools(cursor ? { cursor } : {});
    pages.push(page);
    tools.push(...page.tools);
    cursor = page.nextCursor;
  } while (cursor);
  return { tools, pages, names: tools.map((t) => t.name).sort() };
}
const text = (result) => (result.content ?? []).map((c) => c.text ?? '').join('\n');
// A call the gateway refuses may come back as a JSON-RPC error or as a tool error; both count.
async function call(name, args = {}) {
  try {
    const result = await client.callTool({ name, arguments: args });
    return { isError: !!result.isError, text: text(result), result };
  } catch (error) {
    return { isError: true, text: String(error.message ?? error), rpcError: true };
  }
}

// Each list's per-member report (`_meta["dev.postern/members"]`): the member's state.
const members = (list) => list.pages.flatMap((p) => p._meta?.['dev.postern/members'] ?? []);
const member = (list, name) => members(list).find((m) => m.member === name || m.name === name);

// 1. Exactly the tools Ada may call, each member's under its prefix. Notion's may be missing
// until she connects her account, but not silently: listed with a note, or reported as
// not connected with the link to connect it.
const before = await listAll();
const core = ['sqlite_list_tables', 'sqlite_read_query', 'whoami_whoami'];
const docs = ['docs_fetch', 'docs_search'];
check(JSON.stringify(before.names.filter((n) => !n.startsWith('docs_'))) === JSON.stringify(core),
  `tools/list through the aggregate: ${before.names.join(', ')}; expected exactly ${core.join(', ')} (and docs_*)`);
const listedDocs = before.tools.filter((t) => t.name.startsWith('docs_'));
if (listedDocs.length) {
  check(JSON.stringify(listedDocs.map((t) => t.name).sort()) === JSON.stringify(docs), `notion's tools: ${listedDocs.map((t) => t.name)}`);
  for (const tool of listedDocs) check(/connect/i.test(JSON.stringify(tool)), `${tool.name} is listed without a note that Notion is not connected: ${show(tool)}`);
  console.log('ok: the notion tools are listed with a note that the account is not connected');
} else {
  const notion = member(before, 'notion');
  check(notion?.state === 'not_connected' && /\/\.pomerium\/mcp\/connect\?/.test(notion.connect_url ?? ''),
    `notion's tools are missing from tools/list and the list does not say it is not connected: ${show(before.pages.map((p) => p._meta))}`);
  console.log(`ok: notion's tools are not listed yet; the list says: not_connected, connect at ${notion.connect_url}`);
}
console.log(`ok: tools/list shows ${before.names.join(', ')} (no sqlite_describe_table: mcp_tool deny; no admin_*: not allowed)`);

// 2. Denied tools are refused when called by name, not just hidden.
for (const name of ['sqlite_describe_table', 'admin_whoami']) {
  const refused = await call(name, { table_name: 'customers' });
  check(refused.isError, `${name} through the aggregate was not refused: ${show(refused)}`);
  check(!/CREATE TABLE|"email"/.test(refused.text), `${name} leaked the member's answer: ${refused.text}`);
  console.log(`ok: ${name} refused: ${refused.text.slice(0, 160)}`);
}

// 3. One tool of each member through the one URL.
const me = await call('whoami_whoami');
check(!me.isError && me.text.includes(`"email":"${email}"`), `whoami_whoami: ${show(me)}`);
console.log(`ok: whoami_whoami -> ${me.text.slice(0, 120)}`);
const query = { query: 'SELECT name FROM customers ORDER BY id LIMIT 1' };
const row = await call('sqlite_read_query', query);
check(!row.isError && row.text.includes('Ada Lovelace'), `sqlite_read_query: ${show(row)}`);
console.log(`ok: sqlite_read_query -> ${row.text.slice(0, 120)}`);

// 4. Notion before connecting: told how, in the client.
const unconnected = await call('docs_search', { query: 'road' });
check(unconnected.isError && !unconnected.rpcError, `docs_search before connecting Notion is not a tool error: ${show(unconnected)}`);
const connectUrl = unconnected.text.match(/https?:\/\/[^\s"'<>)]*\/\.pomerium\/mcp\/connect[^\s"'<>)]*/)?.[0];
check(connectUrl, `the tool error does not carry the connect URL: ${unconnected.text}`);
check(new URL(connectUrl).origin === new URL(gateway).origin, `the connect URL is not on the gateway: ${connectUrl}`);
console.log(`ok: docs_search before connecting -> tool error with ${connectUrl}`);
// Her browser opens it: confirm, the provider's consent (the fake approves at once), back.
const back = new URL(connectUrl).searchParams.get('redirect_url');
check(back, `the connect URL has no redirect_url: ${connectUrl}`);
const backUrl = new URL(back, gateway).href;
await userAgent(connectUrl, { gateway, email, password, until: (u) => u === backUrl });
const connected = await call('docs_search', { query: 'road' });
check(!connected.isError && connected.text.includes('Roadmap'), `docs_search after connecting: ${show(connected)}`);
console.log(`ok: after connecting, docs_search -> ${connected.text.slice(0, 120)}`);
const afterConnect = await listAll();
check(JSON.stringify(afterConnect.names) === JSON.stringify([...docs, ...core]),
  `tools/list after connecting Notion: ${afterConnect.names.join(', ')}; expected exactly ${[...docs, ...core].join(', ')}`);
check(!/not.connected/i.test(JSON.stringify(afterConnect.tools)) && member(afterConnect, 'notion')?.state !== 'not_connected',
  `notion still reported as not connected after connecting: ${show(afterConnect.pages.map((p) => p._meta))}`);
console.log(`ok: after connecting, tools/list shows exactly ${afterConnect.names.join(', ')}`);

// 5. A member goes down mid-session.
process.kill(Number(process.env.SQLITE_PID), 'SIGKILL');
for (let i = 0; i < 50; i++) {
  try { process.kill(Number(process.env.SQLITE_PID), 0); } catch { break; }
  await new Promise((r) => setTimeout(r, 100));
}
const down = await call('sqlite_read_query', query);
check(down.isError && !down.rpcError, `sqlite_read_query with its member down is not a tool error: ${show(down)}`);
check(/sqlite/i.test(down.text) && /not available|unavailable|not respond|unreachable/i.test(down.text),
  `the tool error does not say the sqlite member is unavailable: ${down.text}`);
console.log(`ok: sqlite down: sqlite_read_query -> tool error: ${down.text.slice(0, 200)}`);
const stillMe = await call('whoami_whoami');
check(!stillMe.isError && stillMe.text.includes(email), `whoami with sqlite down: ${show(stillMe)}`);
const stillNotion = await call('docs_search', { query: 'road' });
check(!stillNotion.isError && stillNotion.text.includes('Roadmap'), `notion with sqlite down: ${show(stillNotion)}`);
console.log('ok: sqlite down: whoami_whoami and docs_search still answer');
const degraded = await listAll();
for (const name of ['whoami_whoami', 'docs_search', 'docs_fetch']) {
  check(degraded.names.includes(name), `${name} missing from tools/list with sqlite down: ${degraded.names}`);
}
check(!degraded.names.some((n) => n.startsWith('sqlite_')) || degraded.tools.filter((t) => t.name.startsWith('sqlite_')).every((t) => /not available|unavailable/i.test(t.description ?? '')),
  `sqlite's tools listed as if it were up: ${degraded.names}`);
const gone = member(degraded, 'sqlite');
check(gone?.state === 'unavailable' && gone.reason, `tools/list with sqlite down does not say sqlite is missing: ${show(degraded.pages.map((p) => p._meta))}`);
console.log(`ok: sqlite down: tools/list still answers (${degraded.names.join(', ')}) and says sqlite is unavailable: ${gone.reason}`);
// What the client may learn about members, checked last so that every check above has run:
// - about a member that is down, what it is told on the member's own URL
//   (crates/gateway/src/errors.rs, `public_message`): unavailable, not the member's internal
//   address or the OS error, which are for the log;
// - nothing about a member whose policy refuses the user: like /.pomerium/mcp/routes and the
//   portal, which neither list nor name servers a user may not use.
const findings = [];
const internal = /127\.0\.0\.1:\d+|tcp connect error|os error \d+/;
for (const [what, said] of [['the tool error', down.text], ["the list's report", gone.reason]]) {
  if (internal.test(said)) findings.push(`${what} for the sqlite member that is down shows its internal address or OS error: ${said}`);
}
const instructions = client.getInstructions() ?? '';
if (/admin/i.test(instructions)) findings.push(`initialize's instructions name the member Ada may not use: ${instructions}`);
if (member(degraded, 'admin')) findings.push(`tools/list's report names the member Ada may not use: ${show(member(degraded, 'admin'))}`);
check(!findings.length, `the aggregate tells the client more than it should:\n- ${findings.join('\n- ')}`);
console.log("ok: the client learns neither a down member's internal address nor of a member it may not use");
await client.close();
