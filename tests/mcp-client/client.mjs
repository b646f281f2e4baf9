// A real MCP client (the official TypeScript SDK) against Postern, with the OAuth flow driven
// headless: discovery, dynamic registration, authorization (this script plays the user's
// browser: it signs in and approves consent), token, then tools/list and tools/call.
//
// node client.mjs GATEWAY_URL EMAIL PASSWORD SERVER_PATH TOOL ARGS_JSON EXPECTED_SUBSTRING
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';

const [gateway, email, password, serverPath, tool, argsJson, expected] = process.argv.slice(2);
const redirectUrl = 'http://127.0.0.1:33418/callback';
const state = {};
const provider = {
  get redirectUrl() { return redirectUrl; },
  get clientMetadata() {
    return {
      client_name: 'postern-acceptance-client',
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

// The user's browser: a cookie jar and redirects followed by hand.
const jar = new Map();
async function browse(url, init = {}) {
  const headers = { ...(init.headers || {}) };
  if (jar.size) headers.cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
  const response = await fetch(url, { ...init, headers, redirect: 'manual' });
  for (const cookie of response.headers.getSetCookie()) {
    const [pair] = cookie.split(';');
    const at = pair.indexOf('=');
    jar.set(pair.slice(0, at), pair.slice(at + 1));
  }
  return response;
}

function hiddenFields(html) {
  const fields = new URLSearchParams();
  for (const match of html.matchAll(/<input type="hidden" name="([^"]*)" value="([^"]*)">/g)) {
    fields.append(match[1], match[2].replaceAll('&amp;', '&').replaceAll('&quot;', '"').replaceAll('&#39;', "'"));
  }
  return fields;
}

async function userAgent(start) {
  let next = start.toString();
  for (let step = 0; step < 20; step++) {
    const response = await browse(next);
    if (response.status >= 300 && response.status < 400) {
      const location = new URL(response.headers.get('location'), next);
      if (location.href.startsWith(redirectUrl)) {
        if (location.searchParams.get('error')) throw new Error(`authorization failed: ${location.search}`);
        if (location.searchParams.get('iss') !== new URL(gateway).origin) throw new Error('missing or wrong iss');
        return location.searchParams.get('code');
      }
      next = location.href;
      continue;
    }
    const html = await response.text();
    if (html.includes('name="password"')) {
      const form = hiddenFields(html);
      form.set('email', email);
      form.set('password', password);
      const signedIn = await browse(new URL('/.pomerium/sign_in', gateway), { method: 'POST', body: form });
      if (signedIn.status !== 303) throw new Error(`sign-in failed: ${signedIn.status}`);
      next = new URL(signedIn.headers.get('location'), gateway).href;
      continue;
    }
    if (html.includes('name="decision" value="allow"')) {
      const form = hiddenFields(html);
      form.set('decision', 'allow');
      const approved = await browse(new URL('/.pomerium/mcp/authorize', gateway), { method: 'POST', body: form });
      next = new URL(approved.headers.get('location'), gateway).href;
      if (next.startsWith(redirectUrl)) return new URL(next).searchParams.get('code');
      continue;
    }
    throw new Error(`unexpected page (${response.status}): ${html.slice(0, 300)}`);
  }
  throw new Error('too many steps');
}

const url = new URL(serverPath, gateway);
const client = new Client({ name: 'postern-acceptance', version: '1.0.0' });
try {
  await client.connect(new StreamableHTTPClientTransport(url, { authProvider: provider }));
  throw new Error('the gateway let an unauthenticated client in');
} catch (error) {
  if (!(error instanceof UnauthorizedError)) throw error;
}
const code = await userAgent(state.authorizationUrl);
const transport = new StreamableHTTPClientTransport(url, { authProvider: provider });
await transport.finishAuth(code);
if (!state.tokens?.access_token?.startsWith('pst_at_')) throw new Error('no TE from the token endpoint');
await client.connect(transport);
const tools = await client.listTools();
if (!tools.tools.some((t) => t.name === tool)) throw new Error(`${tool} not listed: ${tools.tools.map((t) => t.name)}`);
const result = await client.callTool({ name: tool, arguments: JSON.parse(argsJson) });
const text = JSON.stringify(result);
if (result.isError || !text.includes(expected)) throw new Error(`unexpected result: ${text}`);
console.log(`ok: ${serverPath} ${tool} -> ${text.slice(0, 160)}`);
await client.close();
