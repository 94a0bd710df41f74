"""Issue 18's done-when check for data=arrays: the full Fashion-MNIST (60,000 train, 10,000 test)
written as .npz files, x uint8 (N, 28, 28) and y, as a notebook would save them, then trained with
`nnrun data=arrays model=mlp trainer.epochs=2`; prints the test accuracy (>= 0.84 expected) and
the time it took.

    python benchmarks/fashion_arrays.py /usr/share/datasets/fashion-mnist [--out /tmp/fashion_arrays]
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from nnrun.data.vision import read_idx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder of the four Fashion-MNIST IDX files (.gz or not)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/fashion_arrays"), help="where the .npz and run go")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = read_idx(next(args.root.glob(f"{prefix}-images-idx3-ubyte*")))  # (N, 28, 28) uint8
        y = read_idx(next(args.root.glob(f"{prefix}-labels-idx1-ubyte*")))  # (N,)
        np.savez(args.out / f"{split}.npz", x=x, y=y)
    run_dir = args.out / "run"
    command = [
        str(Path(sys.executable).parent / "nnrun"),
        "data=arrays",
        f"data.path={args.out / 'train.npz'}",
        f"data.test_path={args.out / 'test.npz'}",
        "model=mlp",
        "trainer.epochs=2",
        "trainer.plots=false",
        f"hydra.run.dir={run_dir}",
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    summary = json.loads((run_dir / "summary.json").read_text())
    print(
        f"fashion_arrays: test_accuracy {summary['test_accuracy']:.4f} in {wall:.1f} s "
        f"(nnrun's own wall time {summary['wall_time']:.1f} s)"
    )


if __name__ == "__main__":
    main()
