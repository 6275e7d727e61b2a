# Shared set-up steps for bin/demo and bin/test (sourced, not run).
# Installs what is missing, so both commands work on a fresh clone.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

log() { printf '\033[1m[calibweb]\033[0m %s\n' "$*" >&2; }

ensure_venv() {
  # $1: pip extras, e.g. "test"
  local extras="${1:-}" spec="$ROOT" stamp
  [ -n "$extras" ] && spec="$ROOT[$extras]"
  if [ ! -x "$PY" ]; then
    log "creating the virtual environment in .venv"
    python3 -m venv "$VENV"
    "$PY" -m pip install --quiet --upgrade pip
  fi
  stamp="$VENV/.installed-$(sha1sum "$ROOT/pyproject.toml" | cut -c1-12)-${extras:-base}"
  if [ ! -f "$stamp" ]; then
    log "installing Python dependencies (pip install -e '.${extras:+[$extras]}')"
    "$PY" -m pip install --quiet -e "$spec"
    touch "$stamp"
  fi
}

ensure_chromium() {
  if [ ! -x /usr/bin/chromium ]; then
    log "installing Debian's chromium for the browser tests"
    if [ "$(id -u)" = 0 ]; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >&2
    else
      sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
    fi
  fi
}

ensure_postgres() {
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
    for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
  pg_isready -q -h 127.0.0.1 -p 5432 || { log "PostgreSQL is not reachable on 127.0.0.1:5432"; return 1; }
}

ensure_redis() {
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    log "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log
    for _ in $(seq 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.5; done
  fi
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null || { log "Redis is not reachable on 127.0.0.1:6379"; return 1; }
}
