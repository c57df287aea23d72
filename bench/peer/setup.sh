#!/usr/bin/env bash
# Install the benchmark's peer, oidc-provider, into bench/.peer (git-ignored).
set -euo pipefail

PEER_VERSION=8.8.1
peer_dir="$(cd "$(dirname "$0")/.." && pwd)/.peer"

mkdir -p "$peer_dir"
if [[ ! -f "$peer_dir/package.json" ]]; then
    echo '{"private": true}' > "$peer_dir/package.json"
fi
npm install --prefix "$peer_dir" --no-audit --no-fund --save-exact \
    "oidc-provider@$PEER_VERSION"
