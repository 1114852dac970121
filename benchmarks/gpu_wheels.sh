#!/usr/bin/env bash
# Download the wheels benchmarks/gpu.sh carries to a GPU machine that has PyTorch but no network.
#
#   benchmarks/gpu_wheels.sh            # here, on a machine with PyPI: fills .whl/ (git ignores it)
#
# The measured path (trainers.loop, the benchmarks, tests/trainers/test_gpu.py) needs, beyond what
# a PyTorch image holds (torch, torchvision, numpy, pillow, rich, pyyaml, filelock, psutil, pytest),
# pydantic (trainers/config.py) and its needs: pydantic-core, annotated-types, typing-inspection,
# and typing-extensions (a PyTorch image has one, perhaps older than pydantic-core wants).
# Each is fetched for CPython 3.12 on manylinux x86_64 (the GPU image's python3), at the version this
# machine's Python has (the one the tests run with), or the newest when it has none. gpu.sh installs
# them with `pip install --no-index --no-deps --target` into a temporary folder on PYTHONPATH:
# nothing is installed into the GPU machine's Python, and nothing is fetched there.
# PYTHON_VERSION=3.11 benchmarks/gpu_wheels.sh fetches them for another Python.
set -euo pipefail

cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
PACKAGES=(pydantic pydantic-core annotated-types typing-inspection typing-extensions)
WHEELS=.whl

specs=()
for name in "${PACKAGES[@]}"; do
  version=$("$PY" -c 'import sys
from importlib import metadata
try:
    print(metadata.version(sys.argv[1]))
except metadata.PackageNotFoundError:
    pass' "$name")
  specs+=("$name${version:+==$version}")
done

mkdir -p "$WHEELS"
for name in "${PACKAGES[@]}"; do  # one version of each: two would stop the install there
  rm -f "$WHEELS/${name//-/_}"-*.whl
done
"$PY" -m pip download --no-deps --only-binary=:all: --python-version "${PYTHON_VERSION:-3.12}" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" "${specs[@]}"
ls -l "$WHEELS"
