#!/usr/bin/env bash
# `make test`: ruff first; Keycloak and Redis (each started if it is not running), the whole suite, each stopped again
# if this script started it; then the offline suite on the dependency floors (scripts/floors.sh). Exits non-zero if
# any of them failed, and says how long the suite took.
set -uo pipefail
cd "$(dirname "$0")/.."

.venv/bin/ruff check --quiet . || { echo "ruff: fix the above first (ruff check --fix fixes some)" >&2; exit 1; }

started=no
redis_started=no
if ! scripts/keycloak.sh status >/dev/null 2>&1; then
  scripts/keycloak.sh start || exit 1
  started=yes
fi
if ! scripts/redis.sh status >/dev/null 2>&1; then
  scripts/redis.sh start || { [ "$started" = yes ] && scripts/keycloak.sh stop; exit 1; }
  redis_started=yes
fi
echo "Keycloak $(scripts/keycloak.sh version) at http://localhost:8180/auth, Redis at $(scripts/redis.sh url)" >&2

began=$SECONDS
TEST_REDIS_URL=${TEST_REDIS_URL:-$(scripts/redis.sh url)} .venv/bin/python -m pytest "$@"
status=$?
echo "the suite took $((SECONDS - began)) s" >&2

[ "$started" = yes ] && scripts/keycloak.sh stop
[ "$redis_started" = yes ] && scripts/redis.sh stop
# with the whole suite only: `scripts/test.sh tests/test_x.py` runs that file and nothing else
if [ $# -eq 0 ]; then
  scripts/floors.sh || { floors=$?; [ "$status" = 0 ] && status=$floors; }
fi
exit $status
