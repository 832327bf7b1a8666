// A loopback OAuth authorization server for grantkeeper's tests, built on oidc-provider 9.
//
//   node server.mjs --port 0 --access-ttl 60 --format opaque|jwt [--resource-url URL]...
//                   [--state-dir DIR] [--omit-expires-in] [--issuer URL]
//
// Once listening it prints exactly one JSON line to stdout:
//   {"issuer": "http://127.0.0.1:PORT", "port": PORT}
// Everything else goes to stderr. All state lives in memory and dies with the process,
// unless --state-dir names a directory: then keys, clients, grants, tokens and the counters
// are kept there and a restart on the same port carries on where the last process stopped.
// --omit-expires-in drops expires_in from every token response (GitHub OAuth apps, Slack).
// --no-par turns pushed authorization requests (RFC 9126) off; --require-par takes no other.
// --dpop off|on|nonce: DPoP (RFC 9449) off (the default here: tokens are Bearer), on, or on
// with a nonce required in every proof (400 use_dpop_nonce until one is sent).
// --issuer sets the issuer URL, for a loopback proxy in front of the server (the server
// still listens on --port).
// --tls-cert FILE --tls-key FILE serve HTTPS with that certificate chain and key (PEM), for a
// private CA's server certificate: the issuer is then https://127.0.0.1:PORT.
//
// Test-only admin endpoints (no authentication; loopback only):
//   GET  /__admin/stats        counters as JSON
//   POST /__admin/reset-stats  zero the counters
//   POST /__admin/account      {"account": "bob"}: account used by later logins
//   POST /__admin/revoke-all   revoke every grant and every token issued under it
//   GET  /__admin/cc-jwt-key   the private key of the private_key_jwt machine client "cc-jwt"
// Machine clients: cc-basic / cc-post (secrets cc-basic-secret, cc-post-secret), cc-jwt.
//
// Cross-app access (the enterprise-managed authorization draft), two roles, one per process:
//   --cross-app-idp       play the enterprise IdP: client xaa-idp-client (secret
//                         xaa-idp-secret) signs users in (OIDC code flow, redirect
//                         http://127.0.0.1/xaa-idp-callback) and exchanges their ID token
//                         (RFC 8693) for an ID-JAG JWT naming client xaa-app at the audience.
//   --trust-idp ISSUER    play the MCP server's AS: client xaa-app (secret xaa-app-secret)
//                         trades an ID-JAG from ISSUER (RFC 7523 jwt-bearer) for an access
//                         token to the resource it names.
//
// Workload identity federation (SEP-1933):
//   --trust-workload ISSUER --workload-jwks FILE
//                         client wif-workload (public: no secret) trades a JWT from ISSUER,
//                         signed RS256 by a key in FILE (a JWKS, read at every request, so
//                         a test rotates the issuer's keys by rewriting it), with this AS as
//                         audience, for an access token (RFC 7523 jwt-bearer). A workload
//                         token is reusable until it expires (as Kubernetes projected
//                         tokens are); stats.workload_assertions lists the jti of every one
//                         received, accepted or not.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as nodePath from 'node:path';
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
    'state-dir': { type: 'string' },
    'omit-expires-in': { type: 'boolean', default: false },
    issuer: { type: 'string' },
    'cross-app-idp': { type: 'boolean', default: false },
    'trust-idp': { type: 'string' },
    'no-par': { type: 'boolean', default: false },
    'require-par': { type: 'boolean', default: false },
    dpop: { type: 'string', default: 'off' },
    'trust-workload': { type: 'string' },
    'workload-jwks': { type: 'string' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
  },
  strict: true,
});

const port = Number.parseInt(argv.port, 10);
const accessTTL = Number.parseInt(argv['access-ttl'], 10);
const accessTokenFormat = argv.format;
const resources = argv['resource-url'];
const stateDir = argv['state-dir'];
const omitExpiresIn = argv['omit-expires-in'];
const issuerOverride = argv.issuer;
const crossAppIdp = argv['cross-app-idp'];
const trustedIdp = argv['trust-idp'];
const pushedRequests = !argv['no-par'];
const requirePushed = argv['require-par'];
const dpopMode = argv.dpop;
const trustedWorkloadIssuer = argv['trust-workload'];
const workloadJwksPath = argv['workload-jwks'];
const tlsCert = argv['tls-cert'];
const tlsKey = argv['tls-key'];
if (Boolean(tlsCert) !== Boolean(tlsKey)) {
  throw new Error('--tls-cert and --tls-key go together');
}
if (Boolean(trustedWorkloadIssuer) !== Boolean(workloadJwksPath)) {
  throw new Error('--trust-workload and --workload-jwks go together');
}
if (!['off', 'on', 'nonce'].includes(dpopMode)) {
  throw new Error(`--dpop must be off, on or nonce, got ${dpopMode}`);
}

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
if (issuerOverride !== undefined && !URL.canParse(issuerOverride)) {
  throw new Error(`--issuer must be an absolute URL, got ${issuerOverride}`);
}
if (trustedIdp !== undefined && !URL.canParse(trustedIdp)) {
  throw new Error(`--trust-idp must be an absolute URL, got ${trustedIdp}`);
}
if (stateDir !== undefined && !fs.statSync(stateDir, { throwIfNoEntry: false })?.isDirectory()) {
  throw new Error(`--state-dir must be an existing directory, got ${stateDir}`);
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
    const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : undefined;
    putKey(key, payload, expiresAt);
    journal({ op: 'upsert', key, payload, expiresAt });
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
    const key = this.key(id);
    const payload = live(key);
    if (payload) {
      payload.consumed = Math.floor(Date.now() / 1000);
      journal({ op: 'consume', key, consumed: payload.consumed });
    }
  }

  async destroy(id) {
    const key = this.key(id);
    dropKey(key);
    journal({ op: 'destroy', key });
  }

  async revokeByGrantId(grantId) {
    revokeGrant(grantId);
  }
}

// ---------------------------------------------------------------------------------------------
// Persistence (--state-dir): the adapter's changes in an append-only journal.
//
// Each change is appended synchronously before the adapter call returns, so no answer the
// server sends describes state the journal lacks: a process stopped at any point (SIGKILL
// too; the kernel keeps what was written) restarts with every client, grant and token it
// answered for, consumed refresh tokens included, so a replay is still detected. Start-up
// replays the journal and rewrites it compacted.

const journalPath = stateDir && nodePath.join(stateDir, 'adapter.jsonl');
let journalFd;

function journal(entry) {
  if (journalFd !== undefined) fs.writeSync(journalFd, `${JSON.stringify(entry)}\n`);
}

function putKey(key, payload, expiresAt) {
  if (store.has(key)) dropKey(key);
  store.set(key, { payload, expiresAt });
  const model = key.slice(0, key.indexOf(':'));
  const id = key.slice(key.indexOf(':') + 1);
  if (GRANTABLE.has(model) && payload.grantId) {
    if (!grantMembers.has(payload.grantId)) grantMembers.set(payload.grantId, new Set());
    grantMembers.get(payload.grantId).add(key);
  }
  if (model === 'Session' && payload.uid) sessionUids.set(payload.uid, id);
  if (payload.userCode) userCodes.set(payload.userCode, id);
}

function revokeGrant(grantId) {
  revokeGrantMembers(grantId);
  journal({ op: 'revoke', grantId });
}

function replay(entry) {
  if (entry.op === 'upsert') putKey(entry.key, entry.payload, entry.expiresAt);
  else if (entry.op === 'consume') {
    const payload = live(entry.key);
    if (payload) payload.consumed = entry.consumed;
  } else if (entry.op === 'destroy') dropKey(entry.key);
  else if (entry.op === 'revoke') revokeGrantMembers(entry.grantId);
  else throw new Error(`unknown journal entry ${entry.op}`);
}

// Writes `text` to `path` so that a reader sees the old file or the new one, never half.
function writeAtomic(path, text) {
  const temp = `${path}.tmp`;
  fs.writeFileSync(temp, text, { mode: 0o600 });
  fs.renameSync(temp, path);
}

function openJournal() {
  if (!journalPath) return;
  const lines = fs.existsSync(journalPath) ? fs.readFileSync(journalPath, 'utf8').split('\n') : [];
  let replayed = 0;
  for (const [index, line] of lines.entries()) {
    if (!line) continue;
    let entry;
    try {
      entry = JSON.parse(line);
    } catch (err) {
      // Only the last line can be torn (the process died mid-append); it was never answered.
      if (index >= lines.length - 2) break;
      throw new Error(`${journalPath} line ${index + 1} is corrupt: ${err.message}`);
    }
    replay(entry);
    replayed += 1;
  }
  const compacted = [];
  for (const key of [...store.keys()]) {
    const payload = live(key);
    if (payload) compacted.push(JSON.stringify({ op: 'upsert', key, payload, expiresAt: store.get(key).expiresAt }));
  }
  writeAtomic(journalPath, compacted.map((line) => `${line}\n`).join(''));
  journalFd = fs.openSync(journalPath, 'a', 0o600);
  log(`state dir ${stateDir}: replayed ${replayed} change(s), kept ${compacted.length} entr(ies)`);
}

// ---------------------------------------------------------------------------------------------
// Accounts, keys, counters

let currentAccount = 'alice';

const stats = {};
const statsPath = stateDir && nodePath.join(stateDir, 'stats.json');
// With --state-dir the counters survive a restart too, so a test counts across it.
function saveStats() {
  if (statsPath) writeAtomic(statsPath, JSON.stringify(stats));
}
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
    token_exchange_success: 0,
    jwt_bearer_success: 0,
    cross_app_errors: [],
    // DPoP: token answers whose token is DPoP-bound, and 400 use_dpop_nonce answers (kept
    // out of the error lists: a nonce challenge processes nothing).
    dpop_tokens: 0,
    dpop_nonce_challenges: 0,
    // Workload identity: the jti of every workload JWT a jwt-bearer request carried.
    workload_assertions: [],
    // Wall-clock milliseconds of every token issued (refresh or code), so a benchmark can
    // tell which of its requests were in flight while a token was being replaced.
    issued_at: [],
  });
  saveStats();
}
if (statsPath && fs.existsSync(statsPath)) Object.assign(stats, JSON.parse(fs.readFileSync(statsPath, 'utf8')));
else resetStats();

// The exact error_detail oidc-provider 9.13.3 gives a replayed (already rotated) refresh token,
// lib/actions/grants/refresh_token.js: `throw new InvalidGrant('refresh token already used')`.
// It then destroys that token and revokes the whole grant.
const REPLAY_DETAIL = 'refresh token already used';

// A new key pair, as KeyObjects that share nothing with the key generation job.
//
// Node 20 can deadlock here: when a garbage collection runs while a freshly generated key is
// being exported (a JWK export allocates while it holds the key's mutex), the dead KeyGenJob's
// destructor takes that same mutex, and the process hangs for good before it listens (seen
// about once in 40 starts: gdb shows ~KeyGenJob in uv_mutex_lock under ExportJWK). So the job
// encodes the keys itself, as PEM, while it is alive, and the keys in use are parsed afresh.
function generateKeyPair(type, options) {
  const { privateKey } = crypto.generateKeyPairSync(type, {
    ...options,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  const parsed = crypto.createPrivateKey(privateKey);
  return { privateKey: parsed, publicKey: crypto.createPublicKey(parsed) };
}

// Signing and cookie keys: new each start, or kept in the state dir so that ID tokens, JWT
// access tokens and browser cookies issued before a restart still verify after it.
function makeKeys() {
  const signingKey = generateKeyPair('rsa', { modulusLength: 2048 }).privateKey;
  return {
    jwk: { ...signingKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), use: 'sig', alg: 'RS256' },
    cookieKey: crypto.randomBytes(32).toString('base64url'),
  };
}
const keysPath = stateDir && nodePath.join(stateDir, 'keys.json');
let keys;
if (keysPath && fs.existsSync(keysPath)) keys = JSON.parse(fs.readFileSync(keysPath, 'utf8'));
else {
  keys = makeKeys();
  if (keysPath) writeAtomic(keysPath, JSON.stringify(keys));
}
const { jwk } = keys;

const INTROSPECTOR = 'introspector';

// Machine clients (client_credentials grant), one per token endpoint auth method. The
// private_key_jwt client's key pair is made here; tests fetch the private half from
// GET /__admin/cc-jwt-key (loopback, test-only) and sign their own assertions with it.
const ccJwtKey = generateKeyPair('ec', { namedCurve: 'P-256' });
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
// Cross-app access: RFC 8693 token exchange at the IdP, RFC 7523 jwt-bearer grant at the AS.
// oidc-provider has neither built in; both go in through its registerGrantType API.

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const ID_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:id_token';
const ID_JAG_TYPE = 'urn:ietf:params:oauth:token-type:id-jag';
const ID_JAG_TYP = 'oauth-id-jag+jwt';
const ID_JAG_TTL = 300;
const CLOCK_TOLERANCE = 30;
// The IdP's map from its own client to that application's client at the MCP server's AS
// (the draft's client_id claim): one application here.
const XAA_IDP_CLIENT = 'xaa-idp-client';
const XAA_APP_CLIENT = 'xaa-app';
const WIF_CLIENT = 'wif-workload';

function resourceServerInfo(resourceIndicator) {
  if (resources.length && !resources.includes(resourceIndicator)) {
    throw new errors.InvalidTarget(`unknown resource ${resourceIndicator}`);
  }
  return {
    audience: resourceIndicator,
    scope: 'mcp mcp:read mcp:write',
    accessTokenFormat,
    accessTokenTTL: accessTTL,
  };
}

function crossAppClients() {
  const clients = [];
  if (crossAppIdp) {
    clients.push({
      client_id: XAA_IDP_CLIENT,
      client_secret: 'xaa-idp-secret',
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['authorization_code', TOKEN_EXCHANGE],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/xaa-idp-callback'],
    });
  }
  if (trustedWorkloadIssuer) {
    clients.push({
      client_id: WIF_CLIENT,
      token_endpoint_auth_method: 'none',
      grant_types: [JWT_BEARER],
      response_types: [],
      redirect_uris: [],
      scope: 'mcp mcp:read mcp:write',
    });
  }
  if (trustedIdp) {
    clients.push({
      client_id: XAA_APP_CLIENT,
      client_secret: 'xaa-app-secret',
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: [JWT_BEARER],
      response_types: [],
      redirect_uris: [],
      scope: 'mcp mcp:read mcp:write',
    });
  }
  return clients;
}

const epoch = () => Math.floor(Date.now() / 1000);

function signJwt(header, payload) {
  const input = `${Buffer.from(JSON.stringify(header)).toString('base64url')}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}`;
  const key = crypto.createPrivateKey({ key: jwk, format: 'jwk' });
  return `${input}.${crypto.sign('sha256', Buffer.from(input), key).toString('base64url')}`;
}

// RS256 only (what both roles sign with); anything else, "none" included, does not verify.
function verifyJwt(jwt, publicJwks) {
  const parts = typeof jwt === 'string' ? jwt.split('.') : [];
  if (parts.length !== 3) throw new Error('not a compact JWS');
  const header = JSON.parse(Buffer.from(parts[0], 'base64url').toString('utf8'));
  const payload = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
  if (header.alg !== 'RS256') throw new Error(`alg ${header.alg} is not accepted`);
  const candidates = publicJwks.filter((k) => k.kty === 'RSA' && (!header.kid || k.kid === header.kid));
  const input = Buffer.from(`${parts[0]}.${parts[1]}`);
  const signature = Buffer.from(parts[2], 'base64url');
  const ok = candidates.some((k) => crypto.verify(
    'sha256', input, crypto.createPublicKey({ key: { kty: k.kty, n: k.n, e: k.e }, format: 'jwk' }), signature,
  ));
  if (!ok) throw new Error('signature does not verify with the issuer keys');
  if (typeof payload !== 'object' || payload === null) throw new Error('payload is not an object');
  if (typeof payload.exp !== 'number' || payload.exp + CLOCK_TOLERANCE <= epoch()) throw new Error('expired');
  return { header, payload };
}

const audiences = (aud) => (Array.isArray(aud) ? aud : [aud]);

// The IdP: the user's ID token, issued by this IdP to the exchanging client, becomes an
// ID-JAG for the audience (the MCP server's AS) and resource asked for.
async function tokenExchange(ctx) {
  const { params, client, provider } = ctx.oidc;
  for (const name of ['subject_token', 'subject_token_type', 'requested_token_type', 'audience']) {
    if (!params[name]) throw new errors.InvalidRequest(`missing required parameter '${name}'`);
  }
  if (params.subject_token_type !== ID_TOKEN_TYPE) {
    throw new errors.InvalidRequest('subject_token_type must be an ID token');
  }
  if (params.requested_token_type !== ID_JAG_TYPE) {
    throw new errors.InvalidRequest('requested_token_type must be an ID-JAG');
  }
  let idToken;
  try {
    idToken = verifyJwt(params.subject_token, [jwk]).payload;
  } catch (err) {
    throw new errors.InvalidGrant(`subject_token is not a valid ID token: ${err.message}`);
  }
  if (idToken.iss !== provider.issuer) throw new errors.InvalidGrant('subject_token was issued by another issuer');
  if (!audiences(idToken.aud).includes(client.clientId)) {
    throw new errors.InvalidGrant('subject_token was issued to another client');
  }
  if (typeof idToken.sub !== 'string' || !idToken.sub) throw new errors.InvalidGrant('subject_token has no subject');
  const now = epoch();
  const claims = {
    iss: provider.issuer,
    sub: idToken.sub,
    aud: params.audience,
    client_id: XAA_APP_CLIENT,
    jti: crypto.randomUUID(),
    iat: now,
    exp: now + ID_JAG_TTL,
    ...(params.resource ? { resource: params.resource } : {}),
    ...(params.scope ? { scope: params.scope } : {}),
  };
  ctx.body = {
    access_token: signJwt({ alg: 'RS256', typ: ID_JAG_TYP, kid: jwk.kid }, claims),
    issued_token_type: ID_JAG_TYPE,
    token_type: 'N_A',
    expires_in: ID_JAG_TTL,
    ...(params.scope ? { scope: params.scope } : {}),
  };
}

let trustedKeys;
async function trustedIdpKeys(refresh) {
  if (!trustedKeys || refresh) {
    const config = await (await fetch(`${trustedIdp}/.well-known/openid-configuration`)).json();
    trustedKeys = (await (await fetch(config.jwks_uri)).json()).keys;
  }
  return trustedKeys;
}

const spentJtis = new Map(); // jti -> exp: an ID-JAG is good for one access token

// The AS: an ID-JAG from the trusted IdP, for this AS and the authenticated client, becomes
// an access token for the user it names, under a grant (so revoke-all reaches it).
async function jwtBearer(ctx) {
  const { params } = ctx.oidc;
  if (!params.assertion) throw new errors.InvalidRequest("missing required parameter 'assertion'");
  let typ;
  try {
    typ = JSON.parse(Buffer.from(String(params.assertion).split('.')[0], 'base64url').toString('utf8')).typ;
  } catch {
    throw new errors.InvalidGrant('the assertion is not a JWT');
  }
  if (typ === ID_JAG_TYP && trustedIdp) return idJagGrant(ctx);
  if (typ !== ID_JAG_TYP && trustedWorkloadIssuer) return workloadGrant(ctx);
  throw new errors.InvalidGrant(`no trusted issuer takes this assertion (typ ${typ})`);
}

async function idJagGrant(ctx) {
  const { params, client, provider } = ctx.oidc;
  let verified;
  try {
    verified = verifyJwt(params.assertion, await trustedIdpKeys(false));
  } catch {
    try {
      verified = verifyJwt(params.assertion, await trustedIdpKeys(true)); // the IdP rotated
    } catch (err) {
      throw new errors.InvalidGrant(`the assertion does not verify: ${err.message}`);
    }
  }
  const { payload: jag } = verified;
  if (jag.iss !== trustedIdp) throw new errors.InvalidGrant('the assertion issuer is not trusted');
  if (!audiences(jag.aud).includes(provider.issuer)) throw new errors.InvalidGrant('the assertion is for another audience');
  if (jag.client_id !== client.clientId) throw new errors.InvalidGrant('the assertion is for another client');
  if (typeof jag.sub !== 'string' || !jag.sub) throw new errors.InvalidGrant('the assertion has no subject');
  if (typeof jag.iat !== 'number' || jag.iat > epoch() + CLOCK_TOLERANCE) throw new errors.InvalidGrant('the assertion is not yet valid');
  for (const [jti, exp] of spentJtis) if (exp + CLOCK_TOLERANCE <= epoch()) spentJtis.delete(jti);
  if (typeof jag.jti !== 'string' || spentJtis.has(jag.jti)) throw new errors.InvalidGrant('the assertion was already used');
  const resource = jag.resource ?? resources[0];
  if (!resource) throw new errors.InvalidTarget('the assertion names no resource');
  if (params.resource && params.resource !== resource) throw new errors.InvalidTarget('resource differs from the assertion');
  const issue = await issuerFor(ctx, jag.sub, resource, jag.scope);
  spentJtis.set(jag.jti, jag.exp);
  await issue();
}

// A workload's own JWT from the trusted workload issuer (a Kubernetes cluster, a CI
// platform), for this AS, becomes an access token for the workload it names.
async function workloadGrant(ctx) {
  const { params, client, provider } = ctx.oidc;
  try {
    const claims = JSON.parse(Buffer.from(params.assertion.split('.')[1], 'base64url').toString('utf8'));
    stats.workload_assertions.push(typeof claims.jti === 'string' ? claims.jti : null);
  } catch {
    stats.workload_assertions.push(null);
  }
  saveStats();
  if (client.clientId !== WIF_CLIENT) throw new errors.UnauthorizedClient('this client may not present workload tokens');
  let claims;
  try {
    claims = verifyJwt(params.assertion, JSON.parse(fs.readFileSync(workloadJwksPath, 'utf8')).keys).payload;
  } catch (err) {
    throw new errors.InvalidGrant(`the workload token does not verify: ${err.message}`);
  }
  if (claims.iss !== trustedWorkloadIssuer) throw new errors.InvalidGrant('the workload token issuer is not trusted');
  if (!audiences(claims.aud).includes(provider.issuer)) throw new errors.InvalidGrant('the workload token is for another audience');
  if (typeof claims.sub !== 'string' || !claims.sub) throw new errors.InvalidGrant('the workload token has no subject');
  if (typeof claims.nbf === 'number' && claims.nbf > epoch() + CLOCK_TOLERANCE) throw new errors.InvalidGrant('the workload token is not yet valid');
  const resource = params.resource ?? resources[0];
  if (!resource) throw new errors.InvalidTarget('no resource named');
  await (await issuerFor(ctx, claims.sub, resource, undefined))();
}

// Checks the scope asked for against what the assertion allows, then returns the function
// that issues the access token (under a grant, so revoke-all reaches it) as the answer.
async function issuerFor(ctx, accountId, resource, allowedScope) {
  const { params, client, provider } = ctx.oidc;
  const info = resourceServerInfo(resource);
  const offered = new Set(info.scope.split(' '));
  const allowed = allowedScope === undefined ? offered : new Set(String(allowedScope).split(' '));
  const requested = (params.scope ?? allowedScope ?? '').split(' ').filter(Boolean);
  if (requested.some((s) => !allowed.has(s))) throw new errors.InvalidScope('scope exceeds the assertion');
  const scope = requested.filter((s) => offered.has(s)).join(' ');
  return async () => {
    const grant = new provider.Grant({ accountId, clientId: client.clientId });
    if (scope) grant.addResourceScope(resource, scope);
    const grantId = await grant.save();
    const token = new provider.AccessToken({
      accountId, client, grantId, gty: 'jwt_bearer', scope: scope || undefined,
    });
    token.resourceServer = new provider.ResourceServer(resource, info);
    ctx.oidc.entity('AccessToken', token);
    const value = await token.save();
    ctx.body = {
      access_token: value,
      token_type: token.tokenType,
      expires_in: token.expiration,
      ...(scope ? { scope } : {}),
    };
  };
}

function registerCrossAppGrants(provider) {
  if (crossAppIdp) {
    provider.registerGrantType(TOKEN_EXCHANGE, tokenExchange, [
      'subject_token', 'subject_token_type', 'requested_token_type', 'audience', 'resource', 'scope',
    ]);
  }
  if (trustedIdp || trustedWorkloadIssuer) {
    provider.registerGrantType(JWT_BEARER, jwtBearer, ['assertion', 'scope', 'resource']);
  }
}

// ---------------------------------------------------------------------------------------------
// Provider

function buildProvider(issuer) {
  const configuration = {
    adapter: UnboundedMemoryAdapter,
    jwks: { keys: [jwk] },
    cookies: { keys: [keys.cookieKey] },

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
      ...crossAppClients(),
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
      // On by default in oidc-provider 9; off (--no-par), a login must find out another way
      // whether the server still knows a kept client (the RFC 7592 read).
      pushedAuthorizationRequests: {
        enabled: pushedRequests,
        requirePushedAuthorizationRequests: requirePushed,
      },
      clientCredentials: { enabled: true },
      // On by default in oidc-provider 9; off here unless --dpop asks, so that a test that
      // does not ask for it gets Bearer tokens.
      dPoP: dpopMode === 'off'
        ? { enabled: false }
        : {
          enabled: true,
          ...(dpopMode === 'nonce'
            ? { nonceSecret: crypto.randomBytes(32), requireNonce: () => true }
            : {}),
        },
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
        getResourceServerInfo: async (_ctx, resourceIndicator) => resourceServerInfo(resourceIndicator),
      },
    },
  };

  const provider = new Provider(issuer, configuration);
  registerCrossAppGrants(provider);

  if (omitExpiresIn) {
    // A provider that never says how long its tokens live: drop the field from the answer
    // after oidc-provider built it (the token still expires at the server after --access-ttl).
    provider.use(async (ctx, next) => {
      await next();
      if (ctx.path === '/token' && ctx.body && typeof ctx.body === 'object') delete ctx.body.expires_in;
    });
  }

  provider.on('grant.success', (ctx) => {
    const grantType = ctx.oidc?.params?.grant_type;
    if (grantType === 'refresh_token') stats.refresh_success += 1;
    else if (grantType === 'authorization_code') stats.code_success += 1;
    else if (grantType === 'client_credentials') stats.client_credentials_success += 1;
    else if (grantType === TOKEN_EXCHANGE) stats.token_exchange_success += 1;
    else if (grantType === JWT_BEARER) stats.jwt_bearer_success += 1;
    stats.issued_at.push(Date.now());
    saveStats();
  });

  provider.use(async (ctx, next) => {
    await next();
    if (ctx.path === '/token' && ctx.body && typeof ctx.body === 'object') {
      if (ctx.body.token_type === 'DPoP') stats.dpop_tokens += 1;
      if (ctx.body.error === 'use_dpop_nonce') stats.dpop_nonce_challenges += 1;
    }
  });

  provider.on('grant.error', (ctx, err) => {
    const grantType = ctx.oidc?.params?.grant_type;
    const error = err?.error ?? err?.name ?? 'unknown';
    if (error === 'use_dpop_nonce') return; // counted above: nothing was processed
    const detail = err?.error_detail ?? err?.error_description ?? err?.message ?? '';
    log(`grant.error grant_type=${grantType} error=${error} detail=${detail}`);
    if (grantType === 'refresh_token') {
      stats.refresh_errors.push({ error, detail });
      if (detail === REPLAY_DETAIL) stats.replays += 1;
    } else if (grantType === 'authorization_code') {
      stats.code_errors.push({ error, detail });
    } else if (grantType === TOKEN_EXCHANGE || grantType === JWT_BEARER) {
      stats.cross_app_errors.push({ grant_type: grantType, error, detail });
    }
    saveStats();
  });

  provider.on('grant.revoked', (_ctx, grantId) => {
    stats.grant_revoked += 1;
    saveStats();
    log(`grant.revoked ${grantId}`);
  });

  provider.on('registration_create.success', () => {
    stats.registrations += 1;
    saveStats();
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
  for (const grantId of [...grantMembers.keys()]) revokeGrant(grantId);
  stats.admin_revoked += grantIds.length;
  saveStats();
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

function handle(req, res) {
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
}

const server = tlsCert
  ? https.createServer({ cert: fs.readFileSync(tlsCert), key: fs.readFileSync(tlsKey) }, handle)
  : http.createServer(handle);

openJournal();

server.listen(port, '127.0.0.1', () => {
  const actualPort = server.address().port;
  const issuer = issuerOverride ?? `${tlsCert ? 'https' : 'http'}://127.0.0.1:${actualPort}`;
  provider = buildProvider(issuer);
  providerHandler = provider.callback();
  log(`listening issuer=${issuer} format=${accessTokenFormat} access_ttl=${accessTTL} resources=${JSON.stringify(resources)} state_dir=${stateDir ?? '-'} omit_expires_in=${omitExpiresIn}`);
  // Spaced like Python's json.dumps, so the line reads the same from either side.
  process.stdout.write(`{"issuer": ${JSON.stringify(issuer)}, "port": ${actualPort}}\n`);
});

// Stop the way a deployment does: take no new connection, let the requests in progress get
// their answers (a refresh the server processed but never answered would look lost to the
// client, and its retry would be a replay), then exit. Idle keep-alive connections close at
// once; a request arriving on one then was never read, so it was not processed either.
const DRAIN_MS = 2000;
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeIdleConnections();
    // A connection turns idle once its answer is out: close those as they turn idle.
    setInterval(() => server.closeIdleConnections(), 20).unref();
    setTimeout(() => {
      server.closeAllConnections();
      process.exit(0);
    }, DRAIN_MS).unref();
  });
}
