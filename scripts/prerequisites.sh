#!/usr/bin/env bash
# System tools the stack needs: Python with venv, Java 17+ (Keycloak), Maven (fetches Keycloak).
# Installs the missing ones with apt-get where that is possible, else says what to install.
set -euo pipefail

missing=()
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
[ ${#missing[@]} -eq 0 ] && exit 0

if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "prerequisites: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "prerequisites: please install ${missing[*]} (Debian package names), then run make again" >&2
  exit 1
fi
