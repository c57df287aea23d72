#!/usr/bin/env bash
# Check a live token-service deployment through its load balancer:
#   1. the discovery document loads without a client certificate (as STS
#      fetches it) and its issuer equals TOKEN_ISSUER;
#   2. a token request without a certificate, but with forged certificate
#      headers, is rejected, which shows the load balancer replaces them;
#   3. with --cert and --key, a token request returns an ID token whose "iss"
#      is TOKEN_ISSUER.
#
# Usage: deploy/verify.sh [--config FILE] [--cert FILE --key FILE] [--resolve IP]
#   --config FILE  deployment config (default: deploy/config.example.env)
#   --cert FILE    PEM client certificate issued by a CA in CA_ROOT_FILES
#   --key FILE     its PEM private key
#   --resolve IP   connect to IP instead of resolving PUBLIC_FQDN (before DNS
#                  has propagated); TLS still checks the name PUBLIC_FQDN
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(dirname "$SCRIPT_DIR")
CONFIG="$SCRIPT_DIR/config.example.env"
CERT=""
KEY=""
RESOLVE_IP=""

usage() {
  sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
}

die() {
  printf 'verify.sh: FAILED: %s\n' "$*" >&2
  exit 1
}

while (($#)); do
  case $1 in
    --config) CONFIG=${2:?--config needs a file}; shift 2 ;;
    --cert) CERT=${2:?--cert needs a file}; shift 2 ;;
    --key) KEY=${2:?--key needs a file}; shift 2 ;;
    --resolve) RESOLVE_IP=${2:?--resolve needs an IP address}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

[[ -f $CONFIG ]] || die "config file not found: $CONFIG"
[[ -n $CERT && -z $KEY || -z $CERT && -n $KEY ]] && die "--cert and --key go together"
CONFIG="$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")"
if [[ -z ${PYTHON:-} ]]; then
  PYTHON=python3
  [[ -x $REPO_ROOT/.venv/bin/python ]] && PYTHON=$REPO_ROOT/.venv/bin/python
fi

shell_vars=$(cd "$REPO_ROOT" && PYTHONPATH="$REPO_ROOT" "$PYTHON" -m deploy.render \
  shell-vars --config "$CONFIG") || die "invalid config file: $CONFIG"
eval "$shell_vars"

CURL=(curl --silent --show-error --max-time 30 --proto "=https")
if [[ -n $RESOLVE_IP ]]; then
  CURL+=(--resolve "$PUBLIC_FQDN:443:$RESOLVE_IP")
fi

# json_field FIELD: print one top-level string field of the JSON on stdin.
json_field() {
  "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin).get(sys.argv[1], ""))' "$1"
}

# jwt_claim CLAIM: print one claim of the JWT on stdin. The signature is not
# checked here, because STS checks it against the JWKS.
jwt_claim() {
  "$PYTHON" -c '
import base64, json, sys
payload = sys.stdin.read().strip().split(".")[1]
claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
print(claims.get(sys.argv[1], ""))' "$1"
}

check_discovery() {
  local body issuer
  body=$("${CURL[@]}" --fail "$DISCOVERY_URL") || die "failed to fetch $DISCOVERY_URL"
  issuer=$(json_field issuer <<<"$body") || die "discovery is not JSON: $body"
  [[ $issuer == "$TOKEN_ISSUER" ]] || die "issuer is '$issuer', expected '$TOKEN_ISSUER'"
  printf 'ok: %s has issuer %s\n' "$DISCOVERY_URL" "$issuer"
}

check_forged_headers_rejected() {
  local status
  status=$("${CURL[@]}" --output /dev/null --write-out '%{http_code}' \
    -H "$PRESENT_HEADER: true" -H "$CHAIN_VERIFIED_HEADER: true" \
    -H "$CLIENT_ID_HEADER: forged-client" \
    --data grant_type=client_credentials "$TOKEN_URL") || die "failed to reach $TOKEN_URL"
  [[ $status == 4?? ]] || die "forged headers got HTTP $status from $TOKEN_URL, expected 4xx"
  printf 'ok: forged certificate headers are rejected (HTTP %s)\n' "$status"
}

check_token() {
  local body token issuer
  body=$("${CURL[@]}" --cert "$CERT" --key "$KEY" \
    --data grant_type=client_credentials "$TOKEN_URL") || die "failed to reach $TOKEN_URL"
  token=$(json_field id_token <<<"$body") || die "token response is not JSON: $body"
  [[ -n $token ]] || die "no id_token in the response: $body"
  issuer=$(jwt_claim iss <<<"$token") || die "the id_token is not a JWT"
  [[ $issuer == "$TOKEN_ISSUER" ]] || die "token iss is '$issuer', expected '$TOKEN_ISSUER'"
  printf 'ok: issued an ID token for client %s\n' "$(jwt_claim client_id <<<"$token")"
}

check_discovery
check_forged_headers_rejected
if [[ -n $CERT ]]; then
  check_token
else
  printf 'skipped: token request (pass --cert and --key)\n'
fi
