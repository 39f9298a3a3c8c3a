#!/usr/bin/env python3
"""Writes the Fashion-MNIST test images the MobileNetV3-Small example bundles.

    python3 tools/extract_fashion_mnist_samples.py [--dataset DIR] [--out examples/data]

Takes the first test image of each of the 10 classes from Debian's dataset-fashion-mnist
(/usr/share/datasets/fashion-mnist) and writes it as an 8-bit grey PNG named
<test index>_<label>_<class>.png, e.g. 0000_9_ankle_boot.png. Plain Python (gzip, zlib,
struct): no PyTorch needed.
"""

import argparse
import gzip
import os
import struct
import zlib

CLASSES = ["t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
           "sneaker", "bag", "ankle_boot"]


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    rank = magic & 0xFF
    dims = struct.unpack(">" + "I" * rank, data[4:4 + 4 * rank])
    return dims, data[4 + 4 * rank:]


def write_png(path, width, height, pixels):
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body +
                struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    rows = b"".join(b"\x00" + pixels[r * width:(r + 1) * width] for r in range(height))
    png = (b"\x89PNG\r\n\x1a\n" +
           chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) +
           chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "examples",
                                                  "data"))
    args = ap.parse_args()
    (n, rows, cols), images = read_idx(os.path.join(args.dataset, "t10k-images-idx3-ubyte.gz"))
    _, labels = read_idx(os.path.join(args.dataset, "t10k-labels-idx1-ubyte.gz"))
    os.makedirs(args.out, exist_ok=True)
    seen = set()
    for i in range(n):
        label = labels[i]
        if label in seen:
            continue
        seen.add(label)
        name = f"{i:04d}_{label}_{CLASSES[label]}.png"
        write_png(os.path.join(args.out, name), cols, rows,
                  images[i * rows * cols:(i + 1) * rows * cols])
        print(name)
        if len(seen) == len(CLASSES):
            break


if __name__ == "__main__":
    main()
