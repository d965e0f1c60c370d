#!/bin/bash
# Speed and scale on a lent GPU machine (torch + CUDA, no network), run from the project root. The wheels that
# machine lacks go in .whl/ first (see the header of benchmarks/gpu_check.sh); then call the device tool with
# carry ['.whl'] and command 'bash benchmarks/gpu_speed.sh'. It runs the whole suite with the GPU present, a
# full --recipe mvtec train + eval on the example bottle in each precision (fp32, bf16), and
# benchmarks/speed.py on the fp32 run. Results land in $OUT: speed_gpu.json (commit it as
# benchmarks/speed_gpu.json: RESULTS.md shows its rows) and train_<precision>.json.
OUT=${OUT:-/tmp/gpuspeed-out}; W=/tmp/gpuspeed
source "$(dirname "$0")/gpu_setup.sh"
el "test suite (GPU present)"
OMP_NUM_THREADS=2 timeout ${TEST_S:-120} python3 -m pytest -q -p no:cacheprovider -n ${XDIST:-8} -x >$OUT/pytest.log 2>&1
tail -4 $OUT/pytest.log
$RA datasets synth --category bottle --out $W/data --seed 0 >/dev/null 2>&1
for P in ${PRECISIONS:-fp32 bf16}; do
  el "train --recipe mvtec --precision $P"
  timeout ${TRAIN_S:-120} $RA train --recipe mvtec --category bottle --data-root $W/data --out $W/run-$P \
    --device cuda --precision $P >$OUT/train-$P.log 2>&1 || tail -3 $OUT/train-$P.log
  timeout 90 $RA eval --category bottle --data-root $W/data --model $W/run-$P --out $W/eval-$P --device cuda >/dev/null 2>&1
  python3 - $W/run-$P $W/eval-$P $OUT/train_$P.json <<'PY'
import json, sys
t = json.load(open(f"{sys.argv[1]}/training.json"))
m = json.load(open(f"{sys.argv[2]}/metrics.json"))
keep = {k: t[k] for k in ("minutes", "decoder_minutes", "precision", "processes", "machine", "device")}
keep["metrics"] = {k: m.get(k) for k in ("image_auroc", "pixel_auroc", "aupro", "f1")}
json.dump(keep, open(sys.argv[3], "w"), indent=1)
print(json.dumps({k: keep[k] for k in ("minutes", "precision")}), json.dumps(keep["metrics"])[:300])
PY
done
el "speed (benchmarks/speed.py)"
timeout ${SPEED_S:-150} python3 benchmarks/speed.py --run $W/run-fp32 --sizes 256 --out $OUT/speed_gpu.json \
  2>$OUT/speed.err | cut -c1-220 || tail -3 $OUT/speed.err
el "done"
