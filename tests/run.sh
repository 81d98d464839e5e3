#!/usr/bin/env bash
# The whole test suite: install what is missing, bring up the test bed (PostgreSQL + two-node
# SLURM, tests/cluster/up.sh), run pytest over tests/ (extra arguments are passed through), tear
# down the bed if this script started it, and exit with pytest's status ("no tests ran" = failure).
#
# Usage: bash tests/run.sh [pytest args...]   (paths among the args replace the default tests/)
#   DUALSEG_NO_TESTBED=1  do not start the bed (tests that need it skip locally, fail under CI=true)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python}"
log() { echo "run.sh: $*" >&2; }

# ---------------------------------------------------------------- dependencies
if ! "$PY" -c "import torch" 2>/dev/null; then
  log "installing torch==2.13.0"
  "$PY" -m pip install -q "torch==2.13.0"
fi
if [[ "${CI:-}" == true || "${CI:-}" == 1 ]] || ! "$PY" - 2>/dev/null <<'EOF'
import importlib.metadata as md, importlib.util as iu, pathlib, sys
import dualseg, pytest, pytest_timeout, xdist, optuna, submitit, zarr, sqlalchemy, psycopg2, yaml, tqdm, matplotlib, rasterio, ruff, mypy  # noqa: F401
# the installed dualseg must be this checkout (editable install)
sys.exit(0 if pathlib.Path(dualseg.__file__).resolve().parents[1] == pathlib.Path.cwd().resolve() else 1)
EOF
then
  log "installing the project and its test extras (pip install -e .[test])"
  "$PY" -m pip install -q -e ".[test]"
fi

# ---------------------------------------------------------------- test bed
STARTED_BED=0
teardown() {
  local rc=$?
  if [[ $STARTED_BED == 1 ]]; then
    log "tearing down the test bed this run started"
    bash tests/cluster/down.sh || log "warning: test bed teardown failed"
  fi
  exit $rc
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ "${DUALSEG_NO_TESTBED:-0}" != 1 ]]; then
  if bash tests/cluster/up.sh --check >/dev/null 2>&1; then
    log "using the test bed that is already up"
  else
    STARTED_BED=1
    bash tests/cluster/up.sh || { log "error: the test bed did not come up (see above)"; exit 1; }
  fi
  set -a
  # shellcheck disable=SC1091
  source "${DUALSEG_TESTBED_DIR:-/tmp/dualseg-testbed}/env"
  set +a
fi

# ---------------------------------------------------------------- lint and types
# ruff over the library, the HPC layer, tests and benchmarks, mypy over the first two (settings in
# pyproject.toml), before any test.
if [[ "${DUALSEG_NO_LINT:-0}" != 1 ]]; then
  log "ruff check dualseg hpc tests bench; mypy"
  "$PY" -m ruff check dualseg hpc tests bench || { log "error: ruff found problems (see above)"; exit 1; }
  "$PY" -m mypy || { log "error: mypy found problems (see above)"; exit 1; }
fi

# ---------------------------------------------------------------- tests
# Whole tests/ folder unless paths were given (bash tests/run.sh tests/data -x). The whole suite runs
# in two pytest sessions: everything but the fault suite, then tests/faults (its scenarios mostly wait
# on SLURM and PostgreSQL, so they run $DUALSEG_FAULT_WORKERS at a time: 2, because with CPU binding the
# bed's nodes have only the host's CPUs and one two-worker scenario fills n1/n2; more would queue behind
# each other past the scenarios' waits).
run_pytest() {
  local rc=0
  "$PY" -m pytest "$@" </dev/null || rc=$?
  if [[ $rc == 5 ]]; then
    log "error: pytest collected no tests"
    rc=1
  fi
  return $rc
}
has_path=0
for a in "$@"; do [[ $a != -* && -e "${a%%::*}" ]] && has_path=1; done
set +e
if (( has_path )); then
  run_pytest "$@"
  rc=$?
else
  run_pytest tests --ignore=tests/faults -n "${DUALSEG_TEST_WORKERS:-3}" "$@"
  rc=$?
  run_pytest tests/faults -n "${DUALSEG_FAULT_WORKERS:-2}" "$@"
  rc2=$?
  (( rc == 0 )) && rc=$rc2
fi
set -e
exit $rc
