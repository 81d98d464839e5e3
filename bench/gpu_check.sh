#!/usr/bin/env bash
# One GPU check, within ~5 minutes on one GPU:  bash bench/gpu_check.sh
#   1. statistics: CuPy moments_xp vs numpy float64 (exactness, 1e-12 relative on the means) and
#      GiB/s vs the GPU's memory bandwidth (spec from the device, and a measured device copy);
#   2. bf16 training throughput + MFU of the model (bench/bench_model.py --amp) at the default
#      shapes and at PASTIS-R's (64 px patches, T1=70, T2=40);
#   3. the streaming loader's samples/s at PASTIS-R shapes (bench/bench_data.py, 4 workers) against
#      the GPU's samples/s at the same shapes: is the GPU starved?
# On a machine without a CUDA GPU it runs the CPU parts (numpy/numba statistics exactness, the
# loader, a small CPU model step) and prints what it skipped. Needs: torch (CUDA build for GPU
# parts), cupy-cuda12x (pip install dualseg[gpu]) for the CuPy part. PEAK_TFLOPS (default 989,
# dense bf16 of an H100/H200 SXM) sets the MFU denominator.
set -uo pipefail
cd "$(dirname "$0")/.."
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

# -- 1. statistics ---------------------------------------------------------------------------
part "statistics: exactness and GiB/s" 60 "$TMP/stats.txt" "$PY" - "$GPU" <<'EOF'
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

# -- 2. model throughput ---------------------------------------------------------------------
if [ "$GPU" = 1 ]; then
  part "model, default shapes, bf16" 60 "$TMP/model0.txt" "$PY" bench/bench_model.py --device cuda --amp \
    --peak-tflops "$PEAK" --steps 10
  part "model, PASTIS-R shapes (64 px, T1=70, T2=40), bf16" 60 "$TMP/model.txt" "$PY" bench/bench_model.py \
    --device cuda --amp --peak-tflops "$PEAK" --steps 10 --batch 8 --size 64 --t1 70 --t2 40
else
  part "model, CPU smoke (small shapes, fp32)" 120 "$TMP/model.txt" "$PY" bench/bench_model.py --device cpu \
    --batch 2 --size 32 --steps 1
  skipped+=("bf16 throughput and MFU on the GPU (default and PASTIS-R shapes)")
fi

# -- 3. loader vs GPU step rate ----------------------------------------------------------------
quick=(); [ "$GPU" = 1 ] || quick=(--quick)
part "loader at PASTIS-R shapes, 4 workers" 120 "$TMP/loader.txt" "$PY" bench/bench_data.py \
  --skip stats,disk,quickstart,generate "${quick[@]}"
if [ "$GPU" = 1 ]; then
  "$PY" - "$TMP" <<'EOF'
import re, sys
loader = gpu = None
for line in open(f"{sys.argv[1]}/loader.txt"):
    if "[PASTIS] zarr streamed, later epochs" in line:
        loader = float(line.split()[-2])
for line in open(f"{sys.argv[1]}/model.txt"):
    m = re.search(r"([\d.]+) samples/s", line)
    if line.startswith("[model]") and m:
        gpu = float(m.group(1))
if loader is None or gpu is None:
    print("!! could not read the loader or the GPU rate"); raise SystemExit(1)
verdict = "GPU starved: the loader sets the pace" if loader < gpu else "loader keeps up"
print(f"loader {loader:.1f} samples/s vs GPU {gpu:.1f} samples/s (bf16 train step, batch 8): ratio {loader / gpu:.2f} -> {verdict}")
EOF
  [ $? -eq 0 ] || status=1
else
  skipped+=("loader vs GPU step rate (no GPU to compare with)")
fi

echo
if [ ${#skipped[@]} -gt 0 ]; then
  echo "SKIPPED (no CUDA GPU):"
  printf '  - %s\n' "${skipped[@]}"
fi
[ $status -eq 0 ] && echo "gpu_check: done" || echo "gpu_check: some part failed (see !! above)"
exit $status
