"""Helpers: run the real nnrun command, find its run folder, write tiny IDX datasets."""

import atexit
import csv
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

# The installed console script next to this Python; `python -m nnrun` when there is none.
_SCRIPT = Path(sys.executable).parent / "nnrun"
NNRUN = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "nnrun"]
FAST = ["trainer.epochs=2", "trainer.limit_batches=5"]
# the trust list of your own code (nnrun.usercode) of every run the tests start: a folder of this
# session, never the real ~/.local/state (a test of another user gives its own NNRUN_STATE_DIR)
STATE_DIR = tempfile.mkdtemp(prefix="nnrun-test-state-")
os.environ["NNRUN_STATE_DIR"] = STATE_DIR
atexit.register(shutil.rmtree, STATE_DIR, True)


def clean_env(**extra) -> dict:
    """The caller's environment without settings that change what nnrun prints."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "NNRUN_DEBUG", "HYDRA_FULL_ERROR", "COLUMNS")
    }
    if "PYTEST_XDIST_WORKER" in env:  # parallel workers: one thread each, not one per core each
        env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


def nnrun(*args, cwd, env=None, timeout=300) -> subprocess.CompletedProcess:
    """`nnrun args` in its own process; forked from a helper that has the imports done (tests/warm.py)."""
    from warm import warm_run

    result = warm_run(args, cwd, env or clean_env(), timeout)
    if result is not None:
        return result
    return subprocess.run(
        [*NNRUN, *args], cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=timeout
    )


def train(tmp_path, *args, name="run", plots=False) -> tuple:
    """Run nnrun into tmp_path/name; (completed process, run folder). Fails on a non-zero exit.
    Plots are off unless asked for: they cost ~2 s a run and test_report checks them."""
    run_dir = tmp_path / name
    flags = [a for a in args if a.startswith("--")]  # Hydra's flags go before overrides
    overrides = [a for a in args if not a.startswith("--")] + ([] if plots else ["trainer.plots=false"])
    result = nnrun(*flags, f"hydra.run.dir={run_dir}", *overrides, cwd=tmp_path)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result, run_dir


def with_hook(tmp_path, code: str) -> subprocess.CompletedProcess:
    """`nnrun hydra.run.dir=run *LONG`, started cold with code run first (a sitecustomize.py on the
    path): for faults a test cannot cause from outside, such as a full disk."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(code)
    args = ["hydra.run.dir=run", "trainer.epochs=500", "~callbacks.early_stopping", "trainer.plots=false"]
    return subprocess.run(
        [*NNRUN, *args], cwd=tmp_path, env=clean_env(PYTHONPATH=str(hook)), capture_output=True, text=True, timeout=300
    )


def summary(run_dir) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def yaml_config(run_dir) -> dict:
    """The resolved config Hydra saved for the run."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(Path(run_dir) / ".hydra" / "config.yaml"))


def metrics(run_dir) -> list:
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    """IDX as MNIST ships it: zero, zero, type 0x08 (ubyte), ndim; big-endian dims; the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path = Path(str(path) + (".gz" if gz else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:  # mtime and level differ from the originals, as Debian's recompressed files do
        with gzip.GzipFile(path, "wb", compresslevel=6, mtime=0) as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def tiny_digits(n: int, seed: int):
    """n 28x28 noisy images whose class is where a bright block sits: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    rng.shuffle(y)
    x = rng.integers(0, 80, size=(n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(y):
        row, col = divmod(int(label), 4)
        x[i, row * 9 + 1 : row * 9 + 8, col * 7 : col * 7 + 6] = 255
    return x, y.astype(np.uint8)


def write_mnist(folder: Path, gz: bool = True, n_train: int = 600, n_test: int = 200) -> Path:
    """The four MNIST files in folder (any layout the caller picks)."""
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        x, y = tiny_digits(n, seed)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", x, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", y, gz)
    return folder


@pytest.fixture
def mnist_root(tmp_path) -> Path:
    return write_mnist(tmp_path / "mnist_files")


def tree(folder: Path) -> dict:
    """path -> (size, mtime) of everything under folder: to prove nothing was written there."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(Path(folder).rglob("*"))}


def one_line_error(result) -> str:
    """The single stderr line of a refused run; asserts there is exactly one and no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    assert len(lines) == 1, f"expected one line, got:\n{result.stderr}"
    return lines[0]


__all__ = [
    "NNRUN",
    "FAST",
    "clean_env",
    "nnrun",
    "train",
    "with_hook",
    "summary",
    "yaml_config",
    "metrics",
    "write_idx",
    "write_mnist",
    "tree",
    "one_line_error",
    "shutil",
]
