#!/bin/bash
# Pretrain the shipped encoders' candidates on a lent GPU, side by side, for at most PRETRAIN_S seconds
# (recipes/pretrain-gpu.yaml; the recipe's epochs are an upper bound, and each epoch ends in an atomic checkpoint,
# so the time limit leaves the last whole epoch). The corpus travels as one uncompressed zip of a JPEG copy (one
# file: the carried size counts every file's disk blocks):
#   python benchmarks/pack_corpus.py --corpus CORPUS --out /tmp/packed
#   mkdir .corpus && (cd /tmp/packed && zip -q -0 -r "$OLDPWD/.corpus/corpus.zip" .); echo /.corpus/ >> .git/info/exclude
# Run after benchmarks/gpu_speed.sh (THEN='bash benchmarks/gpu_pretrain.sh'); writes $OUT/enc-eps<E>.pt. On an H200
# (2026-11-27) the three side by side took 10-12 s an epoch (not profiled: sharing the GPU, per-image work on the host?).
mkdir -p $OUT/logs; RA=${RA:-python3 -m robust_ad}; export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}  # 16 cores: 3 trainings x (1 + 3 loaders)
C=/tmp/corpus; mkdir -p $C && python3 -m zipfile -e .corpus/corpus.zip $C
for E in ${EPS:-0 1 3}; do
  timeout ${PRETRAIN_S:-240} $RA encoder pretrain --corpus $C --recipe pretrain-gpu --eps $E --device cuda \
    --out $OUT/enc-eps$E.pt --force >$OUT/logs/pretrain-eps$E.log 2>&1 &
done
wait
for E in ${EPS:-0 1 3}; do grep -a "epoch" $OUT/logs/pretrain-eps$E.log | tail -1 | cut -c1-200; done
