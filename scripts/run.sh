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

# The tester page is on unless GATEWAY_TESTER_PAGE says otherwise (gateway/config.py reads the same words).
tester_page="Tester page: open http://$GATEWAY_BIND/ in a browser to log in, refresh, ask who you are, log out.

"
case "$(printf '%s' "${GATEWAY_TESTER_PAGE:-}" | tr '[:upper:]' '[:lower:]' | tr -d '[:space:]')" in
  0|false|no|off) tester_page= ;;
esac

cat <<TXT

EDM auth gateway on http://$GATEWAY_BIND (Keycloak $(scripts/keycloak.sh version) on http://localhost:8180/auth,
Redis on ${GATEWAY_REDIS_URL#redis://})

${tester_page}Log in as the seed's user with curl:

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
