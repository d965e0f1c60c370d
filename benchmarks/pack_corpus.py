"""A JPEG copy of a 'robust-ad datasets corpus' folder, small enough to carry to a lent GPU machine.

    python benchmarks/pack_corpus.py --corpus CORPUS --out /tmp/packed --quality 75

Same manifest (its file column pointing at the .jpg copies), same corpus.json; licences and sources unchanged.
benchmarks/gpu_pretrain.sh says how it travels (one uncompressed zip: ~13,600 patches of 128 px in 46 MB).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cv2

from robust_ad.fileio import write_text


def pack(corpus: Path, out: Path, quality: int) -> int:
    """Write the JPEG copy of ``corpus`` to ``out``; returns the number of images."""
    rows = list(csv.DictReader((corpus / "manifest.csv").open()))
    for row in rows:
        image = cv2.imread(str(corpus / row["file"]), cv2.IMREAD_UNCHANGED)
        row["file"] = str(Path(row["file"]).with_suffix(".jpg"))
        (out / row["file"]).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out / row["file"]), image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    with (out / "manifest.csv").open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text(out / "corpus.json", (corpus / "corpus.json").read_text())
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quality", type=int, default=75)
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} exists; give a new folder")
    print(pack(args.corpus, args.out, args.quality), "images written to", args.out)


if __name__ == "__main__":
    main()
