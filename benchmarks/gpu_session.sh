#!/bin/bash
# A session's whole GPU check in one device call (a session gets about 15 minutes of device time, one call's worth),
# run from the project root with carry ['.whl', 'benchmarks/results/photo-data-1500x64'] (see the headers of
# benchmarks/gpu_check.sh and gpu_denoise.sh) and command 'DEADLINE=540 bash benchmarks/gpu_session.sh':
#   1. alone, since they are timed (TIMED=0 leaves them out): benchmarks/gpu_speed.sh without its suite: the mvtec
#      recipe trained and evaluated in fp32 and bf16 (PRECISIONS; bf16-compile: with --compile), exported and scored
#      through onnxruntime, scored in torch from CUDA graphs, the speed rows (PROFILE=1: benchmarks/profile_gpu.py too,
#      with PROFILE_ARGS, e.g. '--batch 32 --parts'; its profile.txt lands in speed/logs.tar.gz);
#   2. then the whole suite (GPU present; the cuda tests must run, not skip) beside the denoisers' long trainings
#      (benchmarks/gpu_denoise.sh, RUNS of category:eps[:depth]), measured at a third, two thirds and the end of the
#      time left before DEADLINE (seconds from this script's start; less a margin for their last measurement).
# The suite's workers and the denoisers split the host's cores (XDIST workers of one thread, two per denoiser).
# Returns 7 files (4 with TIMED=0): speed/{speed_gpu.json,train.jsonl,logs.tar.gz},
# denoise/{denoise_epochs.jsonl,logs.tar.gz}, pytest.log and denoise.log.
OUT=${OUT:-/tmp/gpusession-out}; W=/tmp/gpusession
source "$(dirname "$0")/gpu_setup.sh"
export PRECISIONS=${PRECISIONS:-"fp32 bf16"}  # "fp32 bf16 bf16-compile": +125 s, too long for the suite after it
[ "${TIMED:-1}" = 0 ] || DEADLINE=$(( $(left) + 15 )) OUT=$OUT/speed SUITE=0 PROFILE=${PROFILE:-0} SPEED_S=${SPEED_S:-70} \
  SPEED_ARGS=${SPEED_ARGS:-"--gpu-only --batches 32 1"} bash benchmarks/gpu_speed.sh
R=$(( $(left) - ${MARGIN:-45} ))  # the denoisers' seconds: their clock starts after their first epoch
R=$(( R < 60 ? 60 : R ))
export RUNS=${RUNS:-"bottle:1:8 bottle:0:8 photos:1:8 photos:0:8"}  # what README lists as unmeasured
el "denoisers ($RUNS) in the background for $R s; the suite beside them"
OUT=$OUT/denoise AT="$(( R / 3 )) $(( 2 * R / 3 )) $R" bash benchmarks/gpu_denoise.sh >$OUT/denoise.log 2>&1 &
OMP_NUM_THREADS=1 timeout $(( R + 30 )) python3 -m pytest -q -p no:cacheprovider -n ${XDIST:-8} --durations=10 \
  -o faulthandler_timeout=90 --junitxml=$W/junit.xml >$OUT/pytest.log 2>&1
el "suite: $(tail -1 $OUT/pytest.log)"
cuda_tests $W/junit.xml
wait
cat $OUT/denoise.log
el "done"
