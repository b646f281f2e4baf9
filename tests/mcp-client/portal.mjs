// The portal in a real browser (headless Chromium, driven by playwright-core): sign in, see the
// MCP servers, disconnect Notion and connect it again through the upstream OAuth flow; a
// cross-site sign-in form and a cross-site Disconnect form are refused. Saves a screenshot of the connected portal.
//
// node portal.mjs GATEWAY_URL EMAIL PASSWORD SCREENSHOT_FILE
import { chromium } from 'playwright-core';

const [gateway, email, password, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
function check(condition, what) {
  if (!condition) throw new Error(what);
}
try {
  const context = await browser.newContext();
  // Login CSRF: a page of another site auto-submits the sign-in form; the browser says where the
  // form came from, and the gateway refuses it, signing nobody in.
  const attacker = await context.newPage();
  await attacker.setContent(`<form id="f" method="post" action="${gateway}/.pomerium/sign_in">
    <input name="email" value="${email}"><input name="password" value="${password}">
    <input name="redirect_uri" value="/.pomerium/"></form>`);
  await Promise.all([attacker.waitForNavigation(), attacker.evaluate(() => document.getElementById('f').submit())]);
  check((await attacker.textContent('[role=alert]'))?.includes('another site') ?? false, 'a cross-site sign-in form was not refused');
  await attacker.close();

  const page = await context.newPage();
  // A server URL opened in the browser is a page about it, signed out and (below) signed in.
  const serverPage = async () => {
    const response = await page.goto(`${gateway}/sqlite`);
    check(response.status() === 200, `the server URL answered ${response.status()}`);
    check((await page.textContent('h1')) === 'This is an MCP server', 'no page for a browser on a server URL');
    check((await page.textContent('#url')) === `${gateway}/sqlite`, 'the page shows another URL');
  };
  await serverPage();
  await page.goto(`${gateway}/.pomerium/`);
  check(page.url().includes('/.pomerium/sign_in'), `not sent to sign in: ${page.url()}`);
  await page.fill('#email', email);
  await page.fill('#password', 'wrong password');
  await page.click('button[type=submit]');
  check((await page.textContent('[role=alert]'))?.includes('Wrong email or password') ?? false, 'no error for a wrong password');
  await page.fill('#email', email);
  await page.fill('#password', password);
  await page.click('button[type=submit]');
  await page.waitForURL(`${gateway}/.pomerium/`);
  check((await page.textContent('#user')) !== null, 'no signed-in identity');
  check((await page.textContent('header')).includes(email), 'the portal does not show the email');

  const server = (name) => page.locator('li.server', { has: page.locator('h2', { hasText: name }) });
  for (const name of ['Who am I', 'Demo database', 'Notion']) {
    check(await server(name).count() === 1, `${name} is not listed`);
  }
  check((await server('Demo database').locator('code').textContent()) === `${gateway}/sqlite`, 'wrong sqlite URL');
  await serverPage();
  await page.goto(`${gateway}/.pomerium/`);
  // The MCP client's authorization connected Notion already (run.sh runs it first).
  check((await server('Notion').locator('.state').textContent()) === 'Connected', 'Notion not connected by the client flow');

  // A form on another site posting to Disconnect with the user's cookie is refused.
  const cookies = await page.context().cookies();
  const forged = await fetch(`${gateway}/.pomerium/disconnect`, {
    method: 'POST',
    redirect: 'manual',
    headers: {
      cookie: cookies.map((c) => `${c.name}=${c.value}`).join('; '),
      origin: 'https://evil.example',
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: new URLSearchParams({ resource: `${gateway}/notion` }),
  });
  check(forged.status === 403, `cross-site disconnect answered ${forged.status}`);
  await page.reload();
  check((await server('Notion').locator('.state').textContent()) === 'Connected', 'a cross-site form disconnected Notion');

  await server('Notion').getByText('Disconnect').click();
  await page.waitForURL(`${gateway}/.pomerium/`);
  check((await server('Notion').locator('.state').textContent()) === 'Not connected', 'Notion still connected after Disconnect');

  await server('Notion').getByText('Connect', { exact: true }).click();
  // Connecting asks first (a link from another site must not start it).
  await page.waitForURL((url) => url.pathname === '/.pomerium/mcp/connect');
  check((await page.textContent('h1')).includes('Connect your'), 'no confirmation before connecting');
  await page.click('button[value=connect]');
  await page.waitForURL(`${gateway}/.pomerium/`);
  check((await server('Notion').locator('.state').textContent()) === 'Connected', 'Notion not connected after Connect');
  await page.screenshot({ path: screenshot, fullPage: true });

  // Sign-out is a button on its own page (a link or image elsewhere cannot end the session).
  await page.click('header >> text=Sign out');
  await page.waitForURL(`${gateway}/.pomerium/sign_out`);
  await page.click('#sign-out');
  await page.goto(`${gateway}/.pomerium/`);
  check(page.url().includes('/.pomerium/sign_in'), 'the portal is still open after signing out');
  console.log(`ok: server URL page, cross-site sign-in refused, portal sign-in, cross-site disconnect refused, disconnect, connect, sign-out (screenshot ${screenshot})`);
} finally {
  await browser.close();
}
