#!/usr/bin/env bash
# One command that measures orch on a GPU machine, from a fresh checkout, in under 8 minutes:
#
#   benchmarks/gpu.sh                 # on the GPU machine, from the repository root
#   benchmarks/gpu.sh --dry-run       # every step at tiny sizes on the CPU (also: ORCH_GPU_DRY=1)
#
# Steps: install (pip install -e ".[test]"), the tests marked gpu, bench_train (orch's decoder step
# vs the tutorial's, fp32 vs bf16; an epoch on the cache vs through a frozen ResNet-101 at 256 px;
# building the feature cache, images/s), bench_beam at batch 64 and 256, bench_eval_variants, and
# `orch run` of 4 trials packed 4 to the GPU (resources.gpu 0.25) against the same 4 one after
# another (search_spaces/gpu_packing.yaml, synthetic data, nothing downloaded).
#
# Writes into $ORCH_GPU_OUT (default gpu-results/): each step's JSON and log, gpu.json (all of it,
# the device named by nvidia-smi) and performance_rows.md (rows for docs/PERFORMANCE.md).
# A step that fails is recorded as failed and the others still run; the exit status is 1 then.
set -uo pipefail

cd "$(dirname "$0")/.."
DRY="${ORCH_GPU_DRY:-0}"
[[ "${1:-}" == "--dry-run" ]] && DRY=1
OUT="$(mkdir -p "${ORCH_GPU_OUT:-gpu-results}" && cd "${ORCH_GPU_OUT:-gpu-results}" && pwd)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
: > "$OUT/steps.tsv"
STARTED=$(date +%s)

# since MS: seconds since MS (milliseconds since the epoch), e.g. 12.345.
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
since() { local ms=$(( $(now_ms) - $1 )); printf '%d.%03d' $(( ms / 1000 )) $(( ms % 1000 )); }

# step NAME COMMAND...: run it, its stdout to NAME.json, stderr to NAME.log, its status and seconds to steps.tsv.
step() {
  local name=$1; shift
  local began status
  began=$(now_ms)
  echo "== $name: $*" >&2
  "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"
  status=$?
  printf '%s\t%s\t%s\n' "$name" "$status" "$(since "$began")" >> "$OUT/steps.tsv"
  [[ $status == 0 ]] || { echo "   failed ($status): see $OUT/$name.log" >&2; tail -5 "$OUT/$name.log" >&2; }
}

# orch_run NAME SETTINGS...: `orch run` of the packing grid, its wall time in seconds as NAME.json.
orch_run() {
  local name=$1 began; shift
  began=$(now_ms)
  python -m orchestrator.cli run search_spaces/gpu_packing.yaml --set "ray.storage=$OUT/runs/$name" "$@" >&2 \
    && echo "{\"wall_s\": $(since "$began")}"
}

# warm_packing SETTINGS...: the packing grid's data and feature cache, built once before either arm is timed.
warm_packing() {
  python - "$@" <<'PY'
import sys, tempfile
from pathlib import Path
from orchestrator.config import load_config
from trainers.loop import CaptionRecipe

config = load_config("search_spaces/gpu_packing.yaml", [a for a in sys.argv[1:] if a != "--set"]).trainer_config({})
with tempfile.TemporaryDirectory() as run_dir:
    CaptionRecipe(config, Path(run_dir)).setup()
print("{}")
PY
}

if [[ $DRY == 1 ]]; then
  echo "dry run: every step at tiny sizes on the CPU" >&2
  DEVICE=(--device cpu)
  QUICK=(--quick)
  TRAIN=(--epochs-part --compile)
  BEAM=()
  PACKING=(--set resources.gpu=0 --set resources.cpu=1 --set "data.prepared=$OUT/data/prepared"
           --set data.synthetic.n=40 --set data.image_size=32 --set model.encoder=resnet18 --set model.encoded_size=2
           --set model.embed_dim=16 --set model.hidden_dim=16 --set model.attention_dim=16 --set train.epochs=1
           --set train.batch_size=16 --set eval.val_images=4 --set decode.max_len=8)
  step install python -c "import torch, ray, mlflow, orchestrator, trainers; print('{}')"
else
  DEVICE=(--device cuda)
  QUICK=()
  TRAIN=(--epochs-part --compile --image-size 256 --images 2000 --rounds 5 --steps 10 --epoch-batches 10)
  BEAM=(--batch 64 256)
  PACKING=(--set "data.prepared=$OUT/data/prepared")
  step install bash -c 'pip install -q -e ".[test]" >&2 || python -c "import torch, ray, mlflow, pytest" >&2; echo "{}"'
fi

step pytest_gpu bash -c 'python -m pytest -m gpu -q -p no:cacheprovider tests/trainers/test_gpu.py >&2; status=$?;
  [[ $status == 0 || $status == 5 ]] && echo "{\"exit\": $status}"'   # 5: none collected
step bench_train python benchmarks/bench_train.py "${DEVICE[@]}" "${QUICK[@]}" "${TRAIN[@]}"
step bench_beam python benchmarks/bench_beam.py "${DEVICE[@]}" "${QUICK[@]}" "${BEAM[@]}"
step bench_eval_variants python benchmarks/bench_eval_variants.py "${DEVICE[@]}" "${QUICK[@]}"
step warm_packing warm_packing "${PACKING[@]}"
step orch_run_packed orch_run packed "${PACKING[@]}"
step orch_run_one_by_one orch_run one_by_one "${PACKING[@]}" --set resources.max_concurrent=1

python benchmarks/gpu_report.py "$OUT" --dry-run "$DRY" --seconds "$(( $(date +%s) - STARTED ))"
