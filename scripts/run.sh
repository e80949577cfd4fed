#!/usr/bin/env bash
# `make run`: Keycloak and Redis in the background, the gateway under gunicorn in the foreground; Ctrl-C stops
# the gateway, and Keycloak and Redis if this script started them.
set -euo pipefail
cd "$(dirname "$0")/.."

started=no
redis_started=no
gunicorn_pid=
cleanup() {
  set +e  # however gunicorn ended, Keycloak and Redis are still stopped
  if [ -n "$gunicorn_pid" ]; then kill -TERM "$gunicorn_pid" 2>/dev/null; wait "$gunicorn_pid" 2>/dev/null; fi
  if [ "$started" = yes ]; then scripts/keycloak.sh stop; fi
  if [ "$redis_started" = yes ]; then scripts/redis.sh stop; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if ! scripts/keycloak.sh status >/dev/null 2>&1; then
  scripts/keycloak.sh start
  started=yes
fi
if ! scripts/redis.sh status >/dev/null 2>&1; then
  scripts/redis.sh start
  redis_started=yes
fi

# Local defaults of the stack; any of them can be overridden from the environment.
export KEYCLOAK_URL=${KEYCLOAK_URL:-http://localhost:8180/auth/}
export KEYCLOAK_CLIENT_SECRET=${KEYCLOAK_CLIENT_SECRET:-edmportal-dev-secret}
export GATEWAY_BIND=${GATEWAY_BIND:-127.0.0.1:8000}
export GATEWAY_REDIS_URL=${GATEWAY_REDIS_URL:-$(scripts/redis.sh url)}
# BFF mode on, with a dev session secret; the public URL is one whose callback the realm file registers
# (http://localhost:8000, or any port of 127.0.0.1).
port=${GATEWAY_BIND##*:}
if [ "$port" = 8000 ]; then default_public_url=http://localhost:8000; else default_public_url=http://127.0.0.1:$port; fi
export GATEWAY_BFF=${GATEWAY_BFF:-true}
export GATEWAY_TESTER_PAGE=${GATEWAY_TESTER_PAGE:-true}
export GATEWAY_PUBLIC_URL=${GATEWAY_PUBLIC_URL:-$default_public_url}
export GATEWAY_SESSION_SECRET=${GATEWAY_SESSION_SECRET:-edm-dev-session-secret-change-me-0123456789}

# gateway/config.py's words for false
off() { case "$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]' | tr -d '[:space:]')" in 0|false|no|off) return 0 ;; esac; return 1; }

# The tester page is on unless GATEWAY_TESTER_PAGE says otherwise (the gateway's own default is off); in BFF mode it
# is opened at the public URL, where the session cookie lives.
page_url=http://$GATEWAY_BIND/
off "$GATEWAY_BFF" || page_url=$GATEWAY_PUBLIC_URL/
tester_page="Tester page: open $page_url in a browser to log in, refresh, ask who you are, log out.

"
off "${GATEWAY_TESTER_PAGE:-}" && tester_page=
bff_mode="BFF mode (tokens stay on the gateway, the browser holds an HttpOnly cookie): log in on Keycloak's page at

  $GATEWAY_PUBLIC_URL/bff/login?returnUrl=/

"
off "$GATEWAY_BFF" && bff_mode=

cat <<TXT

EDM auth gateway on http://$GATEWAY_BIND (Keycloak $(scripts/keycloak.sh version) on http://localhost:8180/auth,
Redis on ${GATEWAY_REDIS_URL#redis://})

${tester_page}${bff_mode}Log in as the seed's user with curl:

  curl -s -X POST http://$GATEWAY_BIND/api/login -H 'Content-Type: application/json' \\
       -d '{"username":"ahmadakbar","password":"password"}'

Admin console of realm edm: http://localhost:8180/auth/admin/edm/console/  (edmadmin / edmadmin)
API document (OpenAPI 3.1):  http://$GATEWAY_BIND/openapi.json
Metrics (Prometheus):        http://$GATEWAY_BIND/metrics
Logs: one JSON object per line, below. Ctrl-C stops the gateway, Keycloak and Redis.

TXT
.venv/bin/gunicorn -c python:gateway.gunicorn_conf &
gunicorn_pid=$!
wait "$gunicorn_pid"
