#!/bin/bash
# Pretrain the shipped encoders' candidates on a lent GPU, side by side, for at most PRETRAIN_S seconds, then run the
# whole suite in the time left before DEADLINE (seconds; nothing else runs beside the pretraining: on 2026-11-27
# pretraining beside the suite oversubscribed the 16 cores and both crawled). recipes/pretrain-gpu.yaml (corpus in
# GPU memory, cosine learning rate): one epoch side by side measures the pace, then the runs resume to the epochs
# that fit PRETRAIN_S; each epoch ends in an atomic checkpoint, so a time limit still leaves the last whole epoch;
# each file is then marked as trained for the epochs it holds (what benchmarks/run.py reuses as complete).
# The wheels the machine lacks travel in .whl/ (benchmarks/gpu_check.sh) and the corpus as one uncompressed zip of a
# JPEG copy (one file: the carried size counts every file's disk blocks):
#   python benchmarks/pack_corpus.py --corpus CORPUS --out /tmp/packed
#   mkdir .corpus && (cd /tmp/packed && zip -q -0 -r "$OLDPWD/.corpus/corpus.zip" .); echo /.corpus/ >> .git/info/exclude
# Device tool: carry ['.whl', '.corpus'], command 'DEADLINE=580 PRETRAIN_S=400 bash benchmarks/gpu_pretrain.sh'.
# RESUME=FOLDER EPOCHS=N continues FOLDER/enc-eps<E>.pt (files of an earlier call; carry FOLDER too) to N epochs;
# EPOCHS=N alone trains from scratch on a schedule of N epochs (e.g. 104, the shipped encoders' schedule), not on the
# pace of a first epoch. An entry E@W of EPS trains at width W (--width) into enc-eps<E>-w<W>.pt.
# Two such files (6.4 MB each, with their optimiser state) fit the 64 MiB carry only without the wheels that
# pretraining does not import (kornia, kornia_rs, grimp, import-linter); four do not fit.
# SUITE=0 skips the suite. Writes $OUT/enc-eps<E>.pt, $OUT/logs.tar.gz (pretraining and suite logs).
OUT=${OUT:-/tmp/gpupretrain-out}; W=/tmp/gpupretrain
source "$(dirname "$0")/gpu_setup.sh"
L=$OUT/logs; mkdir -p $L; export OMP_NUM_THREADS=${OMP_NUM_THREADS:-3}  # 16 cores: 4 trainings x (1 + 2 loaders)
C=$W/corpus; mkdir -p $C && python3 -m zipfile -e .corpus/corpus.zip $C
el "pretraining eps ${EPS:=0 0.5 1 3} for ${PRETRAIN_S:=400} s"
name() { case $1 in *@*) echo "eps${1%@*}-w${1#*@}";; *) echo "eps$1";; esac; }  # 1@1 -> eps1-w1
pretrain() {  # the runs side by side, each to $1 epochs (or stopped at $2 seconds), from scratch or (--resume) on
  for R in $EPS; do
    case $R in *@*) width="--width ${R#*@}";; *) width=;; esac
    timeout $2 $RA encoder pretrain --corpus $C --recipe pretrain-gpu --eps ${R%@*} $width --device cuda \
      --epochs $1 --out $OUT/enc-$(name $R).pt $3 >>$L/pretrain-$(name $R).log 2>&1 &
  done
  wait
}
if [ -n "$RESUME" ]; then
  for R in $EPS; do cp $RESUME/enc-$(name $R).pt $OUT/; done
  pretrain ${EPOCHS:?RESUME needs EPOCHS: the length of the schedule the files are on} $PRETRAIN_S --resume
elif [ -n "$EPOCHS" ]; then
  pretrain $EPOCHS $PRETRAIN_S --force
else
  # One epoch side by side measures the pace; the cosine schedule then runs over the epochs that fit the rest of the
  # time (the first epoch is on that curve too: the schedule is a function of the epoch alone).
  began=$(date +%s); pretrain 1 $PRETRAIN_S --force
  EPOCHS=$(python3 - $(( PRETRAIN_S - $(date +%s) + began )) $OUT/enc-eps*.pt <<'PY'
import sys
from robust_ad.tensors import load_checkpoint
seconds = max(load_checkpoint(path)["history"][-1]["seconds"] for path in sys.argv[2:])
print(1 + int(0.9 * float(sys.argv[1]) / (seconds * 1.05)))  # 5 % for the checkpoints between epochs
PY
  )
  el "one epoch side by side: ${EPOCHS} epochs fit"
  pretrain $EPOCHS $(( PRETRAIN_S - $(date +%s) + began )) --resume
fi
python3 - $OUT/enc-eps*.pt <<'PY'
import sys
from robust_ad.tensors import load_checkpoint, save_checkpoint
for path in sys.argv[1:]:
    state = load_checkpoint(path)
    state["config"]["epochs"] = state["epoch"]
    save_checkpoint(path, state)
    rows = state["history"]
    print(path, f"{state['epoch']} epochs, {sum(r['seconds'] for r in rows) / 60:.1f} min, last:",
          {k: round(v, 3) for k, v in rows[-1].items()})
PY
[ "${SUITE:-1}" = 0 ] || { el "suite"
OMP_NUM_THREADS=2 timeout $(left) python3 -m pytest -q -p no:cacheprovider -n 8 -o faulthandler_timeout=60 --durations=10 \
  >$L/suite.log 2>&1
tail -3 $L/suite.log; }
tar -czf $OUT/logs.tar.gz -C $OUT logs && rm -rf $L
el "done"
