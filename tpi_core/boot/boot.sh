#!/bin/bash
# tpi machine boot: find or bring Python 3.11+, install the task's agent bundle, start the
# agent. Nothing secret is written here: the machine reads its storage with its own identity
# (the fetcher below) and the agent reads the task's environment from the cloud's secret
# store. Every step is timed in /var/log/tpi/boot.log; a failed boot uploads that log to the
# task's storage, and after @@MAX_FAILURES@@ failed boots the machine also leaves its group.
set -uo pipefail
umask 022
export HOME="${HOME:-/root}" LC_ALL=C.UTF-8 PATH="/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin:$PATH"
TPI=/opt/tpi
LOG=/var/log/tpi/boot.log
CACHE=/var/cache/tpi
mkdir -p "$TPI/bundle" /var/log/tpi /etc/tpi "$CACHE"
STEP=start
FETCHPY=""

log() { printf '%s %s\n' "$(date +%s.%3N)" "$*" >>"$LOG"; printf '%s\n' "tpi-boot: $*" >&2; }
step() { STEP="$1"; log "step $1"; }
# run CMD...: its output goes to the log; a failure ends the boot with its last line
run() {
  local out="$TPI/step.out" rc
  "$@" >"$out" 2>&1
  rc=$?
  while IFS= read -r line; do log "  $line"; done <"$out"
  if [ "$rc" -ne 0 ]; then fail "$(basename "$1") exited $rc: $(tail -n 1 "$out")"; fi
}
fail() {
  log "boot failed: $STEP: $*"
  trap - ERR EXIT
  local key="@@FAILURES@@/$(date +%s)-$(cat /proc/sys/kernel/hostname)-$$.log" n
  fetcher put "$LOG" "$key" || true
  n=$(fetcher count "@@FAILURES@@/") || n=0
  if [ "${n:-0}" -ge @@MAX_FAILURES@@ ]; then
    log "$n failed boots: this machine leaves its group, lowering its size"
    fetcher leave || true
  fi
  sync
  shutdown -h now 2>/dev/null || poweroff
  exit 1
}
trap 'fail "line $LINENO: unexpected error"' ERR
# the cloud's fetcher: its Python program with any python3, else its shell one (curl)
fetcher() {
  if [ -n "$FETCHPY" ]; then "$FETCHPY" "$TPI/fetch.py" --config /etc/tpi/fetch.json "$@"
  else tpi_fetch "$@"; fi
}
fetch() { run fetcher "$@"; }
@@SHELL_FETCHER@@
# the newest python3.1x of 3.11 or later on the machine
find_python() {
  local c p
  for c in python3.14 python3.13 python3.12 python3.11 python3; do
    p=$(command -v "$c" 2>/dev/null) || continue
    if "$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$p"; return 0
    fi
  done
  return 1
}
# any python3 at all: enough for the fetcher, which needs only the standard library
any_python() {
  local c p
  for c in python3 python3.14 python3.13 python3.12 python3.11 python3.10 python3.9 \
           python3.8 python3.7 python3.6 /usr/libexec/platform-python; do
    p=$(command -v "$c" 2>/dev/null) && { echo "$p"; return 0; }
  done
  return 1
}
distro_python() {
  local v
  if command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    # the lock timeout waits out unattended-upgrades at first boot; Error-Mode=any makes a
    # failed index download an error instead of a warning
    apt-get -q -o DPkg::Lock::Timeout=300 -o APT::Update::Error-Mode=any update >>"$LOG" 2>&1 \
      || log "  apt-get update failed"
    for v in 3.13 3.12 3.11; do
      apt-cache show "python$v" >/dev/null 2>&1 || continue
      apt-get -q -y -o DPkg::Lock::Timeout=300 install --no-install-recommends "python$v" \
        >>"$LOG" 2>&1 && return 0
    done
  elif command -v dnf >/dev/null; then
    for v in 3.13 3.12 3.11; do
      dnf install -y -q "python$v" >>"$LOG" 2>&1 && return 0
    done
  fi
  return 1
}

log "boot started (tpi @@VERSION@@, bundle @@DIGEST@@)"
step config
cat >/etc/tpi/fetch.json <<'TPI_FETCH_CONFIG'
@@FETCH_CONFIG@@
TPI_FETCH_CONFIG
cat >"$TPI/fetch.py" <<'TPI_FETCHER'
@@FETCHER@@
TPI_FETCHER
cat >/etc/tpi/boot.json <<'@@MARK@@'
@@BOOT_CONFIG@@
@@MARK@@

step python
PY=$(find_python) || PY=""
if [ -z "$PY" ]; then
  log "no Python 3.11+ on the image: installing one from the distribution"
  distro_python && PY=$(find_python) || PY=""
fi
[ -n "$PY" ] && log "python: $PY ($("$PY" -V 2>&1))"
FETCHPY=${PY:-$(any_python || true)}
[ -n "$FETCHPY" ] || log "no python3 on the image: fetching with curl"

step fetch
BUNDLE="$TPI/bundle/@@DIGEST@@"
mkdir -p "$BUNDLE"
for f in requirements.txt @@WHEELS@@; do
  [ -s "$BUNDLE/$f" ] || fetch get "@@BUNDLE@@/$f" "$BUNDLE/$f"
done
log "bundle: $(ls "$BUNDLE" | tr '\n' ' ')"

if [ -z "$PY" ] && [ -n "@@PYTHON_ARCHIVE@@" ]; then
  step standalone-python
  log "the bundle's standalone Python: @@PYTHON_ARCHIVE@@"
  [ -s "$BUNDLE/@@PYTHON_ARCHIVE@@" ] || fetch get "@@BUNDLE@@/@@PYTHON_ARCHIVE@@" "$BUNDLE/@@PYTHON_ARCHIVE@@"
  run tar -xzf "$BUNDLE/@@PYTHON_ARCHIVE@@" -C "$TPI"
  PY="$TPI/python/bin/python3"
  run "$PY" -c 'import sys; assert sys.version_info >= (3, 11), sys.version'
  log "python: $PY ($("$PY" -V 2>&1))"
  FETCHPY=$PY
fi

step uv
UV="$CACHE/uv-@@UV_VERSION@@/uv"
if [ ! -x "$UV" ]; then
  [ -n "$FETCHPY" ] || fail "no python3 on the image to unpack uv with"
  case "$(uname -m)" in
    x86_64|amd64) url="@@UV_URL_X86_64@@" sum="@@UV_SHA256_X86_64@@" ;;
    aarch64|arm64) url="@@UV_URL_AARCH64@@" sum="@@UV_SHA256_AARCH64@@" ;;
    *) fail "no uv for $(uname -m)" ;;
  esac
  run "$FETCHPY" - "$url" "$sum" "$UV" <<'TPI_GET_UV'
@@GET_UV@@
TPI_GET_UV
fi
log "uv: $("$UV" --version)"
export UV_CACHE_DIR="$CACHE/uv-cache" UV_PYTHON_INSTALL_DIR="$TPI/python" UV_NO_CONFIG=1

if [ -z "$PY" ]; then
  step standalone-python
  log "a standalone Python through uv"
  run "$UV" python install 3.12
  PY=$("$UV" python find --python-preference only-managed 3.12) || fail "uv found no Python 3.12"
  log "python: $PY ($("$PY" -V 2>&1))"
fi

step install
VENV="$TPI/venv"
if [ "$(cat "$VENV/.tpi-bundle" 2>/dev/null)" != "@@DIGEST@@" ]; then
  rm -rf "$VENV"
  run "$UV" venv --quiet --python "$PY" "$VENV"
  WHEELS=()
  for f in @@WHEELS@@; do WHEELS+=("$BUNDLE/$f"); done
  # the tpi wheels by file and exactly the pinned requirements: nothing is resolved
  run "$UV" pip install --quiet --no-deps --python "$VENV/bin/python" \
    --requirement "$BUNDLE/requirements.txt" "${WHEELS[@]}"
  echo "@@DIGEST@@" >"$VENV/.tpi-bundle"
fi
run "$VENV/bin/python" -c 'import @@IMPORTS@@'

step agent
mkdir -p @@WORKDIR@@
cat >/etc/systemd/system/tpi-agent.service <<'TPI_UNIT'
[Unit]
Description=tpi agent
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
Environment=@@ENVIRONMENT@@
ExecStart=@@AGENT@@
KillSignal=SIGTERM
# an agent that failed (not finished, not preempted) gives its machine back: the group
# replaces it and the replacement retries the replica
ExecStopPost=/bin/sh -c 'case "$$EXIT_STATUS" in 0|143) ;; *) shutdown -h now ;; esac'
TimeoutStopSec=100
Restart=no

[Install]
WantedBy=multi-user.target
TPI_UNIT
run systemctl daemon-reload
run systemctl enable --now tpi-agent.service
trap - ERR
log "agent started"
