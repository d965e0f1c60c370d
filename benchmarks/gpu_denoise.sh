#!/bin/bash
# The skip denoiser's PSNR against its training epochs on a lent GPU (benchmarks/denoise_epochs.py): bottle and fabric,
# eps 1 and its eps 0 twin, side by side, each for EPOCHS in turn (default 200 800 2000), stopped at DENOISE_S seconds.
# Carry ['.whl', 'benchmarks/results/encoders'] (the wheels: see benchmarks/gpu_check.sh; the encoders: the files the
# denoising section uses); command 'DENOISE_S=300 bash benchmarks/gpu_denoise.sh'. Writes $OUT/denoise_epochs.jsonl
# and $OUT/logs.tar.gz.
OUT=${OUT:-/tmp/gpudenoise-out}; W=/tmp/gpudenoise
source "$(dirname "$0")/gpu_setup.sh"
L=$OUT/logs; mkdir -p $L; export OMP_NUM_THREADS=3
ENC=$PWD/benchmarks/results/encoders
el "denoisers: ${EPOCHS:=200 800 2000} epochs, at most ${DENOISE_S:=300} s"
for C in bottle fabric; do
  for E in 1 0; do
    (cd benchmarks && timeout $DENOISE_S python3 denoise_epochs.py --category $C --eps $E --epochs $EPOCHS \
      --encoders $ENC --device cuda --work $W --out $OUT/denoise_epochs.jsonl >$L/$C-eps$E.log 2>&1) &
  done
done
wait
cat $OUT/denoise_epochs.jsonl
tar -czf $OUT/logs.tar.gz -C $OUT logs && rm -rf $L
el "done"
