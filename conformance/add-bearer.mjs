// Loaded with `node --import` into the conformance suite, which has no option to send
// credentials: every HTTP request it makes to MCP_BEARER_ORIGIN (both `fetch` and
// `undici.request`, which share undici's global dispatcher) gets
// `Authorization: Bearer $MCP_BEARER_TOKEN`, unless it already has an Authorization header.
import { createRequire } from 'node:module';

const require = createRequire(process.env.MCP_UNDICI_FROM);
const { Agent, setGlobalDispatcher } = require('undici');
const token = process.env.MCP_BEARER_TOKEN;
const origin = process.env.MCP_BEARER_ORIGIN;
if (!token || !origin) throw new Error('set MCP_BEARER_TOKEN and MCP_BEARER_ORIGIN');

function withBearer(headers) {
  if (headers == null) return { authorization: `Bearer ${token}` };
  if (Array.isArray(headers)) {
    for (let i = 0; i < headers.length; i += 2) {
      if (String(headers[i]).toLowerCase() === 'authorization') return headers;
    }
    return [...headers, 'authorization', `Bearer ${token}`];
  }
  if (typeof headers[Symbol.iterator] === 'function' && !(typeof headers === 'object' && headers.constructor === Object)) {
    const entries = [...headers];
    if (entries.some(([k]) => k.toLowerCase() === 'authorization')) return headers;
    return [...entries.flat(), 'authorization', `Bearer ${token}`];
  }
  if (Object.keys(headers).some((k) => k.toLowerCase() === 'authorization')) return headers;
  return { ...headers, authorization: `Bearer ${token}` };
}

setGlobalDispatcher(
  new Agent().compose((dispatch) => (options, handler) => {
    const target = new URL(options.origin).origin;
    if (target === origin) options = { ...options, headers: withBearer(options.headers) };
    return dispatch(options, handler);
  }),
);
