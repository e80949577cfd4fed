#!/usr/bin/env bash
# docker-compose.yml's topology without Docker (tests/topology.py): PostgreSQL, Keycloak in production mode, Redis
# with a replica and three Sentinels, two gateways and nginx, on loopback ports from EDM_TOPOLOGY_BASE_PORT (18000)
# up; started in the background, stopped with `stop`.
#   scripts/topology.sh start | stop | status
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m tests.topology "$@"
