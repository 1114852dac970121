#!/usr/bin/env bash
# One command that measures orch on a GPU machine from a plain checkout, in under 8 minutes on an H100.
#
#   benchmarks/gpu.sh                 # on the GPU machine, from anywhere in the checkout
#   benchmarks/gpu.sh --dry-run       # every step at tiny sizes on the CPU (also: ORCH_GPU_DRY=1)
#
# It installs nothing and fetches nothing: the project's modules import from the checkout
# (PYTHONPATH), with the machine's own python3 (or $PYTHON), which needs torch >= 2.11, torchvision,
# numpy, pillow, rich, pyyaml, filelock, psutil and pytest: what a PyTorch image holds. The one
# package the measured path needs beyond those, pydantic (with pydantic-core, annotated-types,
# typing-inspection, typing-extensions), travels as wheels: on a machine with PyPI run
#
#   benchmarks/gpu_wheels.sh          # downloads them for CPython 3.12, manylinux x86_64, into .whl/
#
# and copy .whl/ along with the checkout (git ignores it). When .whl/ (or $ORCH_GPU_WHEELS) holds
# wheels, gpu.sh puts those this Python can use into a temporary folder on PYTHONPATH (pip install
# --no-index --no-deps --target) and says which it took.
#
# Steps, with their expected time on an H100 (estimates: no GPU has run this yet) and their limit;
# a step past its limit is stopped and recorded as failed (timed out), and the others still run:
#
#   step                 expected  limit  what
#   start + env             10 s    60 s  the device (nvidia-smi name, memory), the driver, torch and its
#                                         CUDA build; exits 1 at once, in one line, without a usable CUDA
#                                         device or when the measured code does not import
#   pytest_gpu              60 s   120 s  tests/trainers/test_gpu.py (-m gpu); fails when none passed
#   bench_train            180 s   270 s  coursework dims, --compile --epochs-part: decoder step (tutorial
#                                         vs orch, fp32/bf16, compiled bf16), launches per batch, epochs on
#                                         the cache vs through a frozen ResNet-101 at 256 px, cache build
#   bench_beam              30 s    60 s  beam search, batch 64 and 256, batched vs per image
#   bench_eval_variants     15 s    45 s  4 beta variants vs 1
#   bench_trial_packing     75 s   150 s  4 training processes sharing the GPU vs one after another
#   report                   2 s    30 s  gpu.json and performance_rows.md
#   (sum: 372 s)
#   only with Ray, MLflow and pycocoevalcap (else skipped, saying so):
#   warm_packing            10 s    60 s  search_spaces/gpu_packing.yaml's data and feature cache
#   orch_run_packed         25 s    90 s  `orch run` of its 4 trials packed 4 to the GPU (resources.gpu 0.25)
#   orch_run_one_by_one     40 s   120 s  the same, one trial at a time
#   (sum with them: 447 s)
#
# A skipped step is not a failure; a test step in which every test was skipped is. In the dry run
# the limits are $ORCH_GPU_LIMIT_SCALE (default 6) times longer: a 2-core CPU, not an H100.
#
# Writes into $ORCH_GPU_OUT (default gpu-results/): each step's JSON and log, steps.tsv, gpu.json
# (all of it) and performance_rows.md (rows for docs/PERFORMANCE.md). Exits 1 when a step failed.
set -uo pipefail

cd "$(dirname "$0")/.."
DRY="${ORCH_GPU_DRY:-0}"
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu.sh: unknown argument '$arg' (use --dry-run, or --help)" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-$(command -v python3 || command -v python)}"
OUT="$(mkdir -p "${ORCH_GPU_OUT:-gpu-results}" && cd "${ORCH_GPU_OUT:-gpu-results}" && pwd)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
SCALE=1
[[ $DRY == 1 ]] && SCALE="${ORCH_GPU_LIMIT_SCALE:-6}"
: > "$OUT/steps.tsv"

# now_ms; since MS: seconds since MS (milliseconds since the epoch), e.g. 12.345.
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
since() { local ms=$(( $(now_ms) - $1 )); printf '%d.%03d' $(( ms / 1000 )) $(( ms % 1000 )); }
STARTED=$(now_ms)

# record NAME STATUS SECONDS EXPECTED LIMIT NOTE: one line of steps.tsv.
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$OUT/steps.tsv"; }

# step NAME EXPECTED_S LIMIT_S COMMAND...: run it under its limit, stdout to NAME.json, stderr to NAME.log.
step() {
  local name=$1 expected=$2 limit=$(( $3 * SCALE )) began status note=""
  shift 3
  began=$(now_ms)
  echo "== $name (expected ${expected} s on an H100, limit ${limit} s): $*" >&2
  if declare -F "$1" > /dev/null; then  # a function of this script: timeout runs programs, so bash runs it
    timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"
  else
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"
  fi
  status=$?
  if [[ $status == 124 || $status == 137 ]]; then
    note="timed out after $limit s"
  elif [[ $status != 0 ]]; then
    note="exit $status: $(grep -v '^\s*$' "$OUT/$name.log" | tail -1 | cut -c1-300)"
  fi
  record "$name" "$status" "$(since "$began")" "$expected" "$limit" "$note"
  if [[ $status == 0 ]]; then
    echo "   done in $(since "$began") s" >&2
  else
    echo "   FAILED ($note): see $OUT/$name.log" >&2
  fi
}

# skip NAME EXPECTED_S REASON: a step that cannot run here, said in one line; not a failure.
skip() {
  echo "== $1: skipped: $3" >&2
  record "$1" skipped 0 "$2" 0 "$3"
}

# missing NAME...: those of the Python packages (or java) that are not here.
missing() {
  "$PY" - "$@" <<'PY'
import importlib.util, sys
from trainers.metrics import java_available
print(" ".join(n for n in sys.argv[1:] if not (java_available() if n == "java" else importlib.util.find_spec(n))))
PY
}

# The wheels carried in .whl/, all of them or none (pydantic wants its own pydantic-core): into a
# folder of their own on PYTHONPATH, when this Python can use every one.
WHEEL_DIR="${ORCH_GPU_WHEELS:-.whl}"
CARRIED=""
WHEEL_NOTE=""  # said by gpu_check.py, after the device
if compgen -G "$WHEEL_DIR/*.whl" > /dev/null; then
  SITE=$(mktemp -d "${TMPDIR:-/tmp}/orch-gpu-wheels.XXXXXX")
  trap 'rm -rf "$SITE"' EXIT
  FITTING=("$WHEEL_DIR"/*.whl)
  UNFIT=$("$PY" - "${FITTING[@]}" <<'PY'
import sys
from pathlib import Path
try:
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename
except ImportError:  # pip carries its own
    from pip._vendor.packaging.tags import sys_tags
    from pip._vendor.packaging.utils import parse_wheel_filename
here = set(sys_tags())
print(" ".join(Path(w).name for w in sys.argv[1:] if not parse_wheel_filename(Path(w).name)[3] & here))
PY
  )
  if [[ -n $UNFIT ]]; then
    WHEEL_NOTE="$WHEEL_DIR/ holds wheels this Python ($("$PY" -V 2>&1)) cannot use ($UNFIT): none taken"
  elif PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
         --target "$SITE" "${FITTING[@]}" >&2
  then
    export PYTHONPATH="$PWD:$SITE${PYTHONPATH#"$PWD"}"
    CARRIED=$(for wheel in "${FITTING[@]}"; do basename "$wheel" | cut -d- -f1-2; done | tr '\n' ' ')
    WHEEL_NOTE="took from $WHEEL_DIR/ (on PYTHONPATH for this run, not installed): ${CARRIED% }"
  else
    WHEEL_NOTE="the wheels in $WHEEL_DIR/ did not install into $SITE (pip's error above): none taken"
  fi
fi

# The machine, first; no usable CUDA (outside the dry run) or unimportable code: exit 1, at once.
CHECK=(benchmarks/gpu_check.py --wheels "$CARRIED" --wheel-note "$WHEEL_NOTE")
[[ $DRY == 1 ]] && CHECK+=(--dry-run)
began=$(now_ms)
timeout --kill-after=10 $(( 60 * SCALE )) "$PY" "${CHECK[@]}" > "$OUT/env.json"
status=$?
if [[ $status != 0 ]]; then
  [[ $status == 124 || $status == 137 ]] && echo "gpu.sh: the environment check took over $(( 60 * SCALE )) s" >&2
  exit 1
fi
record env 0 "$(since "$began")" 10 $(( 60 * SCALE )) ""

if [[ $DRY == 1 ]]; then
  echo "dry run: every step at tiny sizes on the CPU; the figures are not GPU figures" >&2
  DEVICE=(--device cpu)
  DRYFLAG=(--dry-run)
  QUICK=(--quick)
  TRAIN=(--epochs-part --compile)
  BEAM=()
  PACKING=(--set resources.gpu=0 --set resources.cpu=1 --set "data.prepared=$OUT/data/prepared"
           --set data.synthetic.n=40 --set data.image_size=32 --set model.encoder=resnet18 --set model.encoded_size=2
           --set model.embed_dim=16 --set model.hidden_dim=16 --set model.attention_dim=16 --set train.epochs=1
           --set train.batch_size=16 --set eval.val_images=4 --set decode.max_len=8)
else
  DEVICE=(--device cuda)
  DRYFLAG=()
  QUICK=()
  TRAIN=(--epochs-part --compile --image-size 256 --images 600 --rounds 3 --steps 10 --epoch-batches 10
         --epoch-rounds 2)
  BEAM=(--batch 64 256 --rounds 2)
  PACKING=(--set "data.prepared=$OUT/data/prepared")
fi
# ORCH_GPU_TESTS: other pytest arguments than `-m gpu tests/trainers/test_gpu.py` (e.g. a -k selection).
read -r -a TESTS <<< "${ORCH_GPU_TESTS:-}"

step pytest_gpu 60 120 "$PY" benchmarks/gpu_pytest.py "${DRYFLAG[@]}" --junit "$OUT/pytest_gpu.xml" "${TESTS[@]}"
step bench_train 180 270 "$PY" benchmarks/bench_train.py "${DEVICE[@]}" "${QUICK[@]}" "${TRAIN[@]}"
step bench_beam 30 60 "$PY" benchmarks/bench_beam.py "${DEVICE[@]}" "${QUICK[@]}" "${BEAM[@]}"
step bench_eval_variants 15 45 "$PY" benchmarks/bench_eval_variants.py "${DEVICE[@]}" "${QUICK[@]}"
step bench_trial_packing 75 150 "$PY" benchmarks/bench_trial_packing.py "${DEVICE[@]}" "${QUICK[@]}"

# `orch run` of the packing grid, with Ray and MLflow: the trials as Tune packs them.
# orch_run NAME SETTINGS...: its wall time in seconds as NAME.json.
orch_run() {
  local name=$1 began; shift
  began=$(now_ms)
  "$PY" -m orchestrator.cli run search_spaces/gpu_packing.yaml --set "ray.storage=$OUT/runs/$name" "$@" >&2 \
    && echo "{\"wall_s\": $(since "$began")}"
}

# warm_packing SETTINGS...: the packing grid's data and feature cache, built once before either arm is timed.
warm_packing() {
  "$PY" - "$@" <<'PY'
import sys, tempfile
from pathlib import Path
from orchestrator.experiment.loader import load_config
from trainers.loop import CaptionRecipe

config = load_config("search_spaces/gpu_packing.yaml", [a for a in sys.argv[1:] if a != "--set"]).trainer_config({})
with tempfile.TemporaryDirectory() as run_dir:
    CaptionRecipe(config, Path(run_dir)).setup()
print("{}")
PY
}

export PY OUT
export -f now_ms since orch_run warm_packing
absent=$(missing ray mlflow pycocoevalcap)
if [[ -z $absent ]]; then
  step warm_packing 10 60 warm_packing "${PACKING[@]}"
  step orch_run_packed 25 90 orch_run packed "${PACKING[@]}"
  step orch_run_one_by_one 40 120 orch_run one_by_one "${PACKING[@]}" --set resources.max_concurrent=1
else
  reason="needs Ray, MLflow and pycocoevalcap (missing here: ${absent// /, }); bench_trial_packing measured packing without them"
  skip warm_packing 10 "$reason"
  skip orch_run_packed 25 "$reason"
  skip orch_run_one_by_one 40 "$reason"
fi

"$PY" benchmarks/gpu_report.py "$OUT" --dry-run "$DRY" --seconds "$(since "$STARTED")"
