// A real MCP client (the official TypeScript SDK) against Postern, with the OAuth flow driven
// headless: discovery, dynamic registration, authorization (this script plays the user's
// browser: it signs in and approves consent), token, then tools/list and tools/call.
//
// node client.mjs GATEWAY_URL EMAIL PASSWORD SERVER_PATH TOOL ARGS_JSON EXPECTED_SUBSTRING
// With CLIENT_METADATA_URL set, the client identifies itself with that client ID metadata
// document (an https URL) instead of registering. With CLIENT_AUTH=client_secret_post (or
// client_secret_basic) it registers as a confidential client and authenticates that way at the
// token endpoint (checked on the requests it sends).
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';

const [gateway, email, password, serverPath, tool, argsJson, expected] = process.argv.slice(2);
const redirectUrl = 'http://127.0.0.1:33418/callback';
const state = {};
const clientMetadataUrl = process.env.CLIENT_METADATA_URL;
const provider = {
  clientMetadataUrl,
  get redirectUrl() { return redirectUrl; },
  get clientMetadata() {
    return {
      client_name: 'postern-acceptance-client',
      redirect_uris: [redirectUrl],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: process.env.CLIENT_AUTH ?? 'none',
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

import { userAgent } from './browser.mjs';

// Every token request the SDK sends, to check how it authenticated.
const tokenRequests = [];
const recordingFetch = async (input, init) => {
  if (String(input).endsWith('/.pomerium/mcp/token')) {
    tokenRequests.push({ body: String(init?.body ?? ''), authorization: new Headers(init?.headers).get('authorization') });
  }
  return fetch(input, init);
};

const url = new URL(serverPath, gateway);
const client = new Client({ name: 'postern-acceptance', version: '1.0.0' });
try {
  await client.connect(new StreamableHTTPClientTransport(url, { authProvider: provider, fetch: recordingFetch }));
  throw new Error('the gateway let an unauthenticated client in');
} catch (error) {
  if (!(error instanceof UnauthorizedError)) throw error;
}
if (clientMetadataUrl) {
  const clientId = new URL(state.authorizationUrl).searchParams.get('client_id');
  if (clientId !== clientMetadataUrl) throw new Error(`client_id ${clientId}, not the metadata document URL`);
}
const landing = await userAgent(state.authorizationUrl, { gateway, email, password, redirectPrefix: redirectUrl });
if (landing.searchParams.get('iss') !== new URL(gateway).origin) throw new Error('missing or wrong iss');
const code = landing.searchParams.get('code');
const transport = new StreamableHTTPClientTransport(url, { authProvider: provider, fetch: recordingFetch });
await transport.finishAuth(code);
if (!state.tokens?.access_token?.startsWith('pst_at_')) throw new Error('no TE from the token endpoint');
const exchange = tokenRequests.at(-1);
if (process.env.CLIENT_AUTH === 'client_secret_post') {
  if (!state.client?.client_secret) throw new Error('registration returned no client_secret');
  const form = new URLSearchParams(exchange?.body);
  if (form.get('client_secret') !== state.client.client_secret || exchange.authorization) {
    throw new Error(`the token request did not use client_secret_post: ${JSON.stringify(exchange)}`);
  }
} else if (process.env.CLIENT_AUTH === 'client_secret_basic') {
  if (!exchange?.authorization?.startsWith('Basic ') || new URLSearchParams(exchange.body).has('client_secret')) {
    throw new Error(`the token request did not use client_secret_basic: ${JSON.stringify(exchange)}`);
  }
}
await client.connect(transport);
const tools = await client.listTools();
if (!tools.tools.some((t) => t.name === tool)) throw new Error(`${tool} not listed: ${tools.tools.map((t) => t.name)}`);
const result = await client.callTool({ name: tool, arguments: JSON.parse(argsJson) });
const text = JSON.stringify(result);
if (result.isError || !text.includes(expected)) throw new Error(`unexpected result: ${text}`);
if (process.env.TOKEN_OUT) (await import('node:fs')).writeFileSync(process.env.TOKEN_OUT, state.tokens.access_token);
console.log(`ok: ${serverPath} ${tool} -> ${text.slice(0, 160)}`);
await client.close();
