// Connected apps in a real browser (headless Chromium, driven by playwright-core): an MCP client
// (the official TypeScript SDK) authorized once keeps working after the user signs out of the
// portal; a page of another site can neither sign the user out (a GET) nor revoke the app (a
// POST); Revoke on the Connected apps page stops the client's TE within 2 s and its refresh token
// at once.
//
// node connected-apps.mjs GATEWAY_URL EMAIL PASSWORD SCREENSHOT_FILE
import { chromium } from 'playwright-core';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';
import { userAgent } from './browser.mjs';

const [gateway, email, password, screenshot] = process.argv.slice(2);
const appName = `connected-apps-test-${process.pid}`;
function check(condition, what) {
  if (!condition) throw new Error(what);
}

// The MCP client authorizes (this script plays its browser, as client.mjs does).
const redirectUrl = 'http://127.0.0.1:33419/callback';
const state = {};
const provider = {
  get redirectUrl() { return redirectUrl; },
  get clientMetadata() {
    return { client_name: appName, redirect_uris: [redirectUrl], grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'], token_endpoint_auth_method: 'none' };
  },
  clientInformation() { return state.client; },
  saveClientInformation(info) { state.client = info; },
  tokens() { return state.tokens; },
  saveTokens(tokens) { state.tokens = tokens; },
  redirectToAuthorization(url) { state.authorizationUrl = url; },
  saveCodeVerifier(verifier) { state.verifier = verifier; },
  codeVerifier() { return state.verifier; },
};
const url = new URL('/whoami', gateway);
try {
  await new Client({ name: appName, version: '1.0.0' }).connect(new StreamableHTTPClientTransport(url, { authProvider: provider }));
  throw new Error('the gateway let an unauthenticated client in');
} catch (error) {
  if (!(error instanceof UnauthorizedError)) throw error;
}
const landing = await userAgent(state.authorizationUrl, { gateway, email, password, redirectPrefix: redirectUrl });
await new StreamableHTTPClientTransport(url, { authProvider: provider }).finishAuth(landing.searchParams.get('code'));
const { access_token: access, refresh_token: refresh } = state.tokens;

// What the client can do with its tokens, without the SDK's re-authorization on a 401.
const mcpStatus = async () => (await fetch(url, {
  method: 'POST',
  headers: { authorization: `Bearer ${access}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
  body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: appName, version: '1' } } }),
})).status;
const refreshed = async (token) => {
  const response = await fetch(new URL('/.pomerium/mcp/token', gateway), {
    method: 'POST',
    body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: token, client_id: state.client.client_id }),
  });
  return { status: response.status, body: await response.json() };
};
check(await mcpStatus() === 200, 'the TE does not work');

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  const signIn = async () => {
    await page.goto(`${gateway}/.pomerium/`);
    await page.fill('#email', email);
    await page.fill('#password', password);
    await page.click('button[type=submit]');
    await page.waitForURL(`${gateway}/.pomerium/`);
  };
  await signIn();

  // Another site's page loads the sign-out URL (an image) and auto-submits forged forms.
  const attacker = await context.newPage();
  await attacker.setContent(`<img src="${gateway}/.pomerium/sign_out">`);
  await attacker.waitForTimeout(300);
  await attacker.setContent(`<form id="f" method="post" action="${gateway}/.pomerium/apps/sign_out_everywhere"><input name="csrf_token" value="x"></form>`);
  await Promise.all([attacker.waitForNavigation(), attacker.evaluate(() => document.getElementById('f').submit())]);
  // (The session cookie is SameSite=Lax, so the browser sends none; the gateway would refuse the
  // form's Origin and token anyway.)
  check((await attacker.textContent('h1')) !== 'Signed out everywhere', 'a cross-site Sign out everywhere was obeyed');
  await attacker.close();
  await page.goto(`${gateway}/.pomerium/apps`);
  check(page.url() === `${gateway}/.pomerium/apps`, 'a cross-site page signed the user out');

  // Signing out of the portal leaves the client working.
  await page.goto(`${gateway}/.pomerium/`);
  await page.click('header >> text=Sign out');
  await page.waitForURL(`${gateway}/.pomerium/sign_out`);
  await page.click('#sign-out');
  check((await page.textContent('body')).includes('connected app'), 'the signed-out page does not say what keeps working');
  await page.waitForTimeout(2200);
  check(await mcpStatus() === 200, 'the TE stopped working when the user signed out of the portal');
  const again = await refreshed(refresh);
  check(again.status === 200, `the refresh token stopped working at sign-out: ${JSON.stringify(again.body)}`);

  // Connected apps lists the client; Revoke stops it.
  await signIn();
  await page.click('header >> text=Connected apps');
  await page.waitForURL(`${gateway}/.pomerium/apps`);
  const app = page.locator('li.app', { has: page.locator('h2', { hasText: appName }) });
  check(await app.count() === 1, `${appName} is not listed`);
  const text = await app.textContent();
  check(text.includes('unverified') && text.includes('127.0.0.1'), `the app's entry lacks its trust or redirect host: ${text}`);
  await page.screenshot({ path: screenshot, fullPage: true });
  await app.getByText('Revoke').click();
  const revokedAt = Date.now();
  await page.waitForURL(`${gateway}/.pomerium/apps`);
  while (await mcpStatus() === 200) {
    check(Date.now() - revokedAt < 2000, 'the TE still works 2 s after Revoke');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  const stoppedAfter = Date.now() - revokedAt;
  check(await app.count() === 0, 'the revoked app is still listed');
  const refused = await refreshed(again.body.refresh_token);
  check(refused.status === 400 && refused.body.error === 'invalid_grant', `the refresh token still works after Revoke: ${JSON.stringify(refused.body)}`);
  console.log(`ok: the client outlived sign-out; cross-site sign-out and revoke refused; Revoke stopped its TE in ${stoppedAfter} ms and its refresh token (screenshot ${screenshot})`);
} finally {
  await browser.close();
}
