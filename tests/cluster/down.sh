#!/usr/bin/env bash
# Tear down the dualseg test bed started by tests/cluster/up.sh: cancel its jobs, stop the slurmd,
# slurmctld, munged and PostgreSQL processes it started (by their pid files, or by the bed's own
# paths in their argv if those are gone; never by a bare program name), kill job processes left
# behind by its slurmstepd, remove its /etc/hosts line and its directory.
# Safe to run twice, and on a half-started bed. DUALSEG_TESTBED_KEEP_LOGS=1 keeps $DIR/log.
set -uo pipefail

DIR="${DUALSEG_TESTBED_DIR:-/tmp/dualseg-testbed}"
CONF="$DIR/slurm/slurm.conf"
log() { echo "testbed: $*" >&2; }

# Same lock as up.sh. up.sh calls this while holding it (DUALSEG_TESTBED_LOCKED=1).
if [[ "${DUALSEG_TESTBED_LOCKED:-0}" != 1 && -d "$(dirname "$DIR")" ]]; then
  exec 9>"$DIR.lock"
  flock -w 180 9 || { log "error: another up.sh/down.sh holds $DIR.lock for over 180 s"; exit 1; }
fi

# Daemons of this bed, found without pid files (the directory may have been deleted under them):
# munged, slurmctld, slurmd and postgres all carry an absolute path inside $DIR in their argv.
bed_daemon_pids() {
  local f p cmd
  for f in $(grep -lsF -- "$DIR/" /proc/[0-9]*/cmdline); do
    p="${f#/proc/}"; p="${p%/cmdline}"
    [[ $p == "$$" ]] && continue
    cmd="$(tr '\0' ' ' 2>/dev/null <"$f")" || continue
    case "$cmd" in
      munged\ *--socket="$DIR"/*|slurmctld\ -f\ "$DIR"/*|slurmd\ -f\ "$DIR"/*|*/postgres\ -D\ "$DIR"/*)
        echo "$p" ;;
    esac
  done
}

# A pid that exists and is not a zombie (an orphan's zombie lingers until init reaps it).
alive() {
  local line
  [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null || return 1
  { read -r line <"/proc/$1/stat"; } 2>/dev/null || return 1
  [[ "${line##*) }" != Z* ]]
}

# wait_or_kill SECONDS PID...: wait up to SECONDS for the pids to end, then SIGKILL what is left.
wait_or_kill() {
  local wait_s=$1; shift
  local p left i
  for ((i = 0; i < wait_s * 10; i++)); do
    left=0
    for p in "$@"; do alive "$p" && left=1; done
    (( left )) || return 0
    sleep 0.1
  done
  for p in "$@"; do alive "$p" && kill -KILL "$p" 2>/dev/null; done
  return 0
}

# stop_pids SECONDS PID...: SIGTERM, then wait_or_kill.
stop_pids() {
  local wait_s=$1; shift
  local p
  for p in "$@"; do alive "$p" && kill -TERM "$p" 2>/dev/null; done
  wait_or_kill "$wait_s" "$@"
}

pid_of() { [[ -s "$1" ]] && head -n1 "$1" | tr -dc '0-9'; }

# "pid ppid" of every process, from /proc (procps may be absent on a minimal CI image).
ppid_table() {
  local s line rest state ppid p
  for s in /proc/[0-9]*/stat; do
    { read -r line <"$s"; } 2>/dev/null || continue
    rest="${line##*) }"          # the command name may contain spaces and parentheses
    read -r state ppid _ <<<"$rest"
    p="${s#/proc/}"
    echo "${p%/stat} $ppid"
  done
}

# Processes of this bed's jobs: every slurmstepd started by this bed's slurmd (they inherit
# SLURM_CONF=$CONF) and all of their descendants.
bed_job_pids() {
  local f p roots=() all
  for f in $(grep -lszxF -- "SLURM_CONF=$CONF" /proc/[0-9]*/environ); do
    p="${f#/proc/}"; p="${p%/environ}"
    [[ "$(cat 2>/dev/null <"/proc/$p/comm")" == slurmstepd ]] && roots+=("$p")
  done
  (( ${#roots[@]} )) || return 0
  all="$(ppid_table)"
  local frontier=("${roots[@]}") next found=("${roots[@]}")
  while (( ${#frontier[@]} )); do
    next=()
    for p in "${frontier[@]}"; do
      while read -r c; do next+=("$c"); done < <(awk -v pp="$p" '$2 == pp {print $1}' <<<"$all")
    done
    found+=("${next[@]}")
    frontier=("${next[@]}")
  done
  echo "${found[@]}"
}

# 1. cancel jobs so slurmd ends them cleanly (bounded: the controller may be gone already)
if [[ -f "$CONF" ]] && alive "$(pid_of "$DIR/slurm/run/slurmctld.pid")"; then
  jobs="$(SLURM_CONF="$CONF" timeout 10 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')"
  if [[ -n "${jobs// }" ]]; then
    # shellcheck disable=SC2086
    SLURM_CONF="$CONF" timeout 10 scancel $jobs 2>/dev/null
    for ((i = 0; i < 50; i++)); do
      [[ -z "$(SLURM_CONF="$CONF" timeout 5 squeue -h -t R,CG -o %A 2>/dev/null)" ]] && break
      sleep 0.2
    done
  fi
fi

# 2. daemons, by pid file, all at once: SIGTERM to slurmd, slurmctld and munged, SIGINT to the
#    postmaster (PostgreSQL's "fast" shutdown: roll back open transactions, disconnect clients)
pids=()
for f in "$DIR"/slurm/run/slurmd-*.pid "$DIR/slurm/run/slurmctld.pid" "$DIR/munge/munged.pid"; do
  p="$(pid_of "$f")"; alive "$p" && kill -TERM "$p" 2>/dev/null && pids+=("$p")
done
p="$(pid_of "$DIR/pg/data/postmaster.pid")"
alive "$p" && kill -INT "$p" 2>/dev/null && pids+=("$p")
(( ${#pids[@]} )) && wait_or_kill 20 "${pids[@]}"

# 3. whatever job processes survived (a hung job, a killed slurmd)
read -r -a leftovers <<<"$(bed_job_pids)"
(( ${#leftovers[@]} )) && { log "killing leftover job processes: ${leftovers[*]}"; stop_pids 5 "${leftovers[@]}"; }

# 4. anything of this bed still running (pid files lost, e.g. its directory was deleted)
read -r -a strays <<<"$(bed_daemon_pids | tr '\n' ' ')"
(( ${#strays[@]} )) && { log "stopping daemons without pid files: ${strays[*]}"; stop_pids 10 "${strays[@]}"; }

if [[ ! -d "$DIR" ]]; then
  if (( ${#strays[@]} + ${#leftovers[@]} )); then log "down ($DIR was already deleted)"
  else log "nothing to tear down ($DIR does not exist)"; fi
  exit 0
fi

# 5. /etc/hosts line, if this bed added it: exactly the line it recorded (another bed may have added
#    its own); a bed started by an older up.sh recorded nothing and tagged its line ' # dualseg-testbed'.
if [[ -f "$DIR/hosts-added" ]]; then
  added="$(head -n1 "$DIR/hosts-added")"
  if [[ -n $added ]] && grep -qxF -- "$added" /etc/hosts; then
    kept="$(grep -vxF -- "$added" /etc/hosts)"
  elif [[ -z $added ]] && grep -q ' # dualseg-testbed$' /etc/hosts; then
    kept="$(grep -v ' # dualseg-testbed$' /etc/hosts)"
  else
    kept=""
  fi
  # rewrite in place (not sed -i): /etc/hosts is often a bind mount that cannot be renamed over
  [[ -z $kept ]] || printf '%s\n' "$kept" >/etc/hosts
fi

# 6. files
if [[ "${DUALSEG_TESTBED_KEEP_LOGS:-0}" == 1 ]]; then
  find "$DIR" -mindepth 1 -maxdepth 1 ! -name log -exec rm -rf {} +
else
  rm -rf "$DIR"
fi
log "down ($DIR)"
