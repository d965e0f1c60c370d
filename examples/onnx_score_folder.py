"""Score a folder of images with an exported robust-ad model: onnxruntime + numpy + OpenCV only.

Copy this file into your inspection pipeline; robust_ad does not need to be installed there.

    python onnx_score_folder.py model.onnx ./images [--heatmaps out/]

Prints one line per image: path, normalised score, verdict (threshold from the file's metadata). A file that
cannot be read or scored is listed as `path  -  unreadable` (the reason on stderr) and the rest are still
scored; a score that is not a number is anomalous, never a pass. Exit code, as `robust-ad score
--fail-on-anomaly`: 0 all normal, 1 any image anomalous, 3 any file unreadable, so a line controller can tell a
defect from a bad frame; 2 nothing to score (no such path, no images) or --heatmaps among the images.
"""

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}  # as robust-ad reads


def load_rgb(path: Path) -> np.ndarray:
    """Any 8/16-bit or float grayscale/RGB/RGBA file as float32 RGB in [0, 1], turned as its EXIF orientation says
    (the conversion robust-ad uses: 8-bit / 255, 16-bit / 65535, float clipped). These flags keep the bit depth,
    drop alpha and apply the orientation; OpenCV's TIFF reader applies it in any mode, and only IMREAD_UNCHANGED
    reads every TIFF."""
    tiff = path.suffix.lower() in {".tif", ".tiff"}
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED if tiff else cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if image is None:
        raise ValueError(f"{path}: unreadable image")
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        image = image.astype(np.float32) / 65535.0
    elif image.dtype.kind == "f":
        image = np.clip(image.astype(np.float32), 0.0, 1.0)
    else:
        raise ValueError(f"{path}: {image.dtype} pixels are not supported")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)


def image_files(target: Path) -> list[Path]:
    """One image file, or every image file under a folder (subfolders too), sorted."""
    if target.is_file():
        return [target]
    return sorted(p for p in target.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("folder", help="a folder of images (subfolders too), or one image file")
    parser.add_argument("--heatmaps", help="write heat-map PNGs here (<image file name>.png), not among the images")
    args = parser.parse_args()
    target = Path(args.folder)
    if not target.exists():
        print(f"error: {target} does not exist", file=sys.stderr)
        return 2
    heatmaps = Path(args.heatmaps).resolve() if args.heatmaps else None
    base = target.resolve() if target.is_dir() else target.resolve().parent
    if heatmaps is not None and (heatmaps == base or base in heatmaps.parents):
        print(f"error: --heatmaps {args.heatmaps} lies among the images: give it a folder of its own", file=sys.stderr)
        return 2
    files = image_files(target)
    if not files:  # a camera that stopped writing frames is not a pass
        print(f"error: no images in {target} ({', '.join(sorted(SUFFIXES))})", file=sys.stderr)
        return 2

    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    # onnxruntime-gpu lists the CUDA provider even on machines without a GPU and logs a red error when it cannot
    # start it; it then runs on the CPU. Quiet that: the provider actually used is printed below.
    ort.set_default_logger_severity(4)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(args.model, options, providers=providers)
    except Exception as exc:  # onnxruntime's own exception types: a missing, corrupt or foreign file
        print(f"error: {args.model}: not a loadable ONNX model ({str(exc).strip()[:200]})", file=sys.stderr)
        return 2
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("format") != "robust-ad" or meta.get("mode", "detect") != "detect":
        what = "a robust-ad denoiser" if meta.get("mode") == "denoise" else "not a robust-ad detection model"
        print(f"error: {args.model} is {what}: this script scores detection models", file=sys.stderr)
        return 2
    print(f"# onnxruntime on {session.get_providers()[0]}", file=sys.stderr)
    threshold, vmax = float(meta["threshold"]), float(meta["map_vmax"])
    graph_input = session.get_inputs()[0]
    batch_size = graph_input.shape[0] if isinstance(graph_input.shape[0], int) else 1  # export --batch N: N frames
    if batch_size > 1:
        print(
            f"# a file of a fixed batch of {batch_size}: each frame is sent {batch_size} times (this script scores a "
            "frame at a time; export with the default dynamic batch for it)",
            file=sys.stderr,
        )
    anomalous = unreadable = 0
    for path in files:
        try:
            image = load_rgb(path)
        except ValueError as exc:
            print(f"# {exc}", file=sys.stderr)
            print(f"{path}\t-\tunreadable")
            unreadable += 1
            continue
        # The whole frame goes in: the graph resizes it exactly as training and calibration did (metadata
        # 'resize'); resizing here with another method would move the scores.
        frame = image.transpose(2, 0, 1)[None]
        if meta["input_format"] == "uint8":
            frame = np.round(frame * 255.0).astype(np.uint8)
        batch = np.ascontiguousarray(np.repeat(frame, batch_size, axis=0))  # a fixed batch: the frame repeated
        try:
            anomaly_map, score = session.run(None, {graph_input.name: batch})[:2]
        except Exception as exc:  # onnxruntime's own error types: this frame could not be scored, the rest can
            print(f"# {path}: not scored ({str(exc).splitlines()[0][-300:]})", file=sys.stderr)
            print(f"{path}\t-\tunreadable")
            unreadable += 1
            continue
        verdict = "normal" if score[0] <= threshold else "anomalous"  # NaN compares false: anomalous
        anomalous += verdict == "anomalous"
        print(f"{path}\t{score[0]:.3f}\t{verdict}")
        if heatmaps is not None:
            heat = np.clip(anomaly_map[0] / vmax, 0, 1)
            heat = cv2.resize((heat * 255).astype(np.uint8), image.shape[1::-1])
            out = heatmaps / (path.relative_to(target) if target.is_dir() else Path(path.name))
            out.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(f"{out}.png", cv2.applyColorMap(heat, cv2.COLORMAP_JET))
    return 3 if unreadable else 1 if anomalous else 0


if __name__ == "__main__":
    sys.exit(main())
