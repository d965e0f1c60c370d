"""onnxruntime session options against the defaults on an exported graph, on this CPU: one session at a time (the
idle threads of another session spin and slow it), variants taken in turn for several rounds so that a busy
machine slows each alike; medians of the timed calls.

    robust-ad export --model RUN --out /tmp/g256.onnx --size 256 256
    python benchmarks/ort_options.py /tmp/g256.onnx --size 256
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort

VARIANTS: dict[str, dict[str, str]] = {  # session config entries (threads: intra_op_num_threads)
    "default": {},
    "one thread": {"threads": "1"},
    "no spinning": {"session.intra_op.allow_spinning": "0"},
    "denormals as zero": {"session.set_denormal_as_zero": "1"},
    "dynamic block base 4": {"session.dynamic_block_base": "4"},
}


def session(path: str, entries: dict[str, str]) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(entries.get("threads", 0))
    for key, value in entries.items():
        if key != "threads":
            options.add_session_config_entry(key, value)
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an exported graph (uint8 input)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--calls", type=int, default=10, help="timed calls per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    images = np.random.default_rng(0).integers(0, 255, (1, 3, args.size, args.size), np.uint8)
    times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for _ in range(args.rounds):
        for variant, entries in VARIANTS.items():
            s = session(args.model, entries)
            feed = {s.get_inputs()[0].name: images}
            for _ in range(3):  # warm-up
                s.run(None, feed)
            for _ in range(args.calls):
                began = time.perf_counter()
                s.run(None, feed)
                times[variant].append(time.perf_counter() - began)
            del s
    for variant, values in times.items():
        print(f"{variant:24s} median {1000 * np.median(values):6.1f} ms, best {1000 * min(values):6.1f} ms")


if __name__ == "__main__":
    main()
