// A loopback OAuth authorization server for grantkeeper's tests, built on oidc-provider 9.
//
//   node server.mjs --port 0 --access-ttl 60 --format opaque|jwt [--resource-url URL]...
//
// Once listening it prints exactly one JSON line to stdout:
//   {"issuer": "http://127.0.0.1:PORT", "port": PORT}
// Everything else goes to stderr. All state lives in memory and dies with the process.
//
// Test-only admin endpoints (no authentication; loopback only):
//   GET  /__admin/stats        counters as JSON
//   POST /__admin/reset-stats  zero the counters
//   POST /__admin/account      {"account": "bob"}: account used by later logins
//   POST /__admin/revoke-all   revoke every grant and every token issued under it
//   GET  /__admin/cc-jwt-key   the private key of the private_key_jwt machine client "cc-jwt"
// Machine clients: cc-basic / cc-post (secrets cc-basic-secret, cc-post-secret), cc-jwt.

import * as crypto from 'node:crypto';
import * as http from 'node:http';
import { parseArgs } from 'node:util';

// oidc-provider prints its notices with console.info, which goes to stdout. stdout belongs to
// the single JSON line, so send every console channel to stderr before loading the library.
for (const name of ['log', 'info', 'debug']) {
  console[name] = (...args) => console.error(...args);
}

const { default: Provider, errors } = await import('oidc-provider');

// ---------------------------------------------------------------------------------------------
// Command line

const { values: argv } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    'access-ttl': { type: 'string', default: '60' },
    format: { type: 'string', default: 'opaque' },
    'resource-url': { type: 'string', multiple: true, default: [] },
  },
  strict: true,
});

const port = Number.parseInt(argv.port, 10);
const accessTTL = Number.parseInt(argv['access-ttl'], 10);
const accessTokenFormat = argv.format;
const resources = argv['resource-url'];

if (!Number.isInteger(port) || port < 0 || port > 65535) {
  throw new Error(`--port must be an integer in 0..65535, got ${argv.port}`);
}
if (!Number.isInteger(accessTTL) || accessTTL <= 0) {
  throw new Error(`--access-ttl must be a positive integer, got ${argv['access-ttl']}`);
}
if (!['opaque', 'jwt'].includes(accessTokenFormat)) {
  throw new Error(`--format must be opaque or jwt, got ${accessTokenFormat}`);
}
for (const resource of resources) {
  if (!URL.canParse(resource)) {
    throw new Error(`--resource-url must be an absolute URL, got ${resource}`);
  }
}

const log = (...args) => console.error('[oidc]', ...args);

// ---------------------------------------------------------------------------------------------
// Storage: an unbounded in-memory adapter.
//
// The adapter bundled with oidc-provider keeps at most ~1000 entries (an LRU of two
// generations), so a long stress test would silently lose grants, clients and refresh tokens
// and see spurious invalid_grant / invalid_client. This one keeps everything until it expires,
// and lets the admin endpoints enumerate grants.

const store = new Map(); // "Model:id" -> { payload, expiresAt }
const grantMembers = new Map(); // grantId -> Set of "Model:id" keys issued under that grant
const sessionUids = new Map(); // session uid -> session id
const userCodes = new Map(); // device user code -> id

const GRANTABLE = new Set([
  'AccessToken',
  'AuthorizationCode',
  'RefreshToken',
  'DeviceCode',
  'BackchannelAuthenticationRequest',
  'PreAuthorizedCode',
]);

function live(key) {
  const entry = store.get(key);
  if (!entry) return undefined;
  if (entry.expiresAt !== undefined && entry.expiresAt <= Date.now()) {
    dropKey(key);
    return undefined;
  }
  return entry.payload;
}

function dropKey(key) {
  const entry = store.get(key);
  store.delete(key);
  const payload = entry?.payload;
  if (!payload) return;
  if (payload.grantId) grantMembers.get(payload.grantId)?.delete(key);
  const id = key.slice(key.indexOf(':') + 1);
  if (payload.uid && sessionUids.get(payload.uid) === id) sessionUids.delete(payload.uid);
  if (payload.userCode && userCodes.get(payload.userCode) === id) userCodes.delete(payload.userCode);
}

function revokeGrantMembers(grantId) {
  const members = grantMembers.get(grantId);
  grantMembers.delete(grantId);
  for (const key of members ?? []) dropKey(key);
}

class UnboundedMemoryAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    if (store.has(key)) dropKey(key);
    const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : undefined;
    store.set(key, { payload, expiresAt });
    if (GRANTABLE.has(this.model) && payload.grantId) {
      if (!grantMembers.has(payload.grantId)) grantMembers.set(payload.grantId, new Set());
      grantMembers.get(payload.grantId).add(key);
    }
    if (this.model === 'Session' && payload.uid) sessionUids.set(payload.uid, id);
    if (payload.userCode) userCodes.set(payload.userCode, id);
  }

  async find(id) {
    return live(this.key(id));
  }

  async findByUid(uid) {
    const id = sessionUids.get(uid);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = userCodes.get(userCode);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const payload = live(this.key(id));
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    dropKey(this.key(id));
  }

  async revokeByGrantId(grantId) {
    revokeGrantMembers(grantId);
  }
}

// ---------------------------------------------------------------------------------------------
// Accounts, keys, counters

let currentAccount = 'alice';

const stats = {};
function resetStats() {
  Object.assign(stats, {
    refresh_success: 0,
    code_success: 0,
    refresh_errors: [],
    code_errors: [],
    replays: 0,
    grant_revoked: 0,
    admin_revoked: 0,
    registrations: 0,
    client_credentials_success: 0,
    // Wall-clock milliseconds of every token issued (refresh or code), so a benchmark can
    // tell which of its requests were in flight while a token was being replaced.
    issued_at: [],
  });
}
resetStats();

// The exact error_detail oidc-provider 9.13.3 gives a replayed (already rotated) refresh token,
// lib/actions/grants/refresh_token.js: `throw new InvalidGrant('refresh token already used')`.
// It then destroys that token and revokes the whole grant.
const REPLAY_DETAIL = 'refresh token already used';

const signingKey = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
const jwk = { ...signingKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), use: 'sig', alg: 'RS256' };

const INTROSPECTOR = 'introspector';

// Machine clients (client_credentials grant), one per token endpoint auth method. The
// private_key_jwt client's key pair is made here; tests fetch the private half from
// GET /__admin/cc-jwt-key (loopback, test-only) and sign their own assertions with it.
const ccJwtKey = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const ccJwtPrivatePem = ccJwtKey.privateKey.export({ format: 'pem', type: 'pkcs8' });
const ccJwtPublicJwk = { ...ccJwtKey.publicKey.export({ format: 'jwk' }), alg: 'ES256', use: 'sig' };
const machineClient = (clientId, method, extra) => ({
  client_id: clientId,
  token_endpoint_auth_method: method,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope: 'mcp mcp:read mcp:write',
  ...extra,
});
const MACHINE_CLIENTS = [
  machineClient('cc-basic', 'client_secret_basic', { client_secret: 'cc-basic-secret' }),
  machineClient('cc-post', 'client_secret_post', { client_secret: 'cc-post-secret' }),
  machineClient('cc-jwt', 'private_key_jwt', {
    token_endpoint_auth_signing_alg: 'ES256',
    jwks: { keys: [ccJwtPublicJwk] },
  }),
];

// ---------------------------------------------------------------------------------------------
// Provider

function buildProvider(issuer) {
  const configuration = {
    adapter: UnboundedMemoryAdapter,
    jwks: { keys: [jwk] },
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },

    clients: [
      {
        client_id: INTROSPECTOR,
        client_secret: 'introspector-secret',
        // clientDefaults apply to static clients too, so set these explicitly.
        token_endpoint_auth_method: 'client_secret_basic',
        grant_types: [],
        response_types: [],
        redirect_uris: [],
      },
      ...MACHINE_CLIENTS,
    ],
    clientDefaults: {
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      id_token_signed_response_alg: 'RS256',
    },

    responseTypes: ['code'],
    scopes: ['openid', 'offline_access', 'mcp', 'mcp:read', 'mcp:write'],
    claims: { openid: ['sub'] },

    findAccount(_ctx, sub) {
      return {
        accountId: sub,
        async claims() {
          return { sub };
        },
      };
    },

    pkce: { required: () => true }, // S256 is the only method oidc-provider 9 implements

    rotateRefreshToken: true,
    // A refresh token for every client allowed the refresh_token grant, offline_access or not.
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    // Refresh tokens outlive the browser session used to approve the login.
    expiresWithSession: async () => false,

    ttl: {
      AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? accessTTL,
      AuthorizationCode: 60,
      IdToken: 3600,
      RefreshToken: 14 * 24 * 3600,
      Interaction: 3600,
      Session: 14 * 24 * 3600,
      Grant: 14 * 24 * 3600,
    },

    interactions: {
      url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
    },

    features: {
      devInteractions: { enabled: false },
      registration: { enabled: true },
      clientCredentials: { enabled: true },
      introspection: {
        enabled: true,
        // The introspector may look at any token; other clients only at their own.
        allowedPolicy: async (ctx, client, token) => (
          client.clientId === INTROSPECTOR || token.clientId === client.clientId
        ),
      },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (_ctx, _client, oneOf) => {
          if (oneOf) return Array.isArray(oneOf) ? oneOf[0] : oneOf;
          return resources[0];
        },
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, resourceIndicator) => {
          if (resources.length && !resources.includes(resourceIndicator)) {
            throw new errors.InvalidTarget(`unknown resource ${resourceIndicator}`);
          }
          return {
            audience: resourceIndicator,
            scope: 'mcp mcp:read mcp:write',
            accessTokenFormat,
            accessTokenTTL: accessTTL,
          };
        },
      },
    },
  };

  const provider = new Provider(issuer, configuration);

  provider.on('grant.success', (ctx) => {
    const grantType = ctx.oidc?.params?.grant_type;
    if (grantType === 'refresh_token') stats.refresh_success += 1;
    else if (grantType === 'authorization_code') stats.code_success += 1;
    else if (grantType === 'client_credentials') stats.client_credentials_success += 1;
    stats.issued_at.push(Date.now());
  });

  provider.on('grant.error', (ctx, err) => {
    const grantType = ctx.oidc?.params?.grant_type;
    const error = err?.error ?? err?.name ?? 'unknown';
    const detail = err?.error_detail ?? err?.error_description ?? err?.message ?? '';
    log(`grant.error grant_type=${grantType} error=${error} detail=${detail}`);
    if (grantType === 'refresh_token') {
      stats.refresh_errors.push({ error, detail });
      if (detail === REPLAY_DETAIL) stats.replays += 1;
    } else if (grantType === 'authorization_code') {
      stats.code_errors.push({ error, detail });
    }
  });

  provider.on('grant.revoked', (_ctx, grantId) => {
    stats.grant_revoked += 1;
    log(`grant.revoked ${grantId}`);
  });

  provider.on('registration_create.success', () => {
    stats.registrations += 1;
  });

  for (const event of ['server_error', 'authorization.error', 'registration_create.error',
    'introspection.error', 'revocation.error', 'userinfo.error']) {
    provider.on(event, (_ctx, err) => {
      log(`${event} error=${err?.error ?? err?.name} detail=${err?.error_detail ?? err?.message}`);
    });
  }

  return provider;
}

// ---------------------------------------------------------------------------------------------
// Interactions: approve everything at once

async function interaction(provider, req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session, grantId } = details;

  if (prompt.name === 'login') {
    await provider.interactionFinished(req, res, { login: { accountId: currentAccount } }, {
      mergeWithLastSubmission: false,
    });
    return;
  }

  if (prompt.name === 'consent') {
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (!grant) throw new Error(`grant ${grantId} not found during consent`);

    const { missingOIDCScope, missingOIDCClaims, missingResourceScopes } = prompt.details;
    if (missingOIDCScope) grant.addOIDCScope(missingOIDCScope.join(' '));
    if (missingOIDCClaims) grant.addOIDCClaims(missingOIDCClaims);
    if (missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(missingResourceScopes)) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
    }
    const savedGrantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId: savedGrantId } }, {
      mergeWithLastSubmission: true,
    });
    return;
  }

  throw new Error(`unexpected prompt ${prompt.name}`);
}

// ---------------------------------------------------------------------------------------------
// Admin endpoints

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : {};
}

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
  });
  res.end(text);
}

async function revokeAll(provider) {
  const grantIds = [];
  for (const key of [...store.keys()]) {
    if (key.startsWith('Grant:') && live(key)) grantIds.push(key.slice('Grant:'.length));
  }
  for (const grantId of grantIds) {
    // Same effect as oidc-provider's own grant revocation: every token under the grant goes,
    // then the grant itself.
    await provider.AccessToken.adapter.revokeByGrantId(grantId);
    await provider.Grant.adapter.destroy(grantId);
  }
  // Tokens whose grant record already expired or vanished still carry a grantId.
  for (const grantId of [...grantMembers.keys()]) revokeGrantMembers(grantId);
  stats.admin_revoked += grantIds.length;
  log(`admin revoke-all: ${grantIds.length} grant(s)`);
  return grantIds.length;
}

async function admin(provider, req, res, path) {
  if (req.method === 'GET' && path === '/__admin/stats') {
    sendJson(res, 200, stats);
  } else if (req.method === 'GET' && path === '/__admin/cc-jwt-key') {
    sendJson(res, 200, { client_id: 'cc-jwt', private_key_pem: ccJwtPrivatePem });
  } else if (req.method === 'POST' && path === '/__admin/reset-stats') {
    resetStats();
    sendJson(res, 200, stats);
  } else if (req.method === 'POST' && path === '/__admin/account') {
    const body = await readJson(req);
    if (typeof body.account !== 'string' || !body.account) {
      sendJson(res, 400, { error: 'account must be a non-empty string' });
      return;
    }
    currentAccount = body.account;
    log(`admin account -> ${currentAccount}`);
    sendJson(res, 200, { account: currentAccount });
  } else if (req.method === 'POST' && path === '/__admin/revoke-all') {
    sendJson(res, 200, { revoked: await revokeAll(provider) });
  } else {
    sendJson(res, 404, { error: 'not found' });
  }
}

// ---------------------------------------------------------------------------------------------
// Server

let provider;
let providerHandler;

const server = http.createServer((req, res) => {
  const path = new URL(req.url, 'http://127.0.0.1').pathname;
  let work;
  if (path.startsWith('/__admin/')) {
    work = admin(provider, req, res, path);
  } else if (req.method === 'GET' && /^\/interaction\/[^/]+$/.test(path)) {
    work = interaction(provider, req, res);
  } else {
    providerHandler(req, res);
    return;
  }
  work.catch((err) => {
    log(`${req.method} ${path} failed:`, err);
    if (!res.headersSent) sendJson(res, 500, { error: 'harness_error', detail: String(err?.message ?? err) });
    else res.end();
  });
});

server.listen(port, '127.0.0.1', () => {
  const actualPort = server.address().port;
  const issuer = `http://127.0.0.1:${actualPort}`;
  provider = buildProvider(issuer);
  providerHandler = provider.callback();
  log(`listening issuer=${issuer} format=${accessTokenFormat} access_ttl=${accessTTL} resources=${JSON.stringify(resources)}`);
  // Spaced like Python's json.dumps, so the line reads the same from either side.
  process.stdout.write(`{"issuer": ${JSON.stringify(issuer)}, "port": ${actualPort}}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}
