#!/usr/bin/env bash
# Bring up the dualseg test bed on this host (as root): a PostgreSQL server with a password-protected
# role (scram over 127.0.0.1) and a real two-node SLURM cluster (munged, slurmctld, slurmd -N n1/n2).
#
# Everything lives under $DUALSEG_TESTBED_DIR (default /tmp/dualseg-testbed); the connection
# settings are written to $DIR/env as `export K=V` lines. Idempotent: when the bed is already up and
# healthy this exits 0 at once. A failed bring-up prints the daemon log tails and tears down what it
# started.
#
# Usage: tests/cluster/up.sh           bring the bed up (or confirm it is up)
#        tests/cluster/up.sh --check   exit 0 if the bed is up and healthy, 1 otherwise; starts nothing
set -euo pipefail

DIR="${DUALSEG_TESTBED_DIR:-/tmp/dualseg-testbed}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TIMEOUT="${DUALSEG_TESTBED_TIMEOUT:-60}"   # seconds to wait for each service
PARTITION="${DUALSEG_TESTBED_PARTITION:-debug}"
CPUS="${DUALSEG_TESTBED_CPUS:-}"           # per node; default (and only with CPU binding): the host's own
EXTRA_CONF="${DUALSEG_TESTBED_SLURM_EXTRA:-}"  # extra slurm.conf lines (later lines win)
PG_USER=dualseg
PG_DB=dualseg_test

log() { echo "testbed: $*" >&2; }
die() { echo "testbed: error: $*" >&2; exit 1; }

case "${1:-}" in
  "") MODE=up ;;
  --check) MODE=check ;;
  -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
  *) die "unknown option '$1' (use --check or no argument)" ;;
esac

[[ $PARTITION =~ ^[A-Za-z0-9_-]+$ ]] || die "DUALSEG_TESTBED_PARTITION='$PARTITION' is not a valid partition name"
[[ -z $CPUS || $CPUS =~ ^[1-9][0-9]*$ ]] || die "DUALSEG_TESTBED_CPUS='$CPUS' is not a positive integer"
[[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "DUALSEG_TESTBED_TIMEOUT='$TIMEOUT' is not a positive number of seconds"

# ---------------------------------------------------------------- health check of a running bed
pg_ok() {  # a real password-authenticated query over TCP
  PGPASSWORD="$DUALSEG_TEST_PG_PASSWORD" PGCONNECT_TIMEOUT=5 psql -X -q -w -h 127.0.0.1 \
    -p "$DUALSEG_TEST_PG_PORT" -U "$PG_USER" -d "$PG_DB" -tAc 'select 1' 2>/dev/null | grep -qx 1
}

nodes_state() {  # "n1 idle\nn2 idle\nn3 idle" (states of all nodes, every partition)
  timeout 15 sinfo -h -N -o '%N %T' 2>/dev/null | sort -u
}

slurm_ok() {  # n1 and n2 respond (idle, or busy with jobs) and the controller answers
  local states
  states="$(SLURM_CONF="$DIR/slurm/slurm.conf" nodes_state)" || return 1
  [[ "$(grep -cE '^n[12] (idle|mixed|allocated|completing)$' <<<"$states")" == 2 ]]
}

template_changed() {  # the bed runs a slurm.conf rendered from another tests/cluster/slurm.conf.in
  [[ "$(cat "$DIR/slurm/template.sha256" 2>/dev/null)" != "$(sha256sum <"$HERE/slurm.conf.in")" ]]
}

healthy() {
  [[ -f "$DIR/env" ]] || return 1
  # shellcheck disable=SC1091
  ( source "$DIR/env" && pg_ok && slurm_ok )
}

if [[ $MODE == check ]]; then
  if healthy; then echo "testbed: up ($DIR)"; exit 0; fi
  echo "testbed: not up ($DIR)"; exit 1
fi

# One bring-up/teardown at a time (two test runs may start together); the lock dies with us.
mkdir -p "$(dirname "$DIR")"
exec 9>"$DIR.lock"
flock -w 180 9 || die "another up.sh/down.sh holds $DIR.lock for over 180 s"

# A busy machine can make one probe time out: only a bed that fails three in a row is restarted,
# since restarting kills every job running on it.
for attempt in 1 2 3; do
  if healthy; then
    log "already up ($DIR/env)"
    # never restarted for this (it would end every running job): say how to apply the new template
    ! template_changed || log "warning: this bed runs a slurm.conf from an older tests/cluster/slurm.conf.in" \
      "(e.g. without partitions low/high); apply it with: bash $HERE/down.sh && bash $HERE/up.sh"
    command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
      || log "warning: no Chromium for the report's browser check (it fails under CI=true): apt-get install chromium"
    exit 0
  fi
  [[ -f "$DIR/env" ]] || break
  sleep 2
done

[[ $EUID == 0 ]] || die "tests/cluster/up.sh must run as root (slurmd launches jobs; postgres runs as user postgres)"

T0=$SECONDS
# munged insists that every directory above its socket is searchable by everybody.
d="$(dirname "$(realpath -m "$DIR")")"
while [[ $d != / ]]; do
  if [[ -d $d ]] && ! (( 8#$(stat -c %a "$d") & 1 )); then
    die "$d is not searchable by others (mode $(stat -c %a "$d")); munged needs o+x on every parent of DUALSEG_TESTBED_DIR"
  fi
  d="$(dirname "$d")"
done
if [[ -e "$DIR" ]]; then
  log "stale or unhealthy bed in $DIR: tearing it down first"
  DUALSEG_TESTBED_LOCKED=1 bash "$HERE/down.sh" >&2 || true
fi

# From here on, any failure prints the logs and tears down what was started.
STARTED=0
on_exit() {
  local rc=$?
  if [[ $rc != 0 && $STARTED == 1 ]]; then
    log "bring-up failed; log tails follow"
    local f
    for f in "$DIR"/log/*.log; do
      [[ -s $f ]] || continue
      echo "----- $f (last 25 lines)" >&2
      tail -n 25 "$f" >&2
    done
    DUALSEG_TESTBED_LOCKED=1 DUALSEG_TESTBED_KEEP_LOGS=1 bash "$HERE/down.sh" >&2 || true
    log "logs kept in $DIR/log"
  fi
  exit $rc
}
trap on_exit EXIT

# ---------------------------------------------------------------- packages (fresh CI machine)
need_pkgs=()
for b in slurmctld slurmd sbatch sinfo scontrol; do command -v $b >/dev/null || need_pkgs=(slurm-wlm); done
command -v munged >/dev/null || need_pkgs+=(munge)
find_pg_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do [[ -x $d/initdb ]] && { echo "$d"; return; }; done
  command -v initdb >/dev/null && dirname "$(readlink -f "$(command -v initdb)")"
}
PG_BIN="$(find_pg_bin || true)"
[[ -n $PG_BIN ]] || need_pkgs+=(postgresql)
command -v psql >/dev/null || need_pkgs+=(postgresql-client)
# the report's browser check (tests/hpc/test_report.py: headless Chromium loads index.html)
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || need_pkgs+=(chromium)
if (( ${#need_pkgs[@]} )); then
  command -v apt-get >/dev/null || die "missing ${need_pkgs[*]} and no apt-get to install them"
  log "installing ${need_pkgs[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2 9>&- \
    || die "apt-get install ${need_pkgs[*]} failed"
  PG_BIN="$(find_pg_bin || true)"
  [[ -n $PG_BIN ]] || die "no PostgreSQL server binaries (initdb) found after install"
fi
id postgres >/dev/null 2>&1 || die "no 'postgres' user on this machine (install the postgresql package)"

# ---------------------------------------------------------------- layout, ports, secrets
STARTED=1
rm -rf "$DIR"
mkdir -p "$DIR"/{log,slurm/state,slurm/run,slurm/spool,munge/run}
chmod 755 "$DIR" "$DIR/log"
install -d -o postgres -g postgres -m 700 "$DIR/pg"
install -d -o postgres -g postgres -m 755 "$DIR/pg/run"
install -o postgres -g postgres -m 644 /dev/null "$DIR/log/postgres.log"

PY="$(command -v python3 || command -v python)"
read -r PG_PORT CTLD_PORT N1_PORT N2_PORT N3_PORT < <("$PY" - <<'EOF'
import socket
socks, ports = [], []
while len(ports) < 5:  # keep all sockets open until the end so the five ports differ
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
    p = s.getsockname()[1]
    if p not in ports:
        ports.append(p)
print(*ports)
EOF
)
PG_PASSWORD="$("$PY" -c 'import secrets; print(secrets.token_hex(16))')"
HOST="$(uname -n | cut -d. -f1)"
MEM_MB="$(awk '/MemTotal/ {m=int($2/1024/2); print (m>512?m:512)}' /proc/meminfo)"

# ---------------------------------------------------------------- node names resolve to 127.0.0.1
# TorchDistributedEnvironment uses the first SLURM node name (n1, or n3) as MASTER_ADDR. Only the
# names that do not resolve yet are added, in a line of this bed's own (down.sh removes exactly it).
missing=()
for n in n1 n2 n3; do
  [[ "$(getent ahostsv4 "$n" | awk 'NR==1{print $1}')" == 127.0.0.1 ]] || missing+=("$n")
done
if (( ${#missing[@]} )); then
  [[ -z "$(tail -c1 /etc/hosts)" ]] || echo >> /etc/hosts
  line="127.0.0.1 ${missing[*]} # dualseg-testbed $DIR"
  echo "$line" >> /etc/hosts
  echo "$line" >"$DIR/hosts-added"
fi

# ---------------------------------------------------------------- munge (own key and socket)
MUNGE_SOCKET="$DIR/munge/run/munge.socket"
chmod 711 "$DIR/munge"
dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
chmod 600 "$DIR/munge/munge.key"
munged --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/munge/munged.pid" \
  --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" </dev/null >/dev/null 2>&1 9>&- \
  || die "munged failed to start (see $DIR/log/munged.log)"

# ---------------------------------------------------------------- PostgreSQL
as_pg() { runuser -u postgres -- "$@"; }
as_pg "$PG_BIN/initdb" -D "$DIR/pg/data" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
  -E UTF8 --no-locale --no-sync >"$DIR/log/initdb.log" 2>&1 || die "initdb failed (see $DIR/log/initdb.log)"
cat >>"$DIR/pg/data/postgresql.conf" <<EOF
# dualseg test bed: loopback only, throwaway data (no durability needed, so no fsync)
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$DIR/pg/run'
password_encryption = 'scram-sha-256'
max_connections = 300
shared_buffers = 32MB
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
cat >"$DIR/pg/data/pg_hba.conf" <<EOF
# TYPE  DATABASE  USER      ADDRESS        METHOD
local   all       postgres                 peer
host    all       all       127.0.0.1/32   scram-sha-256
EOF
as_pg "$PG_BIN/pg_ctl" -D "$DIR/pg/data" -l "$DIR/log/postgres.log" -w -t "$TIMEOUT" start \
  </dev/null >/dev/null 2>&1 9>&- || die "PostgreSQL did not start within ${TIMEOUT}s (see $DIR/log/postgres.log)"
# The password goes through stdin, never argv.
as_pg psql -X -q -v ON_ERROR_STOP=1 -h "$DIR/pg/run" -p "$PG_PORT" -U postgres -d postgres \
  >/dev/null 2>>"$DIR/log/postgres.log" <<EOF || die "creating role/database failed (see $DIR/log/postgres.log)"
CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
CREATE DATABASE $PG_DB OWNER $PG_USER;
EOF
DUALSEG_TEST_PG_PASSWORD="$PG_PASSWORD" DUALSEG_TEST_PG_PORT="$PG_PORT" pg_ok \
  || die "password login of role $PG_USER over 127.0.0.1:$PG_PORT failed (see $DIR/log/postgres.log)"

# ---------------------------------------------------------------- SLURM
: >"$DIR/slurm/plugstack.conf"
# Nodes declare the host's own topology so that task/affinity binds each task to real CPUs (see the
# template); another DUALSEG_TESTBED_CPUS gets nodes of that size without binding.
HW="$(slurmd -C 2>/dev/null | head -n1)"
hw() { sed -n "s/.* $1=\([0-9][0-9]*\).*/\1/p" <<<"$HW"; }
for k in CPUs Boards SocketsPerBoard CoresPerSocket ThreadsPerCore; do
  [[ -n "$(hw $k)" ]] || die "slurmd -C did not report $k of this host (it said: ${HW:-nothing})"
done
if [[ -z $CPUS || $CPUS == "$(hw CPUs)" ]]; then
  CPUS="$(hw CPUs)" TASK_PLUGIN=task/affinity
  NODE_CPUS="CPUs=$CPUS Boards=$(hw Boards) SocketsPerBoard=$(hw SocketsPerBoard) CoresPerSocket=$(hw CoresPerSocket) ThreadsPerCore=$(hw ThreadsPerCore)"
else
  TASK_PLUGIN=task/none NODE_CPUS="CPUs=$CPUS"
  log "DUALSEG_TESTBED_CPUS=$CPUS is not this host's $(hw CPUs): nodes declare $CPUS CPUs and tasks are not bound (task/none)"
fi
sed -e "s#@DIR@#$DIR#g" -e "s#@HOST@#$HOST#g" -e "s#@CTLD_PORT@#$CTLD_PORT#g" \
    -e "s#@N1_PORT@#$N1_PORT#g" -e "s#@N2_PORT@#$N2_PORT#g" -e "s#@N3_PORT@#$N3_PORT#g" -e "s#@NODE_CPUS@#$NODE_CPUS#g" \
    -e "s#@TASK_PLUGIN@#$TASK_PLUGIN#g" -e "s#@MEM_MB@#$MEM_MB#g" -e "s#@PARTITION@#$PARTITION#g" -e "s#@MUNGE_SOCKET@#$MUNGE_SOCKET#g" \
    "$HERE/slurm.conf.in" >"$DIR/slurm/slurm.conf"
[[ -z $EXTRA_CONF ]] || printf '# DUALSEG_TESTBED_SLURM_EXTRA\n%s\n' "$EXTRA_CONF" >>"$DIR/slurm/slurm.conf"
! grep -n '@[A-Z_]*@' "$DIR/slurm/slurm.conf" || die "unfilled placeholder in $DIR/slurm/slurm.conf"
sha256sum <"$HERE/slurm.conf.in" >"$DIR/slurm/template.sha256"
export SLURM_CONF="$DIR/slurm/slurm.conf"
slurmctld -f "$SLURM_CONF" -c -i </dev/null >>"$DIR/log/slurmctld.log" 2>&1 9>&- \
  || die "slurmctld failed to start (see $DIR/log/slurmctld.log)"
for n in n1 n2 n3; do
  slurmd -f "$SLURM_CONF" -N "$n" </dev/null >>"$DIR/log/slurmd-$n.log" 2>&1 9>&- \
    || die "slurmd -N $n failed to start (see $DIR/log/slurmd-$n.log)"
done

deadline=$((SECONDS + TIMEOUT))
states=""
until [[ "$(grep -cE '^n[123] idle$' <<<"$states")" == 3 ]]; do
  if (( SECONDS >= deadline )); then
    die "SLURM nodes not idle after ${TIMEOUT}s; sinfo says: $(tr '\n' ' ' <<<"${states:-<no answer>}")"
  fi
  for f in "$DIR"/slurm/run/*.pid; do  # a daemon that died will not come back: say so now
    [[ -s $f ]] && ! kill -0 "$(head -n1 "$f")" 2>/dev/null && die "$(basename "$f" .pid) exited during start-up"
  done
  sleep 0.5
  states="$(nodes_state || true)"
done

# ---------------------------------------------------------------- env file (atomic, private)
umask 077
cat >"$DIR/env.tmp" <<EOF
# dualseg test bed ($(date -u +%FT%TZ)); source this file to use it. Contains the test DB password.
export DUALSEG_TESTBED_DIR=$DIR
export SLURM_CONF=$SLURM_CONF
export DUALSEG_TEST_PARTITION=$PARTITION
export DUALSEG_TEST_NODES=n1,n2
export DUALSEG_TEST_PG_URL=postgresql+psycopg2://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB
export DUALSEG_TEST_PG_PASSWORD=$PG_PASSWORD
export DUALSEG_TEST_PG_PORT=$PG_PORT
EOF
mv "$DIR/env.tmp" "$DIR/env"
log "up in $((SECONDS - T0))s: postgres 127.0.0.1:$PG_PORT, slurm partition '$PARTITION' nodes n1,n2" \
  "(partitions low/high: n3), $CPUS CPUs each, $TASK_PLUGIN; source $DIR/env"
