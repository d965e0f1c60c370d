# Sourced by the benchmarks/gpu_*.sh scripts on a lent GPU machine (no network): installs the carried
# wheels of .whl/ and the project, makes $OUT and the work folder $W (given by the caller), and defines `el`
# (elapsed-seconds log lines), `left` (seconds to the caller's DEADLINE), `cuda_tests JUNIT_XML` (each cuda test's
# outcome) and $RA (the robust-ad command).
export PYTHONUNBUFFERED=1
S=$(date +%s); el() { echo "[$(( $(date +%s) - S ))s] $*"; }
left() { echo $(( ${DEADLINE:-100000} - ($(date +%s) - S) - 15 )); }  # seconds to DEADLINE, less 15 for packing
cuda_tests() {  # each cuda test's outcome in a pytest --junitxml file: they must have run, not been skipped
  [ -f "$1" ] && python3 - "$1" <<'PY'
import sys, xml.etree.ElementTree as ET
cases = [c for c in ET.parse(sys.argv[1]).iter("testcase") if "test_cuda" in c.get("classname", "")]
print("cuda tests:", [(c.get("name"), "skipped" if c.find("skipped") is not None else
      "failed" if c.find("failure") is not None or c.find("error") is not None else "passed", c.get("time")) for c in cases])
PY
}
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
