#!/usr/bin/env bash
# `make bench`: Keycloak (started if it is not running), the benchmark (bench/run.py; arguments passed on), or
# with --profile first `make profile` (bench/profile.py), Keycloak stopped again if this script started it;
# exits with the bench's status.
set -uo pipefail
cd "$(dirname "$0")/.."

started=no
if ! scripts/keycloak.sh status >/dev/null 2>&1; then
  scripts/keycloak.sh start || exit 1
  started=yes
fi

if [ "${1:-}" = --profile ]; then
  shift
  .venv/bin/python -m bench.profile "$@"
else
  .venv/bin/python -m bench.run "$@"
fi
status=$?

[ "$started" = yes ] && scripts/keycloak.sh stop
exit $status
