// A real OpenID Connect provider (npm oidc-provider) on loopback for the
// agent sign-in tests. Usage: node oidc-provider.mjs CONFIG.json
// CONFIG: {"port", "clients": [{client_id, client_secret, redirect_uris}]}.
// Accounts: any login name signs in (the library's development
// interactions: a login form, then a consent form); sub = the login name,
// email NAME@contact.example, verified. A name "someone~other" is an account
// whose owner typed other's address without proving it (email
// other@contact.example, email_verified false), as providers that let users
// set their own email allow. The ID token carries the scopes' claims
// (conformIdTokenClaims off), as many providers' do.
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
  conformIdTokenClaims: false,
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => {
      const [, typed] = id.split('~');
      return { sub: id, email: `${typed ?? id}@contact.example`, email_verified: typed === undefined, name: id };
    },
  }),
  features: { devInteractions: { enabled: true } },
});
provider.listen(cfg.port, '127.0.0.1', () => console.log(`listening ${issuer}`));
