#!/bin/bash
# The skip denoiser's PSNR against training time on a lent GPU (benchmarks/denoise_epochs.py): the denoising section's
# categories and, where its photo dataset is carried, the held-out photographs (trained on corpus patches), each with
# the shipped eps 1 encoder and its eps 0 twin, all side by side, measured at each of AT seconds, then stopped.
# Make the photo dataset here first (python benchmarks/run.py --sections denoising --corpus CORPUS writes it, or
# benchmarks/photo_data.py), then call the device tool with carry ['.whl', 'benchmarks/results/photo-data-1500x64']
# and command 'AT="60 180 360" bash benchmarks/gpu_denoise.sh'. RUNS="photos:1 gravel:1:8" picks the runs
# (category:eps[:depth], depth: denoise.depth, default 0) instead of every CATEGORIES x EPS one; DEVICE=cpu dry-runs
# it here. Writes $OUT/denoise_epochs.jsonl and $OUT/logs.tar.gz (each training's epoch lines). TESTS="tests/test_cuda.py
# ..." runs those tests first (pytest.log).
OUT=${OUT:-/tmp/gpudenoise-out}; W=/tmp/gpudenoise
source "$(dirname "$0")/gpu_setup.sh"
L=$OUT/logs; mkdir -p $L; export OMP_NUM_THREADS=${THREADS:-2}
if [ -n "$TESTS" ]; then
  el "tests: $TESTS"
  timeout ${TEST_S:-150} python3 -m pytest -q -p no:cacheprovider -n ${XDIST:-8} -rs $TESTS >$OUT/pytest.log 2>&1
  tail -6 $OUT/pytest.log
fi
PHOTOS=$PWD/benchmarks/results/photo-data-1500x64
[ -n "$RUNS" ] || for C in ${CATEGORIES:-bottle fabric gravel photos}; do for E in ${EPS:-1 0}; do RUNS="$RUNS $C:$E"; done; done
el "denoisers (category:eps[:depth]):$RUNS, measured at ${AT:=60 180 360} s"
for RUN in $RUNS; do
  IFS=: read -r C E D <<<"$RUN"; EXTRA="--depth ${D:-0}"; N=$C-eps$E${D:+-depth$D}
  if [ "$C" = photos ]; then
    [ -d "$PHOTOS" ] || { el "no $PHOTOS: photos skipped"; continue; }
    EXTRA="$EXTRA --data-root $PHOTOS --test-size 256"
  fi
  (cd benchmarks && python3 denoise_epochs.py --category $C --eps $E --at $AT $EXTRA --device ${DEVICE:-cuda} \
    --work $W --out $OUT/denoise_epochs.jsonl >$L/$N.log 2>&1) &
done
wait
cat $OUT/denoise_epochs.jsonl
tar -czf $OUT/logs.tar.gz -C $OUT logs && rm -rf $L
el "done"
