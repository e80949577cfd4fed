#!/usr/bin/env bash
# The local Redis of the stack (Debian's redis-server): loopback only, nothing kept on disk, its own directory
# under the cache directory, started in the background with a pid file.
#   scripts/redis.sh start | stop | status | url
set -euo pipefail

cache=${EDM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/edm-gateway}
home="$cache/redis"
port=${EDM_REDIS_PORT:-6390}
pidfile="$home/redis.pid"
logfile="$home/redis.log"

log() { printf 'redis: %s\n' "$*" >&2; }

# The pid of our Redis, if the pid file names a live redis-server on our port (pids are reused).
running_pid() {
  local pid
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [ -n "$pid" ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "redis-server.*:$port" && echo "$pid"
}

answers() {
  python3 - "$port" <<'PY' 2>/dev/null
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1) as s:
    s.sendall(b"PING\r\n")
    sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)
PY
}

start() {
  if running_pid >/dev/null && answers; then
    log "already running on 127.0.0.1:$port (pid $(running_pid))"
    return 0
  fi
  if answers; then
    log "another Redis answers on port $port; stop it or set EDM_REDIS_PORT"; exit 1
  fi
  command -v redis-server >/dev/null || { log "redis-server is needed (Debian package redis-server)"; exit 1; }
  mkdir -p "$home"
  # No persistence: the counts and turns it holds are worth nothing after a restart.
  redis-server --port "$port" --bind 127.0.0.1 --protected-mode yes --save '' --appendonly no --dir "$home" \
    --daemonize yes --pidfile "$pidfile" --logfile "$logfile"
  for _ in $(seq 1 50); do answers && break; sleep 0.1; done
  answers || { log "did not start; see $logfile"; exit 1; }
  log "running on 127.0.0.1:$port (log: $logfile)"
}

stop() {
  local pid; pid=$(running_pid) || { rm -f "$pidfile"; log "not running"; return 0; }
  log "stopping Redis (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$pidfile"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running_pid >/dev/null && answers; then echo "running on 127.0.0.1:$port"; else echo "stopped"; exit 1; fi ;;
  url) echo "redis://127.0.0.1:$port/0" ;;
  *) echo "usage: $0 start|stop|status|url" >&2; exit 2 ;;
esac
