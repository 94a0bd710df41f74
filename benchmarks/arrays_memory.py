"""Peak memory of `nnrun data=arrays` loading one large .npz (issue 27: a 2.4 GB array peaked at
6.8 GB): a float32 x of about --mb MB written with np.savez, trained for one batch; prints the
run's peak RSS above the same run on a tiny .npz, as a multiple of the array's size.

    python benchmarks/arrays_memory.py [--mb 400] [--out /tmp/arrays_memory]
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

PEAK = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)  # kB, Linux


def peak_kb(npz: Path, run_dir: Path, extra: list) -> int:
    """The peak RSS of one nnrun process training a batch on npz."""
    shutil.rmtree(run_dir, ignore_errors=True)
    nnrun = str(Path(sys.executable).parent / "nnrun")
    args = [f"data.path={npz}", "model=mlp", "trainer.epochs=1", "trainer.limit_batches=1", "trainer.plots=false"]
    command = [sys.executable, "-c", PEAK, nnrun, "data=arrays", *args, f"hydra.run.dir={run_dir}", *extra]
    return int(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=400, help="size of x in MB (float32)")
    parser.add_argument("--features", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("/tmp/arrays_memory"))
    parser.add_argument("extra", nargs="*", help="more overrides, e.g. data.val_split=0")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = args.mb * 10**6 // (4 * args.features)
    for name, n in (("tiny", 1000), ("big", rows)):
        x = rng.standard_normal((n, args.features), dtype=np.float32)
        np.savez(args.out / f"{name}.npz", x=x, y=(np.arange(n) % 10).astype(np.int64))
        del x
    size = rows * args.features * 4
    base = peak_kb(args.out / "tiny.npz", args.out / "run", args.extra)
    big = peak_kb(args.out / "big.npz", args.out / "run", args.extra)
    print(
        f"x: {rows:,} x {args.features} float32 = {size / 1e6:.0f} MB; peak RSS {big / 1e3:.0f} MB, "
        f"{base / 1e3:.0f} MB for a tiny .npz; above it: {(big - base) * 1e3 / size:.2f}x the array"
    )
    shutil.rmtree(args.out)


if __name__ == "__main__":
    main()
