"""Where an exported graph's time goes in onnxruntime on this CPU: milliseconds per call by operator type and by node,
from onnxruntime's own profiler.

    robust-ad export --model RUN --out /tmp/g256.onnx --size 256 256
    python benchmarks/ort_profile.py /tmp/g256.onnx --size 256 --batch 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort


def profile(path: Path, size: int, batch: int, calls: int) -> tuple[float, dict[str, float], dict[str, float]]:
    """Wall milliseconds per call, and kernel milliseconds per call by operator type and by node."""
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).integers(0, 255, (batch, 3, size, size), np.uint8)}
    warmup = 5
    for _ in range(warmup):
        session.run(None, feed)
    began = time.perf_counter()
    for _ in range(calls):
        session.run(None, feed)
    wall = (time.perf_counter() - began) * 1000 / calls
    by_op: dict[str, float] = defaultdict(float)
    by_node: dict[str, float] = defaultdict(float)
    for event in json.loads(Path(session.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            ms = event["dur"] / 1000 / (warmup + calls)
            by_op[event["args"]["op_name"]] += ms
            by_node[f"{event['name'].removesuffix('_kernel_time')} ({event['args']['op_name']})"] += ms
    return wall, by_op, by_node


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="an exported scoring or denoising graph (uint8 input)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    wall, by_op, by_node = profile(args.model, args.size, args.batch, args.calls)
    total = sum(by_op.values())
    print(f"{wall:.2f} ms per call ({total:.2f} ms in kernels, profiler on)")
    for name, ms in sorted(by_op.items(), key=lambda item: -item[1])[: args.top]:
        print(f"  {name:30s} {ms:7.3f} ms {100 * ms / total:5.1f} %")
    print("nodes:")
    for name, ms in sorted(by_node.items(), key=lambda item: -item[1])[: args.top]:
        print(f"  {name[:90]:90s} {ms:7.3f} ms")


if __name__ == "__main__":
    main()
