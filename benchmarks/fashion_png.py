"""Debian's Fashion-MNIST written out as PNG class folders, for data=image_folder: the first
--train training and --test test images (seeded stratified picks), in <out>/train/<class>/ and
<out>/test/<class>/. Then, e.g.:

    python benchmarks/fashion_png.py /tmp/fashion_png
    nnrun data=image_folder data.path=/tmp/fashion_png model=cnn trainer.epochs=3
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from nnrun.data.vision import FASHION_CLASSES, read_idx

SOURCE = Path("/usr/share/datasets/fashion-mnist")


def pick(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n indices, the same share of each class as the whole set, seeded."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        chosen.append(rng.choice(idx, round(n * len(idx) / len(labels)), replace=False))
    return np.sort(np.concatenate(chosen))


def write(out: Path, part: str, images: np.ndarray, labels: np.ndarray) -> None:
    names = [c.replace("/", "-") for c in FASHION_CLASSES]  # T-shirt/top is not a folder name
    for name in names:
        (out / part / name).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(out / part / names[label] / f"{i:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--train", type=int, default=10_000)
    parser.add_argument("--test", type=int, default=2_000)
    args = parser.parse_args()
    for part, prefix, n in (("train", "train", args.train), ("test", "t10k", args.test)):
        x = read_idx(args.source / f"{prefix}-images-idx3-ubyte.gz")
        y = read_idx(args.source / f"{prefix}-labels-idx1-ubyte.gz")
        keep = pick(y, n, seed=0)
        write(args.out, part, x[keep], y[keep])
        print(f"{part}: {len(keep)} PNGs in {args.out / part}")


if __name__ == "__main__":
    main()
