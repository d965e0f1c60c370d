#!/bin/bash
# Speed and scale on a lent GPU machine (torch + CUDA, no network), run from the project root. The wheels that
# machine lacks go in .whl/ first (see the header of benchmarks/gpu_check.sh); then call the device tool with
# carry ['.whl'] and command 'bash benchmarks/gpu_speed.sh'. It runs a full --recipe mvtec train + eval on the
# example bottle in each of PRECISIONS (fp32, bf16; 'bf16-compile': bf16 with --compile) with the GPU to itself
# (the fp32 run also exported and scored through onnxruntime), the whole suite with the GPU present (SUITE=0: not),
# benchmarks/profile_gpu.py (PROFILE=0: not; PROFILE_ARGS, e.g. '--batch 32 --parts') and benchmarks/speed.py
# (SPEED_ARGS, e.g. '--compile --batches 32 1') on the fp32 run, then the command THEN if one is given (e.g. 'bash
# benchmarks/gpu_pretrain.sh'). Nothing runs side by side: on 2026-11-27 pretraining beside the suite oversubscribed
# the 16 cores and both crawled. With DEADLINE=seconds, the speed step ends by then less a margin
# for packing the logs (the device tool's time limit would otherwise cut the run before its files are written).
# A test still running after 60 s has its stack dumped into the log (pytest's faulthandler_timeout).
# Results land in $OUT: speed_gpu.json (commit it as benchmarks/speed_gpu.json: RESULTS.md shows its rows),
# train.jsonl (one line a training) and logs.tar.gz.
OUT=${OUT:-/tmp/gpuspeed-out}; W=/tmp/gpuspeed
source "$(dirname "$0")/gpu_setup.sh"
L=$OUT/logs; mkdir -p $L
$RA datasets synth --category bottle --out $W/data --seed 0 >/dev/null 2>&1
for P in ${PRECISIONS:-fp32 bf16}; do  # a precision, or one with -compile: trained with --compile
  FLAGS="--precision ${P%-compile}"; [ "$P" = "${P%-compile}" ] || FLAGS="$FLAGS --compile"
  el "train --recipe mvtec $FLAGS"
  timeout ${TRAIN_S:-150} $RA train --recipe mvtec --category bottle --data-root $W/data --out $W/run-$P \
    --device cuda $FLAGS >$L/train-$P.log 2>&1 || tail -3 $L/train-$P.log
  timeout 90 $RA eval --category bottle --data-root $W/data --model $W/run-$P --out $W/eval-$P --device cuda >$L/eval-$P.log 2>&1
  python3 - $W/run-$P $W/eval-$P $OUT/train.jsonl <<'PY'
import json, sys
import yaml
t = json.load(open(f"{sys.argv[1]}/training.json"))
m = json.load(open(f"{sys.argv[2]}/metrics.json"))
keep = {k: t[k] for k in ("minutes", "decoder_minutes", "precision", "processes", "machine", "device")}
keep["metrics"] = {k: m.get(k) for k in ("image_auroc", "pixel_auroc", "aupro", "f1")}
keep["compile"] = yaml.safe_load(open(f"{sys.argv[1]}/config.yaml"))["compile"]
print(json.dumps(keep), file=open(sys.argv[3], "a"))
print(json.dumps({k: keep[k] for k in ("minutes", "precision")}), json.dumps(keep["metrics"])[:300])
PY
done
R=$W/run-fp32
el "export and score through onnxruntime"
timeout 90 $RA export --model $R --out $W/model.onnx >$L/export.log 2>&1 && timeout 90 $RA score $W/data/bottle/test \
  --onnx $W/model.onnx --out $W/scores >$L/score.log 2>&1; echo "export + score: rc $?"
el "score in torch on CUDA (replayed from CUDA graphs; batch 7 leaves a padded last batch)"
timeout 90 $RA score $W/data/bottle/test --model $R --device cuda --batch 7 --out $W/scores-torch >$L/score-torch.log 2>&1
echo "score --device cuda: rc $?"; grep -h "CUDA graph" $L/eval-*.log $L/score-torch.log  # a refused capture warns
python3 - $W/scores/scores.json $W/scores-torch/scores.json <<'PY'
import json, sys
a, b = (json.load(open(f))["images"] for f in sys.argv[1:])
print("onnxruntime (CPU) and torch (CUDA graphs) scored", len(a), "and", len(b), "images; verdicts differ on",
      sum(x["verdict"] != y["verdict"] for x, y in zip(a, b, strict=True)))
PY
[ "${SUITE:-1}" = 0 ] || { el "test suite (GPU present)"  # SUITE=0 skips it
OMP_NUM_THREADS=2 timeout ${TEST_S:-200} python3 -m pytest -q -p no:cacheprovider -n ${XDIST:-8} --durations=10 \
  -o faulthandler_timeout=60 >$L/pytest.log 2>&1
tail -4 $L/pytest.log; }
[ "${PROFILE:-1}" = 0 ] || { el "profile (benchmarks/profile_gpu.py)"  # PROFILE=0 skips it
timeout 90 python3 benchmarks/profile_gpu.py --run $R --out $L/profile.txt $PROFILE_ARGS 2>$L/profile.err || tail -3 $L/profile.err; }
el "speed (benchmarks/speed.py $SPEED_ARGS)"  # last but THEN: its file is rewritten after every group of rows
timeout $(( ${SPEED_S:-150} < $(left) ? ${SPEED_S:-150} : $(left) )) python3 benchmarks/speed.py --run $R --sizes 256 \
  --out $OUT/speed_gpu.json $SPEED_ARGS 2>$L/speed.err | cut -c1-220 || tail -3 $L/speed.err
[ -n "$THEN" ] && { el "$THEN"; OUT=$OUT RA="$RA" bash -c "$THEN" 2>&1 | tee $L/then.log; }
tar -czf $OUT/logs.tar.gz -C $OUT logs && rm -rf $L
el "done"
