"""Inference speed of a run's scoring graph: torch and onnxruntime, fp32 and fp16, batch 1 and 32, on the CPU
always and on the GPU when one is present, each beside the fraction of the device's measured matmul peak.

    python benchmarks/speed.py --run runs/bottle --sizes 256 --out speed.json

The torch graph is the one `robust-ad export` writes and verifies (export.ScoringGraph; fp16: its networks in
half precision, preprocessing and scoring in float32). On CUDA it is also timed replayed as a CUDA graph, which
removes the per-kernel launch cost that dominates at batch 1, and so with its networks channels-last (cuDNN's
layout: no layout conversions around each convolution; slower eager, faster replayed, on an H200); on the CPU
also eager with channels-last networks, as `robust-ad score` runs it there (oneDNN's layout). onnxruntime
runs on the CUDA execution provider only where onnxruntime-gpu is installed; rows that cannot run say why.
With --compile, CUDA also gets a torch.compile row (Inductor, which fuses the elementwise scoring into fewer
kernels; its own CUDA graphs, mode reduce-overhead; channels-last), in fp16 only: each
compile takes minutes of a lent GPU. With --out, the file is rewritten after every group of rows, so a run cut
short by a time limit keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import torch

from robust_ad import api, fileio, machine, rundir
from robust_ad.cuda_graphs import GraphedForward
from robust_ad.export import ScoringGraph

REPEAT_SECONDS = 0.5  # each timing window runs at least this long after its warm-up
WINDOWS = 3  # the best window counts: on a shared machine other work only ever slows a window down


def _rate(fn: Callable[[], object], images: int, sync: Callable[[], None] = lambda: None) -> float:
    """Images per second of ``fn`` (which processes ``images`` images): the best of WINDOWS windows of at least
    REPEAT_SECONDS each. The peaks are measured the same way, so a fraction of peak compares like with like."""
    for _ in range(3):  # warm-up: allocator, cuDNN algorithm choice, onnxruntime arenas
        fn()
    sync()
    rates = []
    for _ in range(WINDOWS):
        calls, began = 0, time.perf_counter()
        while calls < 2 or time.perf_counter() - began < REPEAT_SECONDS:
            fn()
            calls += 1
            if calls % 8 == 0:
                sync()
        sync()
        rates.append(calls * images / (time.perf_counter() - began))
    return max(rates)


def _matmul_graph(n: int):
    import onnx

    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [n, n]) for name in "ab"],
        [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [n, n])],
    )
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=9)


def cpu_peak_gflops() -> float:
    """Measured fp32 matmul throughput of this CPU (all threads), the better of torch and onnxruntime: the
    'peak' we compare with. Either alone can miss it (e.g. a BLAS that avoids AVX-512 on AMD CPUs)."""
    import onnxruntime as ort

    n = 2048
    a, b = torch.rand(n, n), torch.rand(n, n)
    session = ort.InferenceSession(_matmul_graph(n).SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"a": a.numpy(), "b": b.numpy()}
    rates = [_rate(lambda: a @ b, 1), _rate(lambda: session.run(None, feeds), 1)]
    return max(rates) * 2 * n**3 / 1e9


def gpu_peak_gflops(dtype: torch.dtype) -> float:
    """Measured matmul throughput of the GPU in ``dtype`` (fp32 without TF32, as scoring runs)."""
    n = 8192
    a, b = torch.rand(n, n, device="cuda", dtype=dtype), torch.rand(n, n, device="cuda", dtype=dtype)
    allowed = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return _rate(lambda: a @ b, 1, torch.cuda.synchronize) * 2 * n**3 / 1e9
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed


def _graph(run: Path, size: int, fp16: bool, device: str) -> ScoringGraph:
    """The graph `export` writes (fp16: its networks in half precision, as `export --fp16`), freshly loaded."""
    graph = ScoringGraph(rundir.load_scorer(run, device), (size, size), True, False).eval()
    if fp16:
        graph.scorer.model.half()
    return graph


def _flops(run: Path, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    graph = _graph(run, size, False, "cpu")  # built outside the count: building runs the encoder to read shapes
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        graph(torch.zeros(1, 3, size, size, dtype=torch.uint8))
    return counter.get_total_flops()


def _cuda_graph(graph: ScoringGraph, images: torch.Tensor) -> Callable[[], object]:
    """``graph`` on ``images`` replayed as the product replays it (robust_ad.cuda_graphs: input copied in, outputs
    copied out); a capture that fails raises instead of timing the eager fallback."""
    forward = GraphedForward(graph)
    forward(images)
    if forward.failed:
        raise RuntimeError("CUDA graph capture failed (see the log)")
    return lambda: forward(images)


def _row(device: str, engine: str, precision: str, size: int, batch: int, flops: float, peak: float, measure):
    row = {"device": device, "engine": engine, "precision": precision, "size": size, "batch": batch}
    try:
        rate = measure()
    except Exception as exc:  # a row that cannot run says why; the others still run
        return {**row, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
    return {
        **row,
        "gflop_per_image": flops / 1e9,
        "ms_per_image": 1000 / rate,
        "images_per_s": rate,
        "fraction_of_peak": rate * flops / 1e9 / peak,
    }


def _onnx_rate(path: Path, images: np.ndarray, provider: str) -> float:
    from robust_ad.runtime import InferenceSession

    session = InferenceSession(path, device="cuda" if provider == "CUDAExecutionProvider" else "cpu")
    if provider not in session.providers:
        raise RuntimeError(f"{provider} is not available (onnxruntime-gpu is not installed)")
    return _rate(lambda: session.run_raw(images), len(images))


def measure(
    run: Path,
    sizes: list[int],
    batches: tuple[int, ...] = (1, 32),
    compile_fp16: bool = False,
    partial: Callable[[dict], None] = lambda result: None,
    cpu: bool = True,
) -> dict:
    """Every speed row for ``run`` at ``sizes``, with the peaks they are compared with (``cpu`` False: the GPU rows
    alone); ``partial`` receives the result so far after each group of rows."""
    cuda = torch.cuda.is_available()
    if not (cpu or cuda):
        raise SystemExit("error: no CUDA device: nothing to time without the CPU rows")
    peaks = {"cpu_fp32": cpu_peak_gflops()} if cpu else {}
    if cuda:
        peaks.update({"gpu_fp32": gpu_peak_gflops(torch.float32), "gpu_fp16": gpu_peak_gflops(torch.float16)})
    rows: list[dict] = []
    result = {"machine": machine.describe(), "peaks_gflops": peaks, "rows": rows}
    with tempfile.TemporaryDirectory() as work:
        for size in sizes:
            flops = _flops(run, size)
            onnx = {}
            for precision in ("fp32", "fp16") if cuda else ("fp32",):
                onnx[precision] = Path(work) / f"{size}-{precision}.onnx"
                api.export(run, onnx[precision], fp16=precision == "fp16", size=(size, size), verify=False)
            for batch in batches:
                images = np.random.default_rng(0).integers(0, 256, (batch, 3, size, size), dtype=np.uint8)
                if cpu:
                    rows += _rows(run, "cpu", "fp32", images, flops, peaks["cpu_fp32"], onnx["fp32"])
                    partial(result)
                for precision in ("fp32", "fp16") if cuda else ():
                    compiled = compile_fp16 and precision == "fp16"
                    peak = peaks[f"gpu_{precision}"]
                    rows += _rows(run, "cuda", precision, images, flops, peak, onnx[precision], compiled)
                    partial(result)
    return result


def _rows(
    run: Path,
    device: str,
    precision: str,
    images: np.ndarray,
    flops: float,
    peak: float,
    onnx: Path,
    compiled: bool = False,
) -> list[dict]:
    """torch eager, torch replayed as a CUDA graph (on CUDA), onnxruntime, and (``compiled``) torch.compile, for
    one batch of ``images``."""
    batch, size = len(images), images.shape[-1]
    graph = _graph(run, size, precision == "fp16", device)
    tensor = torch.from_numpy(images).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    name = torch.cuda.get_device_name(0) if device == "cuda" else machine.cpu_name()

    def eager() -> float:
        with torch.no_grad():
            return _rate(lambda: graph(tensor), batch, sync)

    def replayed() -> float:
        return _rate(_cuda_graph(graph, tensor), batch, sync)

    def onnxruntime() -> float:
        return _onnx_rate(onnx, images, "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider")

    def channels_last(rate: Callable[[], float]) -> Callable[[], float]:  # timed last: it leaves the networks so
        def timed() -> float:
            graph.scorer.model.to(memory_format=torch.channels_last)
            return rate()

        return timed

    def inductor() -> float:  # channels-last already, timed after the channels-last row
        forward = torch.compile(graph, mode="reduce-overhead", dynamic=False)
        with torch.no_grad():
            return _rate(lambda: forward(tensor), batch, sync)

    engines = {"torch": eager, "torch + CUDA graph": replayed, "onnxruntime": onnxruntime}
    if device == "cuda":
        engines["torch + CUDA graph, channels-last"] = channels_last(replayed)
        if compiled:
            engines["torch.compile, channels-last"] = inductor
    else:  # what `score` runs on a CPU
        del engines["torch + CUDA graph"]
        engines["torch, channels-last"] = channels_last(eager)
    rows = [_row(name, engine, precision, size, batch, flops, peak, rate) for engine, rate in engines.items()]
    return [{"processor": device, **row} for row in rows]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a trained run folder (robust-ad train)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="in this order")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument("--compile", action="store_true", help="on CUDA, also time torch.compile (fp16)")
    parser.add_argument("--gpu-only", action="store_true", help="the GPU rows alone (no CPU rows, no CPU peak)")
    args = parser.parse_args(argv)
    command = "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    printed = 0

    def partial(result: dict) -> None:
        nonlocal printed
        for row in result["rows"][printed:]:
            print(json.dumps(row), flush=True)
        printed = len(result["rows"])
        result.update({"date": date.today().isoformat(), "command": command.strip()})
        if args.out:
            fileio.write_json(args.out, result)  # atomic: a run killed while writing keeps the last file

    result = measure(args.run, args.sizes, tuple(args.batches), args.compile, partial, cpu=not args.gpu_only)
    partial(result)
    return result


if __name__ == "__main__":
    main()
