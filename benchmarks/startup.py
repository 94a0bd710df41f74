"""Start-up cost: seconds from starting a command to the end of the first training step, for
`nnrun` (default config: MLP on the embedded digits) and for a minimal hand-written PyTorch
script doing the same (digits, the same MLP, Adam, one step), against `python -c "import torch"`.
All alternate, each repeated; medians are printed. Both training commands pay the same
PyTorch price beyond `import torch`: torch.optim imports torch._dynamo when an optimizer is
built and at every step() (about 2-3 s on a slow 2-core machine), so `import torch, torch._dynamo`
is timed too, as the floor for any PyTorch training script. benchmarks/epoch_speed.py runs this
as well, so one run gives both tables.

    python benchmarks/startup.py --repeats 5
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HAND = r"""
import os, time
import torch
from sklearn.datasets import load_digits
from torch import nn
x, y = load_digits(return_X_y=True)
x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8)
x = (x - x.mean()) / x.std()
y = torch.tensor(y)
torch.manual_seed(42)
model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 64),
                      nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 10))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
idx = torch.randperm(len(y))[:64]
loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
loss.backward()
optimizer.step()
open(os.environ["NNRUN_FIRST_STEP"], "w").write(repr(time.time()))
"""


def first_step(command: list, cwd: Path, env: dict) -> float:
    """Seconds from starting command to the time it wrote into $NNRUN_FIRST_STEP."""
    mark = cwd / "first_step.txt"
    mark.unlink(missing_ok=True)
    start = time.time()
    subprocess.run(
        command,
        cwd=cwd,
        env={**env, "NNRUN_FIRST_STEP": str(mark)},
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return float(mark.read_text()) - start


def imports(code: str, env: dict) -> float:
    start = time.time()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return time.time() - start


def measure(repeats: int) -> dict:
    """Median seconds for each command, the commands alternating."""
    here = Path(__file__).resolve().parent
    nnrun = Path(sys.executable).parent / "nnrun"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")])}
    times = {"import torch": [], "import torch, torch._dynamo": [], "hand-written script": [], "nnrun": []}
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "hand.py").write_text(HAND)
        for _ in range(repeats):  # alternate, so drifts in machine load hit all of them
            times["import torch"].append(imports("import torch", env))
            times["import torch, torch._dynamo"].append(imports("import torch, torch._dynamo", env))
            times["hand-written script"].append(first_step([sys.executable, "hand.py"], cwd, env))
            times["nnrun"].append(
                first_step(
                    [str(nnrun), "imports=[first_step]", "+callbacks.first_step={}", "trainer.plots=false"], cwd, env
                )
            )
    return {name: statistics.median(values) for name, values in times.items()}


def print_table(medians: dict, repeats: int) -> None:
    base = medians["import torch"]
    print(f"\nStart-up to the end of the first training step (default config: MLP on digits), median of {repeats}:\n")
    print("| command | seconds | over `import torch` |")
    print("|---|---:|---:|")
    for name, median in medians.items():
        print(f"| {name} | {median:.2f} | {median - base:+.2f} |")
    print(
        f"\nnnrun over the hand-written script: {medians['nnrun'] - medians['hand-written script']:+.2f} s; "
        f"over `import torch, torch._dynamo`: {medians['nnrun'] - medians['import torch, torch._dynamo']:+.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {__import__('torch').__version__}, {os.cpu_count()} cores")
    print_table(measure(args.repeats), args.repeats)


if __name__ == "__main__":
    main()
