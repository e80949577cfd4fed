#!/usr/bin/env bash
# System tools the stack needs: Python 3.11+ with venv, Java 17+ (Keycloak 26), Maven (fetches Keycloak),
# redis-server and redis-sentinel (the gateways' shared store, highly available);
# with `test`, also docker-compose, the compose implementation that validates docker-compose.yml (no engine),
# PostgreSQL, which runs the compose topology without Docker (scripts/topology.sh),
# Chromium, the browser that Playwright drives in the browser tests (Playwright's own download is not used),
# nginx, which serves nginx/gateway.conf itself in tests/test_nginx_metrics.py and the topology,
# and wrk, ss (iproute2) and Go (which builds the bench's open-loop generator, bench/openloop/, standard library
# only) for the bench's smoke check; with `bench`, the same three, which `make bench` uses; with `profile`, those
# and valgrind (callgrind's instruction counts of `make profile`).
# Installs the missing ones with apt-get where that is possible, else says what to install.
#   scripts/prerequisites.sh [test|bench|profile]
set -euo pipefail

java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1; }

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "prerequisites: Python 3.11 or newer is needed (python3 is $(python3 -V 2>&1))" >&2; exit 1; }
missing=()
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if ! command -v java >/dev/null || [ "$(java_major)" -lt 17 ]; then missing+=(default-jre-headless); fi
command -v mvn >/dev/null || missing+=(maven)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-sentinel >/dev/null || missing+=(redis-sentinel)
if [ "${1:-}" = test ]; then
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  command -v chromium >/dev/null || missing+=(chromium)
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
fi
if [ "${1:-}" = test ] || [ "${1:-}" = bench ] || [ "${1:-}" = profile ]; then
  command -v wrk >/dev/null || missing+=(wrk)
  command -v ss >/dev/null || missing+=(iproute2)
  command -v go >/dev/null || missing+=(golang-go)
fi
if [ "${1:-}" = profile ]; then
  command -v valgrind >/dev/null || missing+=(valgrind)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "prerequisites: installing ${missing[*]}" >&2
  apt-get update -qq
  # No recommends: docker-compose would otherwise bring a whole Docker engine along.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "prerequisites: please install ${missing[*]} (Debian package names), then run make again" >&2
  exit 1
fi
