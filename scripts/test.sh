#!/usr/bin/env bash
# `make test`: Keycloak (started if it is not running), the whole suite, Keycloak stopped again if this
# script started it; exits with the suite's status.
set -uo pipefail
cd "$(dirname "$0")/.."

started=no
if ! scripts/keycloak.sh status >/dev/null 2>&1; then
  scripts/keycloak.sh start || exit 1
  started=yes
fi
echo "Keycloak $(scripts/keycloak.sh version) at http://localhost:8180/auth" >&2

.venv/bin/python -m pytest "$@"
status=$?

[ "$started" = yes ] && scripts/keycloak.sh stop
exit $status
