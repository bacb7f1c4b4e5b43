// A small OpenID Connect identity provider for atomscale-lab's demo and tests.
//
// Login is two steps: password, then a TOTP code (RFC 6238). The id_token's `amr` lists "otp" and
// "mfa" only when the code was verified; accounts marked `"mfa": false` in the users file log in with
// a password alone (amr ["pwd"]) so that a hub can be shown to refuse them. Everything is served over
// https. The signing key is generated at start with a random kid, so a restarted provider publishes
// a new JWKS entry and relying parties must refetch on an unknown kid.
//
// Configuration (environment):
//   IDP_ISSUER   public issuer URL, e.g. https://127.0.0.1:8443 (required)
//   IDP_HOST     listen address (default 127.0.0.1)      IDP_PORT  listen port (default: issuer port)
//   IDP_CERT / IDP_KEY   PEM certificate chain and key for https (required)
//   IDP_USERS    JSON users file (re-read at every login; written by `atomscale-lab idp`)
//   IDP_CLIENTS  JSON file {"clients": [{client_id, client_secret, redirect_uris}]}
//   IDP_PIDFILE  optional file to write the process id into

import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import { URL } from 'node:url';
import querystring from 'node:querystring';

import Provider, { errors } from 'oidc-provider';

const env = process.env;
function required(name) {
  if (!env[name]) {
    console.error(`idp: ${name} is not set`);
    process.exit(2);
  }
  return env[name];
}

const ISSUER = required('IDP_ISSUER');
const issuerUrl = new URL(ISSUER);
const HOST = env.IDP_HOST || '127.0.0.1';
const PORT = Number(env.IDP_PORT || issuerUrl.port || 443);
const USERS_FILE = required('IDP_USERS');
const CLIENTS_FILE = required('IDP_CLIENTS');
const MAX_ATTEMPTS = 5; // per sign-in
const LOCK_AFTER = Number(env.IDP_LOCK_AFTER || 10); // failed steps per user …
const LOCK_SECONDS = Number(env.IDP_LOCK_SECONDS || 900); // … lock the user this long

// ---------------------------------------------------------------- users and their secrets

function loadUsers() {
  const doc = JSON.parse(fs.readFileSync(USERS_FILE, 'utf8'));
  return doc.users || {};
}

function findUser(username) {
  const users = loadUsers();
  return Object.hasOwn(users, username) ? users[username] : undefined;
}

function checkPassword(user, password) {
  const p = user && user.password && user.password.scrypt;
  if (!p || typeof password !== 'string') {
    // spend the same time on unknown users
    crypto.scryptSync('x', 'atomscale-dummy-salt', 32, { N: 16384, r: 8, p: 1 });
    return false;
  }
  const expected = Buffer.from(p.hash, 'base64');
  const got = crypto.scryptSync(password, Buffer.from(p.salt, 'base64'), expected.length, {
    N: p.N, r: p.r, p: p.p, maxmem: 256 * p.N * p.r,
  });
  return crypto.timingSafeEqual(expected, got);
}

function base32Decode(text) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  const clean = text.replace(/=+$/, '').replace(/\s+/g, '').toUpperCase();
  let bits = 0;
  let value = 0;
  const out = [];
  for (const ch of clean) {
    const idx = alphabet.indexOf(ch);
    if (idx < 0) throw new Error('bad base32 secret');
    value = (value << 5) | idx;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

function hotp(secret, counter) {
  const msg = Buffer.alloc(8);
  msg.writeBigUInt64BE(BigInt(counter));
  const mac = crypto.createHmac('sha1', secret).update(msg).digest();
  const offset = mac[mac.length - 1] & 0x0f;
  const code = (mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000;
  return String(code).padStart(6, '0');
}

// Failed password/code steps per user across sign-ins (online guessing): after LOCK_AFTER
// failures the user is locked for LOCK_SECONDS, even with the right password.
const failures = new Map();

function locked(username) {
  const f = failures.get(username);
  return Boolean(f && f.until && f.until > Date.now());
}

function failed(username) {
  const f = failures.get(username) || { count: 0, until: 0 };
  if (f.until && f.until <= Date.now()) Object.assign(f, { count: 0, until: 0 });
  f.count += 1;
  if (f.count >= LOCK_AFTER) f.until = Date.now() + LOCK_SECONDS * 1000;
  failures.set(username, f);
}

// Last accepted time step per user: a code is accepted once (no replay within its window).
const lastStep = new Map();

function checkTotp(username, user, code) {
  if (!user.totp || typeof code !== 'string' || !/^\d{6}$/.test(code.trim())) return false;
  const secret = base32Decode(user.totp);
  const now = Math.floor(Date.now() / 1000 / 30);
  for (const step of [now, now - 1, now + 1]) {
    const candidate = Buffer.from(hotp(secret, step));
    if (crypto.timingSafeEqual(candidate, Buffer.from(code.trim()))) {
      if ((lastStep.get(username) ?? -1) >= step) return false;
      lastStep.set(username, step);
      return true;
    }
  }
  return false;
}

// ---------------------------------------------------------------- provider

const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingJwk = {
  ...privateKey.export({ format: 'jwk' }),
  kid: crypto.randomBytes(12).toString('base64url'),
  alg: 'RS256',
  use: 'sig',
};

const clients = JSON.parse(fs.readFileSync(CLIENTS_FILE, 'utf8')).clients.map((c) => ({
  client_id: c.client_id,
  client_secret: c.client_secret,
  redirect_uris: c.redirect_uris,
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  token_endpoint_auth_method: c.token_endpoint_auth_method || 'client_secret_basic',
}));

const provider = new Provider(ISSUER, {
  clients,
  jwks: { keys: [signingJwk] },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  scopes: ['openid', 'profile', 'email', 'atomscale', 'offline_access'],
  claims: {
    openid: ['sub', 'amr', 'acr', 'auth_time'],
    profile: ['name', 'preferred_username'],
    email: ['email'],
    atomscale: ['org', 'role'],
  },
  // The relying party reads the user's claims from the verified id_token.
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true },
    userinfo: { enabled: true },
  },
  async issueRefreshToken(_ctx, client) {
    return client.grantTypeAllowed('refresh_token');
  },
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 60,
    IdToken: 3600,
    Interaction: 600,
    Grant: 86400,
    RefreshToken: 86400,
    Session: 86400,
  },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(_ctx, id) {
    const user = findUser(id);
    if (!user) return undefined;
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          preferred_username: id,
          name: user.name || id,
          email: user.email,
          org: user.org,
          role: user.role,
        };
      },
    };
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = page('Sign-in error', `<p class="error">${escapeHtml(out.error_description || out.error)}</p>`);
  },
});
provider.proxy = false;

// ---------------------------------------------------------------- interaction pages

function escapeHtml(s) {
  return String(s ?? '').replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  }[c]));
}

function page(title, body) {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>${escapeHtml(title)} · atomscale-lab sign-in</title>
<style>
body{font-family:system-ui,sans-serif;background:#f4f6f8;display:flex;justify-content:center;padding-top:10vh}
main{background:#fff;padding:2rem 2.5rem;border-radius:8px;box-shadow:0 2px 8px #0002;min-width:20rem}
h1{font-size:1.3rem;margin-top:0} label{display:block;margin:.8rem 0 .2rem}
input{width:100%;padding:.5rem;font-size:1rem;box-sizing:border-box}
button{margin-top:1.2rem;padding:.5rem 1.2rem;font-size:1rem}
.error{color:#b00020} .hint{color:#555;font-size:.9rem}
</style></head><body><main><h1>${escapeHtml(title)}</h1>${body}</main></body></html>`;
}

function passwordForm(uid, error) {
  return page('Sign in', `${error ? `<p class="error" role="alert">${escapeHtml(error)}</p>` : ''}
<form method="post" action="/interaction/${uid}/password" autocomplete="off">
<label for="username">User name</label><input id="username" name="username" required autofocus>
<label for="password">Password</label><input id="password" name="password" type="password" required>
<button type="submit" id="submit">Continue</button></form>`);
}

function totpForm(uid, username, error) {
  return page('Two-factor code', `${error ? `<p class="error" role="alert">${escapeHtml(error)}</p>` : ''}
<p class="hint">Signed in as <b>${escapeHtml(username)}</b>. Enter the 6-digit code from your authenticator app.</p>
<form method="post" action="/interaction/${uid}/otp" autocomplete="off">
<label for="otp">Code</label><input id="otp" name="otp" inputmode="numeric" pattern="[0-9]{6}" maxlength="6" required autofocus>
<button type="submit" id="submit">Verify</button></form>`);
}

// Per-interaction state between the two steps: who passed the password step, failed attempts.
const pending = new Map();

function readBody(req) {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks = [];
    req.on('data', (c) => {
      size += c.length;
      if (size > 16384) {
        reject(new Error('request body too large'));
        req.destroy();
      } else chunks.push(c);
    });
    req.on('end', () => resolve(querystring.parse(Buffer.concat(chunks).toString('utf8'))));
    req.on('error', reject);
  });
}

function send(res, status, html) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.setHeader('X-Frame-Options', 'DENY');
  res.end(html);
}

function log(event, fields) {
  // One JSON line per sign-in decision; never passwords, codes or secrets.
  console.log(JSON.stringify({ ts: new Date().toISOString(), event, ...fields }));
}

async function deny(req, res, uid, username, reason) {
  pending.delete(uid);
  log('login', { user: username, outcome: 'denied', reason });
  await provider.interactionFinished(req, res, {
    error: 'access_denied', error_description: reason,
  }, { mergeWithLastSubmission: false });
}

async function handleInteraction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return send(res, 400, page('Error', '<p class="error">interaction mismatch</p>'));
  const { prompt, params } = details;

  if (prompt.name === 'consent') {
    // First-party clients only: grant the requested scopes without a consent screen.
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    if (prompt.details.missingResourceScopes) {
      for (const [indicator, scope] of Object.entries(prompt.details.missingResourceScopes)) {
        grant.addResourceScope(indicator, scope.join(' '));
      }
    }
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }

  const state = pending.get(uid) || { attempts: 0 };
  pending.set(uid, state);

  if (req.method === 'GET') {
    return send(res, 200, state.username ? totpForm(uid, state.username) : passwordForm(uid));
  }
  const body = await readBody(req);

  if (action === 'password') {
    const username = String(body.username || '').trim();
    const user = findUser(username);
    if (locked(username)) {
      state.attempts += 1;
      log('login', { user: username, outcome: 'denied', reason: 'locked' });
      return send(res, 429, passwordForm(uid, 'Too many failed attempts: try again later.'));
    }
    if (!checkPassword(user, String(body.password || ''))) {
      failed(username);
      state.attempts += 1;
      log('login', { user: username, outcome: 'denied', reason: 'bad password', attempt: state.attempts });
      if (state.attempts >= MAX_ATTEMPTS) return deny(req, res, uid, username, 'too many failed attempts');
      return send(res, 401, passwordForm(uid, 'Wrong user name or password.'));
    }
    if (user.mfa === false) {
      pending.delete(uid);
      log('login', { user: username, outcome: 'allowed', amr: ['pwd'] });
      return provider.interactionFinished(req, res, {
        login: { accountId: username, amr: ['pwd'], acr: 'urn:atomscale:pwd', remember: false },
      }, { mergeWithLastSubmission: false });
    }
    state.username = username;
    return send(res, 200, totpForm(uid, username));
  }

  if (action === 'otp') {
    if (!state.username) return send(res, 400, passwordForm(uid, 'Enter your password first.'));
    const user = findUser(state.username);
    if (locked(state.username)) {
      return deny(req, res, uid, state.username, 'too many failed attempts');
    }
    if (!user || !checkTotp(state.username, user, String(body.otp || ''))) {
      failed(state.username);
      state.attempts += 1;
      log('login', { user: state.username, outcome: 'denied', reason: 'bad otp', attempt: state.attempts });
      if (state.attempts >= MAX_ATTEMPTS) return deny(req, res, uid, state.username, 'too many failed attempts');
      return send(res, 401, totpForm(uid, state.username, 'That code is not valid. Try the current one.'));
    }
    pending.delete(uid);
    failures.delete(state.username);
    log('login', { user: state.username, outcome: 'allowed', amr: ['pwd', 'otp', 'mfa'] });
    return provider.interactionFinished(req, res, {
      login: {
        accountId: state.username, amr: ['pwd', 'otp', 'mfa'], acr: 'urn:atomscale:mfa', remember: false,
      },
    }, { mergeWithLastSubmission: false });
  }
  return send(res, 404, page('Not found', '<p>unknown step</p>'));
}

const providerHandler = provider.callback();
const INTERACTION = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(password|otp))?$/;

const server = https.createServer({
  cert: fs.readFileSync(required('IDP_CERT')),
  key: fs.readFileSync(required('IDP_KEY')),
}, async (req, res) => {
  const path = new URL(req.url, ISSUER).pathname;
  const m = path.match(INTERACTION);
  if (!m) return providerHandler(req, res);
  try {
    await handleInteraction(req, res, m[1], m[2]);
  } catch (err) {
    if (err instanceof errors.SessionNotFound) {
      return send(res, 400, page('Sign-in expired', '<p class="error">This sign-in has expired. Start again from the hub.</p>'));
    }
    console.error('idp: interaction failed:', err.message);
    send(res, 500, page('Error', '<p class="error">sign-in failed</p>'));
  }
});

server.listen(PORT, HOST, () => {
  if (env.IDP_PIDFILE) fs.writeFileSync(env.IDP_PIDFILE, String(process.pid));
  console.log(JSON.stringify({ event: 'ready', issuer: ISSUER, kid: signingJwk.kid }));
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close();
    process.exit(0);
  });
}
