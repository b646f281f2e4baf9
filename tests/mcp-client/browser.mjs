// A headless user agent for Postern's pages: keeps cookies, follows redirects by hand, signs in
// on the sign-in form, approves the consent form and confirms connecting an upstream account,
// until the browser would be sent to `redirectPrefix`; returns that URL.
//
// As a command: node browser.mjs AUTHORIZATION_URL GATEWAY EMAIL PASSWORD REDIRECT_PREFIX
// prints the final URL and then opens it (delivering the code to a local callback server).

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

// `until(url)`, if given, says where to stop instead of `redirectPrefix`.
export async function userAgent(start, { gateway, email, password, redirectPrefix, until, visits = [] }) {
  const done = until ?? ((url) => url.startsWith(redirectPrefix));
  let next = start.toString();
  for (let step = 0; step < 20; step++) {
    if (done(next)) return new URL(next);
    visits.push(next);
    const response = await browse(next);
    if (response.status >= 300 && response.status < 400) {
      next = new URL(response.headers.get('location'), next).href;
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
      continue;
    }
    if (html.includes('name="decision" value="connect"')) {
      // The confirmation before an upstream account is connected (/.pomerium/mcp/connect).
      const form = hiddenFields(html);
      form.set('decision', 'connect');
      const confirmed = await browse(new URL('/.pomerium/mcp/connect', gateway), { method: 'POST', body: form });
      if (confirmed.status < 300 || confirmed.status >= 400) throw new Error(`connect confirmation answered ${confirmed.status}`);
      next = new URL(confirmed.headers.get('location'), gateway).href;
      continue;
    }
    const text = html.replace(/<style[\s\S]*?<\/style>/g, '').replace(/<[^>]+>/g, ' ').replace(/\s+/g, ' ').trim();
    throw new Error(`unexpected page (${response.status}) at ${next}: ${text.slice(0, 400)}`);
  }
  throw new Error('too many steps');
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [start, gateway, email, password, redirectPrefix] = process.argv.slice(2);
  const landing = await userAgent(start, { gateway, email, password, redirectPrefix });
  console.log(landing.href);
  // The callback server may still be starting (it prints the URL before it listens): retry a
  // refused connection for a few seconds.
  for (let attempt = 0; ; attempt++) {
    try {
      await fetch(landing, { redirect: 'manual' });
      break;
    } catch (error) {
      if (error?.cause?.code !== 'ECONNREFUSED' || attempt >= 50) throw error;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}
