// A real MCP client (the official TypeScript SDK) holding only a TE, through Postern, to an
// upstream MCP server that runs its own OAuth (the SDK's example server with --oauth-strict):
// Postern's /authorize discovers the upstream's OAuth and takes the user through its consent in
// the same browser trip, so one authorization gives the TE and the first request carries the
// TI. Prints how many authorization runs it took (one).
//
// node discovery-client.mjs GATEWAY_URL EMAIL PASSWORD SERVER_PATH
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';
import { userAgent } from './browser.mjs';

const [gateway, email, password, serverPath] = process.argv.slice(2);
const redirectUrl = 'http://127.0.0.1:33419/callback';
const state = { visits: [] };
const provider = {
  get redirectUrl() { return redirectUrl; },
  get clientMetadata() {
    return { client_name: 'postern-discovery-client', redirect_uris: [redirectUrl], grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'], token_endpoint_auth_method: 'none' };
  },
  clientInformation() { return state.client; },
  saveClientInformation(info) { state.client = info; },
  tokens() { return state.tokens; },
  saveTokens(tokens) { state.tokens = tokens; },
  redirectToAuthorization(url) { state.authorizationUrl = url; },
  saveCodeVerifier(verifier) { state.verifier = verifier; },
  codeVerifier() { return state.verifier; },
  invalidateCredentials(scope) {
    if (scope === 'all' || scope === 'client') delete state.client;
    if (scope === 'all' || scope === 'tokens') delete state.tokens;
  },
};

const url = new URL(serverPath, gateway);
let runs = 0;
let client;
for (;;) {
  client = new Client({ name: 'postern-discovery', version: '1.0.0' });
  try {
    await client.connect(new StreamableHTTPClientTransport(url, { authProvider: provider }));
    break;
  } catch (error) {
    if (!(error instanceof UnauthorizedError)) throw error;
    if (++runs > 3) throw new Error('still unauthorized after 3 authorization runs');
    const landing = await userAgent(state.authorizationUrl, { gateway, email, password, redirectPrefix: redirectUrl, visits: state.visits });
    const transport = new StreamableHTTPClientTransport(url, { authProvider: provider });
    await transport.finishAuth(landing.searchParams.get('code'));
    if (!state.tokens.access_token.startsWith('pst_at_')) throw new Error('the client got something else than a TE');
  }
}
const result = await client.callTool({ name: 'greet', arguments: { name: 'Ada' } });
const text = JSON.stringify(result);
if (result.isError || !text.includes('Hello, Ada')) throw new Error(`unexpected result: ${text}`);
const upstreamVisits = state.visits.filter((v) => !v.startsWith(gateway) && !v.startsWith(redirectUrl));
const consents = upstreamVisits.filter((v) => new URL(v).pathname.endsWith('/authorize')).length;
if (runs !== 1) throw new Error(`${runs} authorization runs, expected one (the upstream discovered during the first)`);
if (consents !== 1) throw new Error(`the user went through the upstream's authorization ${consents} times, expected once`);
if (!upstreamVisits.some((v) => new URL(v).searchParams.get('resource'))) throw new Error('the upstream authorization named no resource');
if (process.env.TOKEN_OUT) (await import('node:fs')).writeFileSync(process.env.TOKEN_OUT, state.tokens.access_token);
console.log(`ok: ${serverPath} greet -> ${text.slice(0, 100)}; ${runs} authorization runs, upstream consent ${consents} time`);
await client.close();
