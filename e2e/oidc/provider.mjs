// A real OpenID provider (node's certified oidc-provider) for the end-to-end test of bearer
// tokens from an identity provider (e2e/tests/it/oidc.rs). Not for anything else.
//
//   PORT=NNNN STATE_DIR=/tmp/x GENERATION=1 node e2e/oidc/provider.mjs
//
// - Issuer http://127.0.0.1:PORT, discovery at /.well-known/openid-configuration, keys at /jwks
//   (served with Cache-Control: public, max-age=300).
// - Signing keys by generation: RS256 `rs-<g>`, ES256 `es-<g>`, EdDSA `ed-<g>`, kept in
//   STATE_DIR/keys.json. Generation g signs; the keys of g-1 stay published. Restarting with
//   GENERATION=g+1 is a key rotation.
// - client_credentials grant with a resource indicator (RFC 8707): `resource=urn:nats-es` (or
//   `urn:other-service`) gives a JWT access token whose `aud` is that resource. Clients
//   (secret = client id + "-secret", client_secret_post): tenant-es, tenant-rs, tenant-ed sign
//   with ES256, RS256, EdDSA and grant tenant acme in the claim
//   https://nats-es.example/tenants; admin-es has the role nats-es-admin in realm_access.roles
//   (Keycloak's shape) and no tenant.
// - Every GET /jwks is counted: GET /_test/jwks-fetches answers {"count": n} since start.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

import Provider from 'oidc-provider';

const port = Number(process.env.PORT || 0);
const stateDir = process.env.STATE_DIR;
const generation = Number(process.env.GENERATION || 1);
if (!port || !stateDir || !(generation >= 1)) {
  console.error('set PORT, STATE_DIR and GENERATION (>= 1)');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;

// ---- keys
const keysFile = path.join(stateDir, 'keys.json');
const generations = fs.existsSync(keysFile) ? JSON.parse(fs.readFileSync(keysFile, 'utf8')) : {};
function privateJwk(kind, kid, alg) {
  const { privateKey } = kind === 'rsa'
    ? crypto.generateKeyPairSync('rsa', { modulusLength: 2048 })
    : kind === 'ec'
      ? crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' })
      : crypto.generateKeyPairSync('ed25519');
  return { ...privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };
}
for (const g of [generation - 1, generation]) {
  if (g >= 1 && !generations[g]) {
    generations[g] = [
      privateJwk('ec', `es-${g}`, 'ES256'),
      privateJwk('rsa', `rs-${g}`, 'RS256'),
      privateJwk('ed', `ed-${g}`, 'EdDSA'),
    ];
  }
}
fs.mkdirSync(stateDir, { recursive: true });
fs.writeFileSync(keysFile, JSON.stringify(generations));
const keys = [...generations[generation], ...(generations[generation - 1] || [])];

// ---- clients
const clientAlg = { 'tenant-es': 'ES256', 'tenant-rs': 'RS256', 'tenant-ed': 'EdDSA', 'admin-es': 'ES256' };
const clients = Object.keys(clientAlg).map((id) => ({
  client_id: id,
  client_secret: `${id}-secret`,
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  token_endpoint_auth_method: 'client_secret_post',
  scope: 'api',
}));
const resources = new Set(['urn:nats-es', 'urn:other-service']);

const provider = new Provider(issuer, {
  clients,
  scopes: ['openid', 'offline_access', 'api'],
  jwks: { keys },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => 'urn:nats-es',
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resource, client) => {
        if (!resources.has(resource)) {
          throw new Provider.errors.InvalidTarget(`unknown resource ${resource}`);
        }
        return {
          scope: 'api',
          audience: resource,
          accessTokenTTL: 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: clientAlg[client.clientId] || 'ES256' } },
        };
      },
    },
  },
  extraTokenClaims: async (ctx, token) => {
    const id = token.clientId || '';
    return id.startsWith('admin')
      ? { 'https://nats-es.example/tenants': [], realm_access: { roles: ['offline_access', 'nats-es-admin'] } }
      : { 'https://nats-es.example/tenants': ['acme'], realm_access: { roles: ['offline_access'] } };
  },
});

let jwksFetches = 0;
provider.use(async (ctx, next) => {
  if (ctx.path === '/_test/jwks-fetches') {
    ctx.body = { count: jwksFetches };
    return;
  }
  if (ctx.path === '/jwks') {
    jwksFetches += 1;
    console.log(`jwks fetch ${jwksFetches} from ${ctx.get('user-agent')}`);
  }
  await next();
  if (ctx.path === '/jwks') {
    ctx.set('cache-control', 'public, max-age=300');
  }
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider ${issuer} generation ${generation} keys ${keys.map((k) => k.kid).join(',')}`);
});
