// What the official MCP TypeScript SDK does when its refresh grant meets a store outage at the
// gateway: it authorizes (sign-in, consent, PKCE), then OUTAGE_CMD makes the gateway's database
// refuse connections, and the SDK's own `auth()` (what its transport runs on a 401) refreshes.
// Checks the gateway's answer (503, Retry-After, temporarily_unavailable), reports what the SDK
// did (kept the refresh token? dropped it? sent the user to authorize again? retried?), and
// that after RESTORE_CMD the same refresh token works.
//
// node refresh-outage.mjs GATEWAY_URL EMAIL PASSWORD SERVER_PATH   (OUTAGE_CMD, RESTORE_CMD)
import { execSync } from 'node:child_process';
import { auth, UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { userAgent } from './browser.mjs';

const [gateway, email, password, serverPath] = process.argv.slice(2);
const redirectUrl = 'http://127.0.0.1:33419/callback';
const state = { saved: 0, invalidated: [], redirects: 0 };
const provider = {
  get redirectUrl() { return redirectUrl; },
  get clientMetadata() {
    return { client_name: 'postern-outage-client', redirect_uris: [redirectUrl], grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'], token_endpoint_auth_method: 'none' };
  },
  clientInformation() { return state.client; },
  saveClientInformation(info) { state.client = info; },
  tokens() { return state.tokens; },
  saveTokens(tokens) { state.tokens = tokens; state.saved++; },
  redirectToAuthorization(url) { state.authorizationUrl = url; state.redirects++; },
  saveCodeVerifier(verifier) { state.verifier = verifier; },
  codeVerifier() { return state.verifier; },
  invalidateCredentials(scope) { state.invalidated.push(scope); },
};
const tokenAnswers = [];
const recordingFetch = async (input, init) => {
  const response = await fetch(input, init);
  if (String(input).endsWith('/.pomerium/mcp/token')) {
    const body = await response.clone().text();
    tokenAnswers.push({ status: response.status, retryAfter: response.headers.get('retry-after'), body, grant: new URLSearchParams(String(init?.body ?? '')).get('grant_type') });
  }
  return response;
};

const url = new URL(serverPath, gateway);
const client = new Client({ name: 'postern-outage', version: '1.0.0' });
try {
  await client.connect(new StreamableHTTPClientTransport(url, { authProvider: provider, fetch: recordingFetch }));
  throw new Error('the gateway let an unauthenticated client in');
} catch (error) {
  if (!(error instanceof UnauthorizedError)) throw error;
}
const landing = await userAgent(state.authorizationUrl, { gateway, email, password, redirectPrefix: redirectUrl });
const transport = new StreamableHTTPClientTransport(url, { authProvider: provider, fetch: recordingFetch });
await transport.finishAuth(landing.searchParams.get('code'));
const before = { ...state.tokens };
if (!before.refresh_token) throw new Error('no refresh token');
state.redirects = 0;

execSync(process.env.OUTAGE_CMD, { stdio: 'inherit' });
const during = tokenAnswers.length;
let outcome;
try {
  outcome = `returned ${await auth(provider, { serverUrl: url, fetchFn: recordingFetch })}`;
} catch (error) {
  outcome = `threw ${error.constructor.name}: ${error.message}`;
}
const answers = tokenAnswers.slice(during);
const kept = state.tokens?.refresh_token === before.refresh_token;
console.log('TypeScript SDK, refresh during the store outage:');
console.log(`  token endpoint answers: ${answers.map((a) => `${a.grant} -> ${a.status} Retry-After: ${a.retryAfter} ${a.body}`).join('; ')}`);
console.log(`  auth(): ${outcome}`);
console.log(`  refresh token kept: ${kept}; invalidateCredentials: ${JSON.stringify(state.invalidated)}; sent to authorize again: ${state.redirects > 0}; token requests: ${answers.length} (a retry would be more than 1)`);
const refused = answers[0];
if (!refused || refused.status !== 503 || !refused.retryAfter || !refused.body.includes('temporarily_unavailable')) {
  throw new Error(`the gateway did not answer 503 temporarily_unavailable with Retry-After: ${JSON.stringify(refused)}`);
}

execSync(process.env.RESTORE_CMD, { stdio: 'inherit' });
// The store reconnects on its next use: a few seconds on a loaded machine at most.
let after;
for (let i = 0; i < 40; i++) {
  try {
    after = await auth(provider, { serverUrl: url, fetchFn: recordingFetch });
    if (after === 'AUTHORIZED' && state.tokens.access_token !== before.access_token) break;
  } catch (error) {
    after = `threw ${error.constructor.name}`;
  }
  await new Promise((resolve) => setTimeout(resolve, 250));
}
console.log(`  after the store is back: auth() ${after}, a new TE: ${state.tokens.access_token !== before.access_token}, the refresh token rotated: ${state.tokens.refresh_token !== before.refresh_token}`);
if (after !== 'AUTHORIZED' || state.tokens.access_token === before.access_token) throw new Error('the kept refresh token did not work after the outage');
