#!/usr/bin/env bash
# Remove what deploy/deploy.sh created, in reverse order. Resources that are
# already gone are skipped. Other failures are reported, the script goes on,
# and it exits 1 at the end. APIs stay enabled.
#
# Workload identity pools and providers are soft-deleted: their ids stay
# reserved for 30 days, and deploy.sh undeletes them when it runs again.
#
# Usage: deploy/teardown.sh [--config FILE] [--dry-run] [--yes]
#   --config FILE  deployment config (default: deploy/config.example.env)
#   --dry-run      print the delete commands in order and run none
#   --yes          do not ask for confirmation
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(dirname "$SCRIPT_DIR")
CONFIG="$SCRIPT_DIR/config.example.env"
DRY_RUN=false
ASSUME_YES=false
FAILURES=0
NOT_FOUND_PATTERN='NOT_FOUND|not found|does not exist|notFound'

usage() {
  sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
}

die() {
  printf 'teardown.sh: %s\n' "$*" >&2
  exit 1
}

while (($#)); do
  case $1 in
    --config) CONFIG=${2:?--config needs a file}; shift 2 ;;
    --config=*) CONFIG=${1#--config=}; shift ;;
    --dry-run) DRY_RUN=true; shift ;;
    --yes) ASSUME_YES=true; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

[[ -f $CONFIG ]] || die "config file not found: $CONFIG"
CONFIG="$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")"
if [[ -z ${PYTHON:-} ]]; then
  PYTHON=python3
  [[ -x $REPO_ROOT/.venv/bin/python ]] && PYTHON=$REPO_ROOT/.venv/bin/python
fi

shell_vars=$(cd "$REPO_ROOT" && PYTHONPATH="$REPO_ROOT" "$PYTHON" -m deploy.render \
  shell-vars --config "$CONFIG") || die "invalid config file: $CONFIG"
eval "$shell_vars"
GLOBAL_FLAGS=(--project="$PROJECT_ID" --quiet)

quote() {
  local arg quoted=() escaped="'\"'\"'"
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      quoted+=("$arg")
    else
      quoted+=("'${arg//\'/$escaped}'")
    fi
  done
  printf '%s\n' "${quoted[*]}"
}

# remove ARGS...: run one delete command. A "not found" error counts as done.
remove() {
  local output
  if $DRY_RUN; then
    quote gcloud "$@" "${GLOBAL_FLAGS[@]}"
    return
  fi
  printf '+ %s\n' "$(quote gcloud "$@" "${GLOBAL_FLAGS[@]}")" >&2
  if output=$(gcloud "$@" "${GLOBAL_FLAGS[@]}" 2>&1); then
    return
  fi
  if grep -qE "$NOT_FOUND_PATTERN" <<<"$output"; then
    printf '  already gone\n' >&2
  else
    printf '%s\n' "$output" >&2
    FAILURES=$((FAILURES + 1))
  fi
}

confirm() {
  $DRY_RUN && return
  $ASSUME_YES && return
  local answer
  read -r -p "Delete token-service '$NAME_PREFIX' from project $PROJECT_ID? [y/N] " answer
  [[ $answer == [yY] ]] || die "cancelled"
}

remove_load_balancer() {
  local index
  remove compute forwarding-rules delete "$FORWARDING_RULE_NAME" --global
  remove compute target-https-proxies delete "$HTTPS_PROXY_NAME" --global
  remove compute url-maps delete "$URL_MAP_NAME" --global
  for index in "${!BACKEND_SERVICE_NAMES[@]}"; do
    remove compute backend-services delete "${BACKEND_SERVICE_NAMES[$index]}" --global
  done
  for index in "${!NEG_NAMES[@]}"; do
    remove compute network-endpoint-groups delete "${NEG_NAMES[$index]}" --region="$REGION"
  done
  remove network-security server-tls-policies delete "$SERVER_TLS_POLICY_NAME" \
    --location=global
  remove certificate-manager trust-configs delete "$TRUST_CONFIG_NAME" --location=global
  remove compute ssl-certificates delete "$SSL_CERTIFICATE_NAME" --global
  remove compute addresses delete "$ADDRESS_NAME" --global
}

remove_service() {
  local name
  remove functions delete "$METADATA_FUNCTION" --region="$REGION"
  remove functions delete "$TOKEN_FUNCTION" --region="$REGION"
  remove iam workload-identity-pools providers delete "$WIF_PROVIDER_ID" \
    --workload-identity-pool="$WIF_POOL_ID" --location=global
  remove iam workload-identity-pools delete "$WIF_POOL_ID" --location=global
  for name in "${FILE_SECRET_NAMES[@]}" ${LB_SECRET_NAME:+"$LB_SECRET_NAME"}; do
    remove secrets delete "$name"
  done
  remove iam service-accounts delete "$SERVICE_ACCOUNT_EMAIL"
}

confirm
remove_load_balancer
remove_service
if ((FAILURES)); then
  die "$FAILURES delete commands failed, see the messages above"
fi
