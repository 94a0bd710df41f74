"""Same seed, same numbers: runs six configs with two nnrun installs (say, before and after a
refactor) and compares their metrics.csv column by column, all but epoch_time (wall-clock).

    python benchmarks/same_metrics.py OLD/bin/nnrun NEW/bin/nnrun

Exits 1 when any value differs. Data: scikit-learn's digits (mlp, cnn, lstm, a Keras-style
sequential preset), a CSV table and a folder of PNG images made here."""

import csv
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

FAST = ["trainer.epochs=3", "trainer.seed=7", "trainer.plots=false"]
CONFIGS = {
    "mlp": ["model=mlp"],
    "cnn": ["model=cnn"],
    "lstm": ["model=lstm"],
    "sequential preset": ["model=course_dense"],
    "csv table": ["data=csv", "data.path=table.csv", "data.target=label"],
    "image folder": ["data=image_folder", "data.path=images", "model=cnn"],
}


def make_data(folder: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    label = np.where(x[:, 0] + 0.5 * x[:, 1] > 0, "yes", "no")
    with open(folder / "table.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow([f"x{i}" for i in range(5)] + ["label"])
        out.writerows([[f"{v:.4f}" for v in row] + [y] for row, y in zip(x, label)])
    for k, name in enumerate(("circle", "square", "stripe")):
        (folder / "images" / name).mkdir(parents=True)
        for i in range(40):
            pixels = rng.integers(0, 60, size=(16, 16, 3), dtype=np.uint8)
            pixels[4 * k : 4 * k + 6, 2:14] = 250  # the class is where the bright band lies
            Image.fromarray(pixels).save(folder / "images" / name / f"{i}.png")


def rows(run_dir: Path) -> list:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "epoch_time"} for row in csv.DictReader(f)]


def main(old: str, new: str) -> int:
    different = 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_data(folder)
        print(f"{'config':20} {'epochs':>6} {'columns':>7} {'last val_loss':>22}  same")
        for name, args in CONFIGS.items():
            runs = []
            for label, program in (("old", old), ("new", new)):
                run_dir = folder / f"{name.replace(' ', '_')}-{label}"
                subprocess.run(
                    [program, *args, *FAST, f"hydra.run.dir={run_dir}"], cwd=folder, check=True, capture_output=True
                )
                runs.append(rows(run_dir))
            same = runs[0] == runs[1]
            different += not same
            last = runs[1][-1]
            print(
                f"{name:20} {len(runs[1]):>6} {len(last):>7} {last.get('val_loss', ''):>22}  {'yes' if same else 'NO'}"
            )
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
