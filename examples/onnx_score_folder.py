"""Score a folder of images with an exported robust-ad model: onnxruntime + numpy + OpenCV only.

Copy this file into your inspection pipeline; robust_ad does not need to be installed there.

    python onnx_score_folder.py model.onnx ./images [--heatmaps out/]

Prints one line per image: path, normalised score, verdict (threshold from the file's metadata). A file that
cannot be read or scored is listed as `path  -  unreadable` (the reason on stderr) and the rest are still
scored; a score that is not a number is anomalous, never a pass. Exit code, as `robust-ad score
--fail-on-anomaly`: 0 all normal, 1 any image anomalous, 3 any file unreadable, so a line controller can tell a
defect from a bad frame.
"""

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def load_rgb_uint8(path: Path) -> np.ndarray:
    """Any 8/16-bit grayscale/RGB/RGBA file as uint8 RGB, turned as its EXIF orientation says (the conversion
    robust-ad uses). These flags keep the bit depth, drop alpha and apply the orientation; OpenCV's TIFF reader
    applies it in any mode, and only IMREAD_UNCHANGED reads every TIFF."""
    tiff = path.suffix.lower() in {".tif", ".tiff"}
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED if tiff else cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if image is None:
        raise ValueError(f"{path}: unreadable image")
    if image.dtype == np.uint16:
        image = (image / 257.0).round().astype(np.uint8)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    else:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("folder")
    parser.add_argument("--heatmaps", help="write heat-map PNGs here")
    args = parser.parse_args()

    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    # onnxruntime-gpu lists the CUDA provider even on machines without a GPU and logs a red error when it cannot
    # start it; it then runs on the CPU. Quiet that: the provider actually used is printed below.
    ort.set_default_logger_severity(4)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(args.model, options, providers=providers)
    print(f"# onnxruntime on {session.get_providers()[0]}", file=sys.stderr)
    meta = session.get_modelmeta().custom_metadata_map
    threshold, vmax = float(meta["threshold"]), float(meta["map_vmax"])
    name = session.get_inputs()[0].name
    anomalous = unreadable = 0
    for path in sorted(p for p in Path(args.folder).iterdir() if p.suffix.lower() in SUFFIXES):
        try:
            image = load_rgb_uint8(path)
        except ValueError as exc:
            print(f"# {exc}", file=sys.stderr)
            print(f"{path}\t-\tunreadable")
            unreadable += 1
            continue
        # The whole frame goes in: the graph resizes it exactly as training and calibration did (metadata
        # 'resize'); resizing here with another method would move the scores.
        batch = image.transpose(2, 0, 1)[None]
        if meta["input_format"] != "uint8":
            batch = batch.astype(np.float32) / 255.0
        try:
            anomaly_map, score = session.run(None, {name: np.ascontiguousarray(batch)})[:2]
        except Exception as exc:  # onnxruntime's own error types: this frame could not be scored, the rest can
            print(f"# {path}: not scored ({str(exc).splitlines()[0][:200]})", file=sys.stderr)
            print(f"{path}\t-\tunreadable")
            unreadable += 1
            continue
        verdict = "normal" if score[0] <= threshold else "anomalous"  # NaN compares false: anomalous
        anomalous += verdict == "anomalous"
        print(f"{path}\t{score[0]:.3f}\t{verdict}")
        if args.heatmaps:
            heat = np.clip(anomaly_map[0] / vmax, 0, 1)
            heat = cv2.resize((heat * 255).astype(np.uint8), image.shape[1::-1])
            Path(args.heatmaps).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(Path(args.heatmaps) / f"{path.stem}.png"), cv2.applyColorMap(heat, cv2.COLORMAP_JET))
    return 3 if unreadable else 1 if anomalous else 0


if __name__ == "__main__":
    sys.exit(main())
