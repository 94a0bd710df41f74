"""Time to accuracy on Fashion-MNIST: `nnrun experiment=fashion_fast` against the course's CNN in a
minimal hand-written loop (benchmarks/course_cnn.py: 5 epochs, Adam 1e-3, batch 128), each as a
whole command timed from start to exit, alternating, --repeats times. Prints each trial, then the
medians of wall time and test accuracy, and the ratio of nnrun's median time to the hand loop's.

    python benchmarks/time_to_accuracy.py --root /usr/share/datasets/fashion-mnist [--repeats 3]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def timed(command: list, cwd: Path) -> tuple:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-2000:]}")
    return seconds, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", default="fashion_fast")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be 1 or more")
    nnrun = Path(sys.executable).parent / "nnrun"
    rows = {"nnrun": [], "hand": []}
    with tempfile.TemporaryDirectory() as tmp:
        for trial in range(args.repeats):
            for side in ("hand", "nnrun") if trial % 2 == 0 else ("nnrun", "hand"):
                if side == "hand":
                    seconds, out = timed([sys.executable, str(HERE / "course_cnn.py"), str(args.root)], Path(tmp))
                    accuracy = float(out.split("test_accuracy")[-1])
                else:
                    run_dir = Path(tmp) / f"run{trial}"
                    command = [
                        str(nnrun),
                        f"experiment={args.preset}",
                        f"data.root={args.root}",
                        f"hydra.run.dir={run_dir}",
                    ]
                    seconds, _ = timed(command, Path(tmp))
                    accuracy = json.loads((run_dir / "summary.json").read_text())["test_accuracy"]
                rows[side].append((seconds, accuracy))
                print(f"trial {trial + 1} {side}: {seconds:.1f} s, test accuracy {accuracy:.4f}", flush=True)
    med = {side: (statistics.median(s for s, _ in r), statistics.median(a for _, a in r)) for side, r in rows.items()}
    print("\n| command | median wall s | median test accuracy |")
    print("|---|---:|---:|")
    print(f"| nnrun experiment={args.preset} | {med['nnrun'][0]:.1f} | {med['nnrun'][1]:.4f} |")
    print(f"| course CNN, hand loop, 5 epochs | {med['hand'][0]:.1f} | {med['hand'][1]:.4f} |")
    print(f"\nratio (nnrun / hand wall time): {med['nnrun'][0] / med['hand'][0]:.2f}")


if __name__ == "__main__":
    main()
