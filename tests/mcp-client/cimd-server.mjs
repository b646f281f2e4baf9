// Serves a client ID metadata document over HTTPS, the way a real MCP client publishes one, and
// logs each fetch (so the test can tell that the authorization server fetched it).
//
// node cimd-server.mjs PORT CERT KEY REDIRECT_URI
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';

const [port, cert, key, redirectUri] = process.argv.slice(2);
const url = `https://localhost:${port}/oauth/client.json`;
const document = {
  client_id: url,
  client_name: 'postern-cimd-client',
  redirect_uris: [redirectUri],
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  token_endpoint_auth_method: 'none',
};
createServer({ cert: readFileSync(cert), key: readFileSync(key) }, (request, response) => {
  console.log(`fetched ${request.url}`);
  if (request.url !== '/oauth/client.json') {
    response.writeHead(404).end();
    return;
  }
  response.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'max-age=60' });
  response.end(JSON.stringify(document));
}).listen(Number(port), '127.0.0.1', () => console.log(`serving ${url}`));
