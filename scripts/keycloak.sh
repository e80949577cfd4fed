#!/usr/bin/env bash
# The local Keycloak of the stack: fetch (Maven, by coordinates, cached outside the repository), unpack,
# start in the background with the edm realm imported, wait until ready, stop.
#   scripts/keycloak.sh start | stop | status | fetch | reset
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
version=$(cat "$root/keycloak/VERSION")
cache=${EDM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/edm-gateway}
home="$cache/keycloak-$version"
pidfile="$home/edm-gateway.pid"
logfile="$home/edm-gateway.log"
stamp="$home/data/edm-realm.sha256"
ready_url="http://127.0.0.1:9000/auth/health/ready"
ready_timeout=${KEYCLOAK_START_TIMEOUT:-300}

# One place for the server's command-line flags; the compose file's keycloak command is checked against it.
flags=(start-dev --http-host=127.0.0.1 $(cat "$root/keycloak/flags"))

log() { printf 'keycloak: %s\n' "$*" >&2; }

fetch() {
  local zip="$cache/keycloak-quarkus-dist-$version.zip"
  if [ ! -x "$home/bin/kc.sh" ]; then
    if [ ! -s "$zip" ]; then
      command -v mvn >/dev/null || { log "Maven (mvn) is needed to fetch Keycloak"; exit 1; }
      log "fetching org.keycloak:keycloak-quarkus-dist:$version:zip with Maven"
      mkdir -p "$cache"
      mvn -q -B -Dstyle.color=never dependency:copy "-Dartifact=org.keycloak:keycloak-quarkus-dist:$version:zip" \
        "-DoutputDirectory=$cache" >&2
    fi
    log "unpacking $zip"
    rm -rf "$home.partial" && mkdir -p "$home.partial"
    if command -v unzip >/dev/null; then unzip -q "$zip" -d "$home.partial"; else python3 -m zipfile -e "$zip" "$home.partial"; fi
    mv "$home.partial/keycloak-$version" "$home" && rm -rf "$home.partial"
    chmod +x "$home"/bin/*.sh
  fi
}

# The pid of our Keycloak, if the pid file names a live process that runs this distribution (pids are reused).
running_pid() {
  local pid
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [ -n "$pid" ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF "$home" && echo "$pid"
}

is_ready() {
  python3 - "$ready_url" <<'PY' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
}

start() {
  if running_pid >/dev/null && is_ready; then
    log "Keycloak $version already running (pid $(running_pid))"
    return 0
  fi
  if is_ready; then
    log "another Keycloak answers on port 9000; stop it first"; exit 1
  fi
  fetch
  command -v java >/dev/null || { log "Java is needed to run Keycloak"; exit 1; }
  # A realm file that changed since the last import means a fresh dev database (imports never overwrite).
  local want; want=$(sha256sum "$root/keycloak/realm-edm.json" | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "importing keycloak/realm-edm.json into a fresh dev database"
    rm -rf "$home/data"
  fi
  mkdir -p "$home/data/import"
  cp "$root/keycloak/realm-edm.json" "$home/data/import/realm-edm.json"
  log "starting Keycloak $version on http://localhost:8180/auth (log: $logfile)"
  KC_BOOTSTRAP_ADMIN_USERNAME=${KC_BOOTSTRAP_ADMIN_USERNAME:-admin} \
  KC_BOOTSTRAP_ADMIN_PASSWORD=${KC_BOOTSTRAP_ADMIN_PASSWORD:-admin} \
    setsid "$home/bin/kc.sh" "${flags[@]}" >"$logfile" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  local waited=0
  until is_ready; do
    if ! running_pid >/dev/null; then
      log "Keycloak exited during start; last lines of $logfile:"; tail -n 40 "$logfile" >&2; exit 1
    fi
    if [ "$waited" -ge "$((ready_timeout * 2))" ]; then
      log "not ready after ${ready_timeout}s; see $logfile"; stop; exit 1
    fi
    sleep 0.5; waited=$((waited + 1))
  done
  echo "$want" > "$stamp"
  log "Keycloak $version ready after $((waited / 2))s"
}

stop() {
  local pid; pid=$(running_pid) || { rm -f "$pidfile"; log "not running"; return 0; }
  log "stopping Keycloak (pid $pid)"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
  rm -f "$pidfile"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running_pid >/dev/null && is_ready; then echo "running $version"; else echo "stopped"; exit 1; fi ;;
  fetch) fetch ;;
  reset) stop; rm -rf "$home/data"; log "dev database removed; the next start imports the realm again" ;;
  version) echo "$version" ;;
  *) echo "usage: $0 start|stop|status|fetch|reset|version" >&2; exit 2 ;;
esac
