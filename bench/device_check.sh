#!/usr/bin/env bash
# The one script to run on a Jetson (or any TensorRT machine): doctor, the TensorRT tests, compile an
# FP16 and an INT8 bundle (and DLA engines where the device has a DLA), verify each engine against its
# bundle, bench with end-to-end timing. Everything goes into ONE report file; a failing step is
# recorded and the script goes on, so a single run answers every open question in docs/tensorrt.md.
#
#   bench/device_check.sh --fp16 bundles/lite0-fp16-jetson-orin --int8 bundles/lite0-int8-jetson-orin \
#       [--profile jetson-orin] [--data DIR] [--report FILE]
#
# Make the bundles on a workstation (no TensorRT needed there), e.g.
#   effdeploy build --phi 0 --variant lite --weights pretrained --precision fp16 --profile jetson-orin \
#       --calib-data IMAGES --out bundles/lite0-fp16-jetson-orin
#   effdeploy build --phi 0 --variant lite --weights pretrained --precision int8 --profile jetson-orin \
#       --calib-data IMAGES --calib-images 256 --out bundles/lite0-int8-jetson-orin
# and copy them (and IMAGES, for --data) to the device. Needs effdeploy installed there
# (pip install 'effdeploy[jetson]' in a --system-site-packages venv, see docs/tensorrt.md); run it from a
# checkout's root to include the TensorRT tests. Exit status 1 when any step failed.
set -u

FP16="" INT8="" PROFILE="" DATA="" REPORT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --fp16) FP16="$2"; shift 2 ;;
    --int8) INT8="$2"; shift 2 ;;
    --profile) PROFILE="$2"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    --report) REPORT="$2"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "device_check.sh: error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$FP16" ] && [ -z "$INT8" ]; then
  echo "device_check.sh: error: pass --fp16 BUNDLE and/or --int8 BUNDLE (see --help)" >&2; exit 2
fi
for b in $FP16 $INT8; do
  [ -f "$b/manifest.json" ] || { echo "device_check.sh: error: $b is not a bundle (no manifest.json)" >&2; exit 2; }
done
EFF="${EFFDEPLOY:-effdeploy}"
command -v "$EFF" >/dev/null 2>&1 || { echo "device_check.sh: error: $EFF not found; install effdeploy first" >&2; exit 2; }
HOST="$(hostname 2>/dev/null || echo device)"
REPORT="${REPORT:-device-check-$HOST-$(date +%Y%m%d-%H%M%S).txt}"
PROFILE_ARGS=()
[ -n "$PROFILE" ] && PROFILE_ARGS=(--profile "$PROFILE")
DATA_ARGS=()
[ -n "$DATA" ] && DATA_ARGS=(--data "$DATA")
TIME=()
[ -x /usr/bin/time ] && TIME=(/usr/bin/time -v)  # maximum resident set size of each compile (item 8)
FAILED=0

step() {  # step TITLE CMD...: run, time and record one command
  local title="$1"; shift
  local t0 t1 rc
  {
    echo
    echo "=== $title"
    echo "\$ $*"
  } >> "$REPORT"
  t0=$(date +%s.%N)
  "$@" >> "$REPORT" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  printf -- "--- exit %s, %.1f s\n" "$rc" "$(echo "$t1 - $t0" | bc 2>/dev/null || echo 0)" >> "$REPORT"
  [ "$rc" -eq 0 ] || FAILED=$((FAILED + 1))
  echo "[$rc] $title"
  return $rc
}

{
  echo "effdeploy device check, $(date -Iseconds 2>/dev/null || date), host $HOST"
  echo "uname: $(uname -a)"
  [ -f /etc/nv_tegra_release ] && echo "nv_tegra_release: $(head -1 /etc/nv_tegra_release)"
  echo "effdeploy: $("$EFF" --version 2>&1)"
} > "$REPORT"

step "doctor (table)" "$EFF" doctor "${PROFILE_ARGS[@]}"
step "doctor (json)" "$EFF" doctor "${PROFILE_ARGS[@]}" --json
DLA_CORES=$("$EFF" doctor --json 2>/dev/null | python3 -c \
  'import json,sys; print(json.load(sys.stdin)["facts"]["tensorrt"].get("dla_cores") or 0)' 2>/dev/null || echo 0)
echo "DLA cores seen by TensorRT: $DLA_CORES" >> "$REPORT"

if [ -d tests ] && python3 -c "import pytest" 2>/dev/null; then
  step "TensorRT tests (builds, runner, CUDA graphs, timing cache, logger, DLA)" \
    python3 -m pytest -q -m tensorrt tests/backends/tensorrt/test_on_gpu.py -rs
  if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    step "GPU tests outside TensorRT (torch on CUDA: the reconstruction)" python3 -m pytest -q -m gpu tests -rs
  fi
  step "rules without TensorRT (refusals, dry runs, doctor verdicts)" \
    python3 -m pytest -q tests/backends tests/commands/test_compile.py tests/profiles/test_profiles.py tests/runtime/test_doctor.py
fi
[ -f docs/ort_fp16_qdq_repro.py ] && step "ONNX Runtime FP16 Q/DQ reproducer (item 12)" python3 docs/ort_fp16_qdq_repro.py

engine_checks() {  # engine_checks BUNDLE PLAN LABEL
  local bundle="$1" plan="$2" label="$3"
  step "$label: engine.json" python3 -c \
    'import json,sys; m=json.load(open(sys.argv[1])); print(json.dumps({k: m[k] for k in ("tensorrt_version","gpu","precision","io","build")}, indent=1))' \
    "${plan%.plan}.json"
  step "$label: verify the engine against the bundle's images" "$EFF" verify "$plan" "${DATA_ARGS[@]}" --json
  step "$label: bench (engine only and end to end)" "$EFF" bench "$plan" --batch 1,8 --end-to-end --json
}

for pair in "fp16:$FP16" "int8:$INT8"; do
  prec="${pair%%:*}"; bundle="${pair#*:}"
  [ -n "$bundle" ] || continue
  plan="$bundle/engine.plan"
  if step "$prec: compile for the GPU" "${TIME[@]}" "$EFF" compile "$bundle" "${PROFILE_ARGS[@]}" --out "$plan" --json; then
    engine_checks "$bundle" "$plan" "$prec GPU"
    step "$prec: second compile reuses the timing cache" "$EFF" compile "$bundle" "${PROFILE_ARGS[@]}" --out "$bundle/engine-again.plan" --json
  fi
  if [ "$DLA_CORES" -gt 0 ] 2>/dev/null; then
    dla="$bundle/engine-dla0.plan"
    # First without GPU fallback (items 1 and 3): does the whole network run on DLA, and does this
    # TensorRT accept the strongly typed (INT8: Q/DQ) graph for DLA at all?
    if step "$prec: compile for DLA core 0, no GPU fallback" "${TIME[@]}" "$EFF" compile "$bundle" "${PROFILE_ARGS[@]}" \
        --dla-core 0 --out "$dla" --json; then
      engine_checks "$bundle" "$dla" "$prec DLA"
    else
      dla="$bundle/engine-dla0-fallback.plan"
      step "$prec: compile for DLA core 0 with GPU fallback" "${TIME[@]}" "$EFF" compile "$bundle" "${PROFILE_ARGS[@]}" \
        --dla-core 0 --gpu-fallback --out "$dla" --json && engine_checks "$bundle" "$dla" "$prec DLA+GPU"
    fi
  fi
done

{
  echo
  echo "=== summary: $FAILED step(s) failed"
} >> "$REPORT"
echo "report: $REPORT ($FAILED step(s) failed)"
[ "$FAILED" -eq 0 ]
