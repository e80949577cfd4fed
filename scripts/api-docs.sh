#!/usr/bin/env bash
# `make api-docs`: the API reference without a server. docs/openapi.json is the document `edm-gateway openapi`
# prints (every profile on); docs/api.html is Redoc's rendering of it, one self-contained file (Redoc's script
# inlined, its telemetry off), made by @redocly/cli from npm at the version pinned below, installed into the cache
# directory, never into the repository. tests/test_api_docs.py holds both to the code without needing npm.
set -euo pipefail
cd "$(dirname "$0")/.."

redocly_version=2.77.0  # needs Node.js 20.19+ (of the 20 line) or 22.12+
cache=${EDM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/edm-gateway}
prefix="$cache/redocly-cli-$redocly_version"
redocly="$prefix/node_modules/.bin/redocly"

log() { printf 'api-docs: %s\n' "$*" >&2; }

if ! command -v npm >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    log "installing nodejs and npm (Debian's packages)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  else
    log "Node.js and npm are needed (Debian packages nodejs, npm)"; exit 1
  fi
fi

.venv/bin/edm-gateway openapi > docs/openapi.json.partial
mv docs/openapi.json.partial docs/openapi.json
log "wrote docs/openapi.json"

if [ ! -x "$redocly" ]; then
  log "installing @redocly/cli@$redocly_version into $prefix"
  mkdir -p "$prefix"
  npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error "@redocly/cli@$redocly_version" >&2
fi

# REDOCLY_TELEMETRY: the command line's usage data; disableTelemetry: the page's own, sent from every reader's browser.
REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true \
  "$redocly" build-docs docs/openapi.json --inlineBundle --openapi.disableTelemetry=true \
  --title "EDM auth gateway API" -o docs/api.html.partial > /dev/null
mv docs/api.html.partial docs/api.html
log "wrote docs/api.html (Redoc through @redocly/cli $redocly_version)"
