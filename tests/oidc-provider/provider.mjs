// A real OpenID Provider for tests: `node provider.mjs PORT REDIRECT_URI[,REDIRECT_URI...] [conform]`.
// Prints READY when listening. With `conform`, claims asked for by scope (email, profile, groups) come only from
// the UserInfo endpoint, as OpenID Connect Core §5.4 has it; without, they are in the ID token too. The built-in development interactions accept any login name; the account's claims
// are derived from it (email = <login>@example.com, groups = [staff, oidc-users], and as AWS Cognito names them,
// cognito:groups = [staff, cognito-users]).
import Provider from 'oidc-provider';

const [port, redirectUri, mode] = [Number(process.argv[2]), process.argv[3], process.argv[4]];
const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{
    client_id: 'postern',
    client_secret: 'postern-test-secret',
    redirect_uris: redirectUri.split(','),
    response_types: ['code'],
    grant_types: ['authorization_code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], groups: ['groups', 'cognito:groups'] },
  scopes: ['openid', 'email', 'profile', 'groups'],
  conformIdTokenClaims: mode === 'conform',
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, email: `${id}@example.com`, email_verified: true, name: `User ${id}`, groups: ['staff', 'oidc-users'], 'cognito:groups': ['staff', 'cognito-users'] }),
  }),
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ['postern-test-cookie-key'] },
});
provider.on('server_error', (ctx, error) => console.error('server_error', error));
provider.listen(port, '127.0.0.1', () => console.log('READY'));
