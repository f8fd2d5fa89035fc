// A real OpenID Connect provider (npm oidc-provider) on loopback for the
// agent sign-in tests. Usage: node oidc-provider.mjs CONFIG.json
// CONFIG: {"port", "clients": [{client_id, client_secret, redirect_uris}]}.
// Accounts: any login name signs in (the library's development
// interactions: a login form, then a consent form); sub = the login name.
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const issuer = `http://127.0.0.1:${cfg.port}`;
const provider = new Provider(issuer, {
  clients: cfg.clients.map((c) => ({
    ...c,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  })),
  pkce: { required: () => true },
  cookies: { keys: ['oidc-test-cookie-key-0123456789abcdef'] },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, email: `${id}@contact.example`, email_verified: true, name: id }),
  }),
  features: { devInteractions: { enabled: true } },
});
provider.listen(cfg.port, '127.0.0.1', () => console.log(`listening ${issuer}`));
