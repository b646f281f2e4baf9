// A real OpenID Provider for tests: `node provider.mjs PORT REDIRECT_URI[,REDIRECT_URI...] [conform]`.
// Prints READY when listening. With `conform`, claims asked for by scope (email, profile, groups) come only from
// the UserInfo endpoint, as OpenID Connect Core §5.4 has it; without, they are in the ID token too. The built-in development interactions accept any login name; the account's claims
// are derived from it (email = <login>@example.com, groups = [staff, oidc-users], and as AWS Cognito names them,
// cognito:groups = [staff, cognito-users]). Refresh tokens are issued with every code; an account whose login name
// is a line of the file OIDC_DISABLED_ACCOUNTS names is disabled (its refresh tokens are refused with invalid_grant).
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const disabled = (id) => {
  const file = process.env.OIDC_DISABLED_ACCOUNTS;
  if (!file) return false;
  try { return readFileSync(file, 'utf8').split('\n').includes(id); } catch { return false; }
};

const [port, redirectUri, mode] = [Number(process.argv[2]), process.argv[3], process.argv[4]];
const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{
    client_id: 'postern',
    client_secret: 'postern-test-secret',
    redirect_uris: redirectUri.split(','),
    response_types: ['code'],
    grant_types: ['authorization_code', 'refresh_token'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], groups: ['groups', 'cognito:groups'] },
  scopes: ['openid', 'email', 'profile', 'groups'],
  conformIdTokenClaims: mode === 'conform',
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  findAccount: async (ctx, id) => disabled(id) ? undefined : ({
    accountId: id,
    claims: async () => ({ sub: id, email: `${id}@example.com`, email_verified: true, name: `User ${id}`, groups: ['staff', 'oidc-users'], 'cognito:groups': ['staff', 'cognito-users'] }),
  }),
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ['postern-test-cookie-key'] },
});
provider.on('server_error', (ctx, error) => console.error('server_error', error));
provider.listen(port, '127.0.0.1', () => console.log('READY'));
