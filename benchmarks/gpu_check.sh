#!/bin/bash
# GPU check of robust-ad on a lent machine with torch + CUDA but no network, run from the project root.
# (Adapted from the workplace's shared/gpu/check.sh.) Prepare the wheels that machine lacks here first:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl kornia kornia_rs pydantic pydantic_core annotated_types typing_inspection pooch platformdirs \
#     import-linter grimp
# then call the device tool with carry ['.whl'] and command 'bash benchmarks/gpu_check.sh'.
# It runs the whole suite with the GPU present (the 'cuda' tests included), then a full --recipe mvtec
# train -> eval -> export -> score --onnx on CUDA on the example bottle, with timings.
OUT=${OUT:-/tmp/gpucheck-out}; W=/tmp/gpucheck
source "$(dirname "$0")/gpu_setup.sh"
el "test suite (GPU present)"
OMP_NUM_THREADS=2 timeout ${TEST_S:-240} python3 -m pytest -q -p no:cacheprovider -n ${XDIST:-8} --durations=10 -o faulthandler_timeout=60 --junitxml=$OUT/junit.xml \
  >$OUT/pytest.log 2>&1; tail -25 $OUT/pytest.log
cuda_tests $OUT/junit.xml
el "CUDA train (${RECIPE:-mvtec} recipe) on the example bottle"
$RA datasets synth --category bottle --out $W/data --seed 0 >/dev/null 2>&1
timeout ${TRAIN_S:-300} $RA train --recipe ${RECIPE:-mvtec} --category bottle --data-root $W/data --out $W/run --device cuda 2>&1 | tee $OUT/train.log | tail -3
python3 -c "import json; t=json.load(open('$W/run/training.json')); print('minutes', round(t['minutes'], 2), 'machine', t['machine'])"
timeout 120 $RA eval --category bottle --data-root $W/data --model $W/run --out $W/eval --device cuda 2>&1 | tail -3
timeout 120 $RA export --model $W/run --out $W/model.onnx 2>&1 | tail -2
timeout 120 $RA score $W/data/bottle/test --onnx $W/model.onnx --out $W/scores 2>&1 | tail -2
el "done"
