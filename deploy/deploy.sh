#!/usr/bin/env bash
# Deploy token-service: two Cloud Run functions (gen2) behind a global external
# Application Load Balancer that verifies client certificates (mTLS) and passes
# their facts to the functions in request headers.
#
# Idempotent: each resource is described first, created when it is missing and
# updated when it exists, so re-running the script is also the upgrade path.
# Every generated file comes from deploy/render.py and the config file.
#
# Usage: deploy/deploy.sh [--config FILE] [--dry-run]
#   --config FILE  deployment config (default: deploy/config.example.env)
#   --dry-run      print every command in order, paste-able in Cloud Shell, and
#                  run none. Describe calls are shown as comments and treated
#                  as "not found", so the output is the first-deployment path.
# Environment: LB_SECRET (when LB_SECRET_HEADER is set), PYTHON (interpreter
# with PyYAML and cryptography), DEPLOY_WORK_DIR (where generated files go).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(dirname "$SCRIPT_DIR")
CONFIG="$SCRIPT_DIR/config.example.env"
DRY_RUN=false
# Seconds between retries of calls that can fail while IAM changes propagate.
RETRY_SLEEP_SECONDS=${DEPLOY_RETRY_SLEEP_SECONDS:-10}
NOT_FOUND_PATTERN='NOT_FOUND|not found|does not exist|notFound'

usage() {
  sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
}

die() {
  printf 'deploy.sh: %s\n' "$*" >&2
  exit 1
}

while (($#)); do
  case $1 in
    --config) CONFIG=${2:?--config needs a file}; shift 2 ;;
    --config=*) CONFIG=${1#--config=}; shift ;;
    --dry-run) DRY_RUN=true; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

[[ -f $CONFIG ]] || die "config file not found: $CONFIG"
CONFIG="$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")"

if [[ -z ${PYTHON:-} ]]; then
  if [[ -x $REPO_ROOT/.venv/bin/python ]]; then
    PYTHON=$REPO_ROOT/.venv/bin/python
  else
    PYTHON=python3
  fi
fi
"$PYTHON" -c 'import yaml, cryptography' 2>/dev/null ||
  die "PyYAML or cryptography is missing for $PYTHON. Run: pip install pyyaml cryptography"

render() {
  (cd "$REPO_ROOT" && PYTHONPATH="$REPO_ROOT" "$PYTHON" -m deploy.render "$1" --config "$CONFIG" "${@:2}")
}

# Defines PROJECT_ID, the resource names, TOKEN_ISSUER and the layout arrays.
shell_vars=$(render shell-vars) || die "invalid config file: $CONFIG"
eval "$shell_vars"

GLOBAL_FLAGS=(--project="$PROJECT_ID" --quiet)
WORK_DIR=${DEPLOY_WORK_DIR:-$REPO_ROOT/.local/deploy/$NAME_PREFIX}
umask 077
mkdir -p "$WORK_DIR"
ERR_FILE="$WORK_DIR/gcloud.err"

if [[ -n $LB_SECRET_HEADER && -z ${LB_SECRET:-} ]]; then
  $DRY_RUN || die "LB_SECRET_HEADER is set in the config, so export LB_SECRET first"
fi

# quote ARGS...: print the arguments as one shell-quoted line (like shlex.quote).
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

# show LINE: print a command or comment, with the LB secret replaced.
show() {
  local line=$1
  if [[ -n ${LB_SECRET:-} ]]; then
    line=${line//"$LB_SECRET"/<redacted>}
  fi
  if $DRY_RUN; then
    printf '%s\n' "$line"
  else
    printf '+ %s\n' "$line" >&2
  fi
}

note() {
  if $DRY_RUN; then
    printf '# %s\n' "$*"
  else
    printf '%s\n' "$*" >&2
  fi
}

# run ARGS...: run one gcloud command (print it only, in a dry run).
run() {
  show "$(quote gcloud "$@" "${GLOBAL_FLAGS[@]}")"
  $DRY_RUN || gcloud "$@" "${GLOBAL_FLAGS[@]}"
}

# run_retried ARGS...: like run, but retry twice, because IAM changes take a
# while to apply.
run_retried() {
  local attempt
  show "$(quote gcloud "$@" "${GLOBAL_FLAGS[@]}")"
  $DRY_RUN && return 0
  for attempt in 1 2 3; do
    gcloud "$@" "${GLOBAL_FLAGS[@]}" && return 0
    ((attempt < 3)) && sleep "$RETRY_SLEEP_SECONDS"
  done
  die "failed three times: $(quote gcloud "$@")"
}

# run_with_secret ARGS...: run gcloud with $LB_SECRET on stdin (--data-file=-).
run_with_secret() {
  show "printf '%s' \"\$LB_SECRET\" | $(quote gcloud "$@" "${GLOBAL_FLAGS[@]}")"
  $DRY_RUN || printf '%s' "$LB_SECRET" | gcloud "$@" "${GLOBAL_FLAGS[@]}"
}

# describe ARGS...: run a describe command and keep its output in DESCRIBED.
# Returns 0 when the resource exists and 1 when gcloud reports it not found.
# Any other failure, such as a missing permission, stops the script.
describe() {
  DESCRIBED=""
  if $DRY_RUN; then
    show "# assumed absent: $(quote gcloud "$@" "${GLOBAL_FLAGS[@]}")"
    return 1
  fi
  show "$(quote gcloud "$@" "${GLOBAL_FLAGS[@]}")"
  if DESCRIBED=$(gcloud "$@" "${GLOBAL_FLAGS[@]}" 2>"$ERR_FILE"); then
    return 0
  fi
  if grep -qE "$NOT_FOUND_PATTERN" "$ERR_FILE"; then
    return 1
  fi
  cat "$ERR_FILE" >&2
  die "failed to check whether the resource exists: $(quote gcloud "$@")"
}

# render_file SUBCOMMAND FILE [ARGS...]: write a generated file. A dry run goes
# on without it when the config points at files that do not exist yet.
render_file() {
  if render "$1" --out "$2" "${@:3}"; then
    note "wrote $2"
  elif $DRY_RUN; then
    note "NOTE: $1 not rendered; fix the config before a real run"
  else
    die "failed to render $1 from $CONFIG"
  fi
}

enable_apis() {
  run services enable cloudfunctions.googleapis.com run.googleapis.com \
    cloudbuild.googleapis.com artifactregistry.googleapis.com iam.googleapis.com \
    iamcredentials.googleapis.com sts.googleapis.com \
    cloudresourcemanager.googleapis.com compute.googleapis.com \
    certificatemanager.googleapis.com networksecurity.googleapis.com \
    secretmanager.googleapis.com logging.googleapis.com
}

resolve_project_number() {
  if [[ -n $PROJECT_NUMBER ]]; then
    return
  fi
  local command=(projects describe "$PROJECT_ID" --format='value(projectNumber)')
  if $DRY_RUN; then
    PROJECT_NUMBER='<PROJECT_NUMBER>'
    note "look up: $(quote gcloud "${command[@]}")"
    note "NOTE: set PROJECT_NUMBER in the config for paste-able function deploys"
    return
  fi
  show "$(quote gcloud "${command[@]}")"
  PROJECT_NUMBER=$(gcloud "${command[@]}")
  [[ $PROJECT_NUMBER =~ ^[0-9]+$ ]] || die "failed to read the project number of $PROJECT_ID"
}

deploy_service_account() {
  if ! describe iam service-accounts describe "$SERVICE_ACCOUNT_EMAIL"; then
    run iam service-accounts create "$SERVICE_ACCOUNT" --display-name="Token Service"
  fi
  # The functions sign ID tokens with IAM Credentials signJwt as this account.
  run_retried iam service-accounts add-iam-policy-binding "$SERVICE_ACCOUNT_EMAIL" \
    --member="serviceAccount:$SERVICE_ACCOUNT_EMAIL" \
    --role=roles/iam.serviceAccountTokenCreator --condition=None
}

grant_secret_access() {
  run_retried secrets add-iam-policy-binding "$1" \
    --member="serviceAccount:$SERVICE_ACCOUNT_EMAIL" \
    --role=roles/secretmanager.secretAccessor
}

# deploy_file_secret NAME SOURCE: store a local file as the secret's latest version.
deploy_file_secret() {
  local name=$1 source=$2
  [[ -f $source ]] || $DRY_RUN || die "file not found: $source"
  if ! describe secrets describe "$name"; then
    run secrets create "$name" --data-file="$source"
  elif gcloud secrets versions access latest --secret="$name" "${GLOBAL_FLAGS[@]}" 2>/dev/null |
    cmp -s - "$source"; then
    note "secret $name is up to date"
  else
    run secrets versions add "$name" --data-file="$source"
  fi
  grant_secret_access "$name"
}

deploy_lb_secret() {
  if ! describe secrets describe "$LB_SECRET_NAME"; then
    run_with_secret secrets create "$LB_SECRET_NAME" --data-file=-
  elif [[ $(gcloud secrets versions access latest --secret="$LB_SECRET_NAME" \
    "${GLOBAL_FLAGS[@]}" 2>/dev/null) == "$LB_SECRET" ]]; then
    note "secret $LB_SECRET_NAME is up to date"
  else
    run_with_secret secrets versions add "$LB_SECRET_NAME" --data-file=-
  fi
  grant_secret_access "$LB_SECRET_NAME"
}

deploy_secrets() {
  local index
  for index in "${!FILE_SECRET_NAMES[@]}"; do
    deploy_file_secret "${FILE_SECRET_NAMES[$index]}" "${FILE_SECRET_SOURCES[$index]}"
  done
  if [[ -n $LB_SECRET_NAME ]]; then
    deploy_lb_secret
  fi
}

deploy_identity_pool() {
  local pool=(iam workload-identity-pools)
  if describe "${pool[@]}" describe "$WIF_POOL_ID" --location=global \
    --format='value(state)'; then
    # A deleted pool keeps its id for 30 days; undelete it instead of failing.
    if [[ $DESCRIBED == DELETED ]]; then
      run "${pool[@]}" undelete "$WIF_POOL_ID" --location=global
    fi
    run "${pool[@]}" update "$WIF_POOL_ID" --location=global \
      --display-name="$WIF_POOL_DISPLAY_NAME"
  else
    run "${pool[@]}" create "$WIF_POOL_ID" --location=global \
      --display-name="$WIF_POOL_DISPLAY_NAME"
  fi
}

deploy_identity_provider() {
  local providers=(iam workload-identity-pools providers)
  local where=(--workload-identity-pool="$WIF_POOL_ID" --location=global)
  # The issuer URI must equal the tokens' "iss" claim and the discovery
  # document's "issuer", so all three use TOKEN_ISSUER.
  local oidc=(--issuer-uri="$TOKEN_ISSUER" --attribute-mapping="$ATTRIBUTE_MAPPING")
  if describe "${providers[@]}" describe "$WIF_PROVIDER_ID" "${where[@]}" \
    --format='value(state)'; then
    if [[ $DESCRIBED == DELETED ]]; then
      run "${providers[@]}" undelete "$WIF_PROVIDER_ID" "${where[@]}"
    fi
    run "${providers[@]}" update-oidc "$WIF_PROVIDER_ID" "${where[@]}" "${oidc[@]}"
  else
    run "${providers[@]}" create-oidc "$WIF_PROVIDER_ID" "${where[@]}" "${oidc[@]}"
  fi
}

# deploy_function NAME ENTRY_POINT: create or update one function (gen2).
deploy_function() {
  local flags=(
    --gen2 --region="$REGION" --runtime="$RUNTIME" --source=.
    --entry-point="$2" --trigger-http --allow-unauthenticated
    # Only the load balancer reaches the function, so its headers can be trusted.
    --ingress-settings=internal-and-gclb
    --service-account="$SERVICE_ACCOUNT_EMAIL"
    --env-vars-file="$ENV_VARS_FILE" --memory="$MEMORY"
  )
  if [[ -n $MAX_INSTANCES ]]; then
    flags+=(--max-instances="$MAX_INSTANCES")
  fi
  if [[ -n $SET_SECRETS ]]; then
    flags+=(--set-secrets="$SET_SECRETS")
  else
    flags+=(--clear-secrets)
  fi
  run functions deploy "$1" "${flags[@]}"
}

deploy_functions() {
  ENV_VARS_FILE="$WORK_DIR/env-vars.yaml"
  render_file env-vars "$ENV_VARS_FILE" --project-number "$PROJECT_NUMBER"
  deploy_function "$TOKEN_FUNCTION" token
  deploy_function "$METADATA_FUNCTION" metadata
}

deploy_frontend_address() {
  if ! describe compute addresses describe "$ADDRESS_NAME" --global; then
    run compute addresses create "$ADDRESS_NAME" --global --ip-version=IPV4
  fi
  # A Google-managed certificate cannot change its domains, so a new FQDN needs
  # a new NAME_PREFIX or deleting the certificate first.
  if ! describe compute ssl-certificates describe "$SSL_CERTIFICATE_NAME" --global; then
    run compute ssl-certificates create "$SSL_CERTIFICATE_NAME" \
      --domains="$PUBLIC_FQDN" --global
  fi
}

deploy_mtls_policy() {
  local trust_file="$WORK_DIR/trust-config.yaml" policy_file="$WORK_DIR/server-tls-policy.yaml"
  render_file trust-config "$trust_file"
  run certificate-manager trust-configs import "$TRUST_CONFIG_NAME" \
    --location=global --source="$trust_file"
  render_file server-tls-policy "$policy_file"
  run network-security server-tls-policies import "$SERVER_TLS_POLICY_NAME" \
    --location=global --source="$policy_file"
}

deploy_backends() {
  local header_lines header_flags=() index neg backend
  header_lines=$(render header-flags) || die "failed to render the custom headers"
  mapfile -t header_flags <<<"$header_lines"
  header_flags=("${header_flags[@]/#/--custom-request-header=}")
  for index in "${!NEG_NAMES[@]}"; do
    neg=${NEG_NAMES[$index]}
    backend=${BACKEND_SERVICE_NAMES[$index]}
    if ! describe compute network-endpoint-groups describe "$neg" --region="$REGION"; then
      run compute network-endpoint-groups create "$neg" --region="$REGION" \
        --network-endpoint-type=serverless "${NEG_TARGET_FLAGS[$index]}"
    fi
    deploy_backend_service "$backend" "$neg" "${header_flags[@]}"
  done
}

# deploy_backend_service NAME NEG HEADER_FLAGS...: EXTERNAL_MANAGED, because the
# URL map header actions this deployment relies on are not supported for
# EXTERNAL (classic) load balancers.
deploy_backend_service() {
  local name=$1 neg=$2 attached=""
  local common=(--global --enable-logging --logging-sample-rate=1 "${@:3}")
  if describe compute backend-services describe "$name" --global \
    --format='value(backends[].group)'; then
    attached=$DESCRIBED
    run compute backend-services update "$name" "${common[@]}"
  else
    run compute backend-services create "$name" --load-balancing-scheme=EXTERNAL_MANAGED \
      "${common[@]}"
  fi
  if [[ ";$attached;" != *"/networkEndpointGroups/$neg;"* ]]; then
    run compute backend-services add-backend "$name" --global \
      --network-endpoint-group="$neg" --network-endpoint-group-region="$REGION"
  fi
}

deploy_url_map() {
  local url_map_file="$WORK_DIR/url-map.yaml" redact=()
  if $DRY_RUN; then
    redact=(--redact-secret)
  fi
  render_file url-map "$url_map_file" "${redact[@]}"
  if ! describe compute url-maps describe "$URL_MAP_NAME" --global; then
    run compute url-maps create "$URL_MAP_NAME" --global \
      --default-service="${BACKEND_SERVICE_NAMES[-1]}"
  fi
  run compute url-maps import "$URL_MAP_NAME" --global --source="$url_map_file"
  if [[ -n $LB_SECRET_HEADER ]] && ! $DRY_RUN; then
    rm -f "$url_map_file"
  fi
}

deploy_proxy_and_forwarding_rule() {
  # The GA command gained --server-tls-policy later than beta, so beta is used
  # for both create and update; Cloud Shell ships the beta component.
  local proxy_flags=(
    --global --url-map="$URL_MAP_NAME" --ssl-certificates="$SSL_CERTIFICATE_NAME"
    --server-tls-policy="projects/$PROJECT_ID/locations/global/serverTlsPolicies/$SERVER_TLS_POLICY_NAME"
  )
  if describe compute target-https-proxies describe "$HTTPS_PROXY_NAME" --global; then
    run beta compute target-https-proxies update "$HTTPS_PROXY_NAME" "${proxy_flags[@]}"
  else
    run beta compute target-https-proxies create "$HTTPS_PROXY_NAME" "${proxy_flags[@]}"
  fi
  if ! describe compute forwarding-rules describe "$FORWARDING_RULE_NAME" --global; then
    run compute forwarding-rules create "$FORWARDING_RULE_NAME" --global \
      --load-balancing-scheme=EXTERNAL_MANAGED --address="$ADDRESS_NAME" \
      --target-https-proxy="$HTTPS_PROXY_NAME" --ports=443
  fi
}

print_summary() {
  local address='<ADDRESS>'
  if describe compute addresses describe "$ADDRESS_NAME" --global --format='value(address)'; then
    address=$DESCRIBED
  fi
  note "Layout $LAYOUT: issuer $TOKEN_ISSUER"
  note "Discovery: $DISCOVERY_URL"
  note "Token endpoint: $TOKEN_URL"
  note "Point the DNS A record $PUBLIC_FQDN at $address. The managed certificate"
  note "becomes active after DNS resolves; header changes can take up to an hour."
  note "Then check the deployment: deploy/verify.sh --config $(quote "$CONFIG")"
}

main() {
  cd "$REPO_ROOT"
  note "token-service deployment of $CONFIG (run from $REPO_ROOT)"
  enable_apis
  resolve_project_number
  deploy_service_account
  deploy_secrets
  deploy_identity_pool
  deploy_identity_provider
  deploy_functions
  deploy_frontend_address
  deploy_mtls_policy
  deploy_backends
  deploy_url_map
  deploy_proxy_and_forwarding_rule
  print_summary
}

main
