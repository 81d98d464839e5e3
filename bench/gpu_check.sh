#!/usr/bin/env bash
# One GPU check, <= 5 minutes on one GPU:  bash bench/gpu_check.sh  (README quotes its table)
#   0. the table of bench/gpu_check.py: bf16 MFU of forward+backward+fused AdamW step in both memory formats
#      (channels_last vs contiguous), DDP all-reduce overhead on every visible GPU (NCCL; 1 GPU = a world of 1),
#      the statistics pass end to end (zarr reads and host copies included) on numpy and CuPy, the loader's
#      samples/s per core vs the GPU's samples/s on the same batches (3-channel S1 on both sides);
#      the device-side normalisation of the raw batch (dualseg.data.prepare) and the cores step + prepare need;
#   1. statistics exactness: CuPy / numba moments vs numpy float64 (1e-12 relative on the means), and
#      the on-device kernel's GiB/s vs the GPU's memory bandwidth (kernel only: part 0 has the real pass);
#   2. the streaming loader with 4 workers, PASTIS-R bands at --quick sizes (bench/bench_data.py).
# Each part has its own time limit (180 + 45 + 45 s on a GPU); cold compiles (cuDNN plans, CuPy, numba)
# happen in warm-ups capped at 10 s each, apart from the timed steps.
# Without a CUDA GPU it runs the CPU parts (gpu_check.py --cpu) and says what it skipped. Needs torch
# (CUDA build for the GPU parts), cupy-cuda12x (pip install dualseg[gpu]) for CuPy. PEAK_TFLOPS (default
# 989, dense bf16 of an H100/H200 SXM) sets the MFU denominator.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" DUALSEG_PROGRESS=0
PY="${PYTHON:-python}"
PEAK="${PEAK_TFLOPS:-989}"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
skipped=()
status=0

if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  GPU=1
  "$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"# GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB")'
else
  GPU=0
  echo "# no CUDA GPU: running the CPU parts only"
fi

part() {  # part NAME SECONDS LOG CMD...: run with a time limit (whole check <= ~5 min), output also to LOG
  local name=$1 limit=$2 log=$3; shift 3
  echo; echo "== $name"
  timeout "$limit" "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 124 ]; then echo "!! $name: over its ${limit}s"; status=1
  elif [ "$rc" -ne 0 ]; then echo "!! $name failed (exit $rc)"; status=1; fi
}

# -- 0. the table ------------------------------------------------------------------------------
if [ "$GPU" = 1 ]; then
  part "the GPU check table (bench/gpu_check.py)" 180 "$TMP/table.txt" "$PY" bench/gpu_check.py \
    --peak-tflops "$PEAK" --warmup-s 10
else
  # no 5-minute budget on a CPU machine: limits sized for a loaded 2-core one
  part "the GPU check table, CPU shapes (bench/gpu_check.py --cpu)" 300 "$TMP/table.txt" "$PY" bench/gpu_check.py --cpu
  skipped+=("the table at GPU shapes (bf16 MFU, NCCL DDP overhead, CuPy pass, loader vs GPU)")
fi

# -- 1. statistics ---------------------------------------------------------------------------
part "statistics: exactness and kernel GiB/s" 45 "$TMP/stats.txt" "$PY" - "$GPU" <<'EOF'
import sys, time
import numpy as np
from dualseg.data import fused
from dualseg.data.backend import get_xp
from dualseg.data.moments import moments_xp

gpu = sys.argv[1] == "1"
rng = np.random.default_rng(0)
n = (256 if gpu else 32) * 2**20 // 4 // 10
x = np.stack([10_000 + rng.normal(0, 0.05, n) for _ in range(5)] + [rng.normal(-15, 4, n) for _ in range(5)]).astype(np.float32)
x[:, rng.random(n) < 0.3] = np.nan
x[1, : n // 3] = np.nan
x[2, 5] = np.inf
ref = moments_xp(x, np, accel=False)
x64 = x.astype(np.float64); x64[~np.isfinite(x64)] = np.nan
want = np.nanmean(x64, axis=1)

def check(name, got):
    err = float(np.max(np.abs(got[1] - want) / np.abs(want)))
    ok = np.array_equal(got[0], ref[0]) and err <= 1e-12
    print(f"{name:<28} counts equal: {np.array_equal(got[0], ref[0])}  max rel. error of means {err:.1e}  "
          f"{'OK' if ok else 'FAIL (goal 1e-12)'}")
    return ok

ok = check("numpy path", ref)
if fused.available():
    ok &= check("fused numba path", moments_xp(x, np))
else:
    print("fused numba path: SKIPPED (numba not installed: pip install dualseg[fast])")
gib = x.nbytes / 2**30
def best(fn, k=3):
    t = []
    for _ in range(k):
        t0 = time.perf_counter(); fn(); t.append(time.perf_counter() - t0)
    return min(t)
print(f"host: moments_xp {gib / best(lambda: moments_xp(x, np)):.2f} GiB/s; np.copyto {gib / best(lambda: np.copyto(np.empty_like(x), x)):.2f} GiB/s")
if gpu:
    try:
        xp = get_xp("cupy")
    except Exception as exc:
        print(f"CuPy statistics: SKIPPED ({exc})"); sys.exit(0 if ok else 1)
    d = xp.asarray(x)
    got = moments_xp(d, xp)
    ok &= check("CuPy path", got)
    def sync(fn):
        def run():
            fn(); xp.cuda.Stream.null.synchronize()
        return run
    t_stats = best(sync(lambda: moments_xp(d, xp)), 5)
    dst = xp.empty_like(d)
    t_copy = best(sync(lambda: xp.copyto(dst, d)), 5)
    copy_bw = 2 * gib / t_copy  # read + write
    line = (f"CuPy moments_xp {gib / t_stats:.1f} GiB/s read = {gib / t_stats / copy_bw:.1%} of a measured device "
            f"copy ({copy_bw:.0f} GiB/s read+write)")
    try:  # the spec: memory clock (kHz) x bus width; DDR/HBM move data on both clock edges
        attrs = xp.cuda.Device(0).attributes
        spec = 2 * attrs["MemoryClockRate"] * 1e3 * attrs["GlobalMemoryBusWidth"] / 8 / 2**30
        line += f", {gib / t_stats / spec:.1%} of the spec bandwidth {spec:.0f} GiB/s"
    except Exception as exc:  # attribute names differ between CUDA/CuPy versions
        line += f" (spec bandwidth unavailable: {type(exc).__name__})"
    print(line)
sys.exit(0 if ok else 1)
EOF
[ "$GPU" = 1 ] || skipped+=("CuPy statistics (exactness and GiB/s vs GPU memory bandwidth)")

# -- 2. the streaming loader with workers ----------------------------------------------------------------
# (--quick sizes: part 0 already compares the loader with the GPU; this adds the 4-worker streaming rate)
quick=(--quick); limit=45; [ "$GPU" = 1 ] || limit=180
# ${quick[@]+"${quick[@]}"}: an empty array under set -u fails on bash < 4.4 otherwise
part "loader, PASTIS-R bands, 4 workers (bench_data.py --quick)" "$limit" "$TMP/loader.txt" "$PY" bench/bench_data.py \
  --skip stats,disk,quickstart,generate ${quick[@]+"${quick[@]}"}
echo
if [ ${#skipped[@]} -gt 0 ]; then
  echo "SKIPPED (no CUDA GPU):"
  printf '  - %s\n' "${skipped[@]}"
fi
[ $status -eq 0 ] && echo "gpu_check: done" || echo "gpu_check: some part failed (see !! above)"
exit $status
