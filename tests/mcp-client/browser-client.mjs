// A browser-based MCP client in headless Chromium (as the Inspector's Direct mode or a web app
// talks to Postern): a page on another origin fetches the MCP server URL with a bearer TE,
// initializes, reads the `mcp-session-id` header and calls a tool. Every answer must be readable
// cross-origin: the preflight allows the MCP headers, the proxied answers carry
// `Access-Control-Allow-Origin` and expose `mcp-session-id`.
//
// node browser-client.mjs SERVER_URL TOKEN_FILE
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const [serverUrl, tokenFile] = process.argv.slice(2);
const token = readFileSync(tokenFile, 'utf8').trim();
// The page's origin: another host name than the gateway's, so every request is cross-origin.
const page = createServer((_, response) => {
  response.writeHead(200, { 'content-type': 'text/html' });
  response.end('<!doctype html><title>a browser-based MCP client</title>');
});
await new Promise((resolve) => page.listen(0, '127.0.0.1', resolve));
const origin = `http://127.0.0.1:${page.address().port}`;
if (new URL(serverUrl).origin === origin) throw new Error('the page must be on another origin');

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
try {
  const tab = await browser.newPage();
  await tab.goto(origin);
  const outcome = await tab.evaluate(async ({ serverUrl, token }) => {
    const post = async (body, sessionId) => {
      const headers = {
        authorization: `Bearer ${token}`,
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
        'mcp-protocol-version': '2025-06-18',
      };
      if (sessionId) headers['mcp-session-id'] = sessionId;
      const response = await fetch(serverUrl, { method: 'POST', headers, body: JSON.stringify(body) });
      const text = await response.text();
      return { status: response.status, sessionId: response.headers.get('mcp-session-id'), text };
    };
    try {
      const init = await post({
        jsonrpc: '2.0', id: 1, method: 'initialize',
        params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'browser', version: '1' } },
      });
      if (!init.sessionId) return { error: `no readable mcp-session-id (HTTP ${init.status}): ${init.text.slice(0, 200)}` };
      await post({ jsonrpc: '2.0', method: 'notifications/initialized' }, init.sessionId);
      const call = await post({ jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'greet', arguments: { name: 'Ada' } } }, init.sessionId);
      return { call };
    } catch (error) {
      return { error: `blocked: ${error}` };
    }
  }, { serverUrl, token });
  if (outcome.error) throw new Error(outcome.error);
  if (!outcome.call.text.includes('Hello, Ada')) throw new Error(`unexpected answer (HTTP ${outcome.call.status}): ${outcome.call.text.slice(0, 200)}`);
  console.log(`ok: a page on ${origin} initialized ${serverUrl} with a bearer TE, read its mcp-session-id and called greet (Chromium)`);
} finally {
  await browser.close();
  page.close();
}
