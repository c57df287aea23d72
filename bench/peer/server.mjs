// Peer token server for the benchmark: oidc-provider 8 issuing RS256 JWT
// access tokens to a tls_client_auth client with the client_credentials grant.
//
// The client certificate comes from request headers, as behind a
// TLS-terminating proxy: X-Client-Cert contains the URL-encoded PEM and
// X-Client-Cert-Chain-Verified is "true" when the proxy verified its chain.
// The primary process forks PEER_WORKERS cluster workers that share the port.
//
// Environment: PEER_MODULES (folder holding node_modules/oidc-provider),
// PEER_PORT, PEER_WORKERS, PEER_KEY_FILE (PEM RSA private key), PEER_CLIENT_ID
// and PEER_CLIENT_SAN_URI (the URI SAN the certificate must carry).

import cluster from 'node:cluster';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

function setting(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`peer: environment variable ${name} is not set`);
    process.exit(2);
  }
  return value;
}

const port = Number(setting('PEER_PORT'));
const workers = Number(setting('PEER_WORKERS'));

if (cluster.isPrimary) {
  for (let i = 0; i < workers; i += 1) {
    cluster.fork();
  }
  cluster.on('exit', (worker, code, signal) => {
    console.error(`peer: worker ${worker.process.pid} exited (${signal || code})`);
  });
  process.on('SIGTERM', () => {
    for (const worker of Object.values(cluster.workers)) {
      worker.kill('SIGTERM');
    }
    process.exit(0);
  });
} else {
  await serve();
}

async function serve() {
  const modules = createRequire(join(resolve(setting('PEER_MODULES')), 'package.json'));
  const { default: Provider } = await import(
    pathToFileURL(modules.resolve('oidc-provider')).href
  );
  const signingJwk = createPrivateKey(readFileSync(setting('PEER_KEY_FILE')))
    .export({ format: 'jwk' });
  const resource = 'urn:token-service:bench-api';

  // Parsed once per request: getCertificate is called by client
  // authentication and again by the grant.
  const certificates = new WeakMap();
  function getCertificate(ctx) {
    if (!certificates.has(ctx)) {
      const header = ctx.get('x-client-cert');
      certificates.set(ctx, header ? new X509Certificate(decodeURIComponent(header)) : undefined);
    }
    return certificates.get(ctx);
  }

  const provider = new Provider(`http://127.0.0.1:${port}`, {
    clients: [{
      client_id: setting('PEER_CLIENT_ID'),
      token_endpoint_auth_method: 'tls_client_auth',
      tls_client_auth_san_uri: setting('PEER_CLIENT_SAN_URI'),
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
    }],
    clientAuthMethods: ['tls_client_auth'],
    jwks: { keys: [{ ...signingJwk, alg: 'RS256', use: 'sig', kid: 'bench' }] },
    cookies: { keys: ['bench-only-cookie-key'] },
    ttl: { ClientCredentials: 300 },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      mTLS: {
        enabled: true,
        tlsClientAuth: true,
        getCertificate,
        certificateAuthorized(ctx) {
          return ctx.get('x-client-cert-chain-verified') === 'true';
        },
        certificateSubjectMatches(ctx, property, expected) {
          if (property !== 'tls_client_auth_san_uri') {
            return false;
          }
          const names = (getCertificate(ctx).subjectAltName || '').split(', ');
          return names.includes(`URI:${expected}`);
        },
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => resource,
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: 'api',
          audience: resource,
          accessTokenTTL: 300,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
  });
  provider.listen(port, '127.0.0.1');
}
