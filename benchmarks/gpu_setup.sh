# Sourced by benchmarks/gpu_check.sh and gpu_speed.sh on a lent GPU machine (no network): installs the carried
# wheels of .whl/ and the project, makes $OUT and the work folder $W (given by the caller), and defines `el`
# (elapsed-seconds log lines), `left` (seconds to the caller's DEADLINE) and $RA (the robust-ad command).
export PYTHONUNBUFFERED=1
S=$(date +%s); el() { echo "[$(( $(date +%s) - S ))s] $*"; }
left() { echo $(( ${DEADLINE:-100000} - ($(date +%s) - S) - 15 )); }  # seconds to DEADLINE, less 15 for packing
mkdir -p "$OUT"
if [ -z "$GPU_SETUP_DONE" ]; then  # once per call: a script that sources this one runs the others with it set
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
    export PATH=/tmp/site/bin:$PATH  # lint-imports, for the architecture test
  fi
  python3 -m pip install -q --no-index --no-deps --no-build-isolation . >/tmp/install.log 2>&1 || { tail -3 /tmp/install.log; exit 1; }
  nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  export GPU_SETUP_DONE=1
fi
RA="python3 -m robust_ad"; rm -rf "$W"; mkdir -p "$W"
