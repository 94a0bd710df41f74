"""Helpers: run the real nnrun command and its tools, find a run folder, write tiny IDX datasets.

Where each command runs (the cost of a Python that imports torch is 3-8 CPU-seconds):
- nnrun(...), train(...), with_hook(...): a process of its own, forked from tests/warm.py's helper;
- tool(...): nnrun-eval/-predict/-export/-report in this process (a run of your own code: forked);
- refused(...): a command refused before any run starts, in this process;
- NNRUN and the console scripts in BIN: a true cold start, for tests about start-up itself."""

import atexit
import contextlib
import csv
import gzip
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
import warnings
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch

from warm import warm_run, warm_start

# The installed console script next to this Python; `python -m nnrun` when there is none.
_SCRIPT = Path(sys.executable).parent / "nnrun"
NNRUN = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "nnrun"]
BIN = Path(sys.executable).parent  # the console scripts: nnrun, nnrun-eval, nnrun-predict, ...
FAST = ["trainer.epochs=2", "trainer.limit_batches=5"]
# the trust list of your own code (nnrun.usercode) of every run the tests start: a folder of this
# session, never the real ~/.local/state (a test of another user gives its own NNRUN_STATE_DIR)
STATE_DIR = tempfile.mkdtemp(prefix="nnrun-test-state-")
os.environ["NNRUN_STATE_DIR"] = STATE_DIR
atexit.register(shutil.rmtree, STATE_DIR, True)
SCRATCH = tempfile.mkdtemp(prefix="nnrun-test-scratch-")  # output files of started commands, cold hooks
atexit.register(shutil.rmtree, SCRATCH, True)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """A slow mark says why, or its file does not collect: a collection error shows under xdist too,
    and in the default run, before `-m 'not slow'` deselects the slow tests."""
    report = yield
    bare = [i.name for i in report.result if isinstance(i, pytest.Item) and not all(slow_reasons(i))]
    if report.passed and bare:
        report.outcome, report.result = "failed", []
        report.longrepr = (
            f"{collector.nodeid}: {', '.join(bare)} marked slow without a reason; write "
            'pytest.mark.slow(reason="what makes it slow; where the default suite covers the same rule")'
        )
    return report


def slow_reasons(item) -> list:
    return [mark.kwargs.get("reason") for mark in item.iter_markers("slow")]


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
    return forked("nnrun", args, cwd, env, timeout)


def forked(name, args, cwd, env=None, timeout=300, hook=None) -> subprocess.CompletedProcess:
    """The console script `name args` in a process of its own: forked from the warm helper, or
    started cold when there is none (NNRUN_TEST_WARM=0, or it did not answer in time). hook: code
    run first, as a sitecustomize.py would."""
    env = env or clean_env()
    result = warm_run(args, cwd, env, timeout, entry=name, hook=hook)
    if result is not None:
        return result
    command = [*NNRUN] if name == "nnrun" else [str(BIN / name)]
    if hook is not None:
        folder = Path(tempfile.mkdtemp(dir=SCRATCH))
        (folder / "sitecustomize.py").write_text(hook)
        env = {**env, "PYTHONPATH": str(folder)}
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def started(*args, cwd, env=None):
    """`nnrun args` started and left running, for a test to signal, kill or wait for: a Popen, or its
    like forked from the warm helper (one at a time: the helper serves nothing else until it ends)."""
    env = env or clean_env()
    command = warm_start(args, cwd, env, tempfile.mkdtemp(dir=SCRATCH))
    if command is not None:
        return command
    return subprocess.Popen(
        [*NNRUN, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


ENTRIES = {e.name: e for e in entry_points(group="console_scripts") if e.value.startswith("nnrun.")}


def tool(name, *args, cwd, env=None, timeout=300) -> subprocess.CompletedProcess:
    """The console script `name args` (nnrun-eval, nnrun-predict, nnrun-export, nnrun-report) as a
    subprocess.run would give it, run in this process by calling its entry point with that argv,
    working folder and environment. A run of your own code (its model_source.json) imports your
    modules, which must not stay in this process for the next test: that one is forked instead."""
    if any(needs_own_process(a, cwd) for a in args):
        return forked(name, args, cwd, env, timeout)
    return in_process(name, args, cwd, env or clean_env())


def refused(*args, cwd, env=None) -> subprocess.CompletedProcess:
    """`nnrun args` for a command nnrun refuses before any run starts (its one line and exit code),
    run in this process: a config refusal costs ~0.1 s here, seconds in a process of its own. A
    command that names your own code (imports=, model=custom) is forked: your modules, and what they
    register, must not stay in this process."""
    if any(str(a).lstrip("+").startswith(("imports=", "model=custom", "model.target=")) for a in args):
        return forked("nnrun", args, cwd, env)
    return in_process("nnrun", args, cwd, env or clean_env())


def needs_own_process(arg, cwd) -> bool:
    key, _, value = str(arg).partition("=")
    if key == "trust_code":
        return value == "true"
    if key != "run" or not value:
        return False
    folder = Path(cwd) / Path(value).expanduser()
    return (folder / "model_source.json").exists() or any(folder.glob("*/model_source.json"))


def in_process(name, args, cwd, env) -> subprocess.CompletedProcess:
    """Call the entry point of console script name with argv, cwd, env, stdin, stdout and stderr as
    its own process would have them (file descriptors too: rich, logging and torch's C++ write there);
    put everything back after. Fails when the call left modules of a test's own files imported."""
    main = ENTRIES[name].load()
    modules = set(sys.modules)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, isolated(cwd, env, name, args):
        code = 0
        with redirected(out, err):
            try:
                main()
            except SystemExit as exc:  # as Python ends a process: a message goes to stderr, exit 1
                if exc.code is not None and not isinstance(exc.code, int):
                    print(exc.code, file=sys.stderr)
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except Exception:  # what an uncaught exception does to a process
                traceback.print_exc()
                code = 1
        out.seek(0)
        err.seek(0)
        stdout, stderr = (f.read().decode("utf-8", "replace") for f in (out, err))
    leaked = [m for m in set(sys.modules) - modules if foreign(sys.modules[m])]
    for m in leaked:
        del sys.modules[m]
    assert not leaked, f"{name} imported {leaked} into the test process: run it with forked()"
    return subprocess.CompletedProcess([name, *map(str, args)], code, stdout, stderr)


def foreign(module) -> bool:
    """A module from none of the installed packages nor the standard library: a test's own file."""
    file = getattr(module, "__file__", None)
    return file is not None and not any(
        Path(file).resolve().is_relative_to(root) for root in (Path(sys.prefix).resolve(), *PACKAGE_ROOTS)
    )


PACKAGE_ROOTS = {Path(p).resolve() for p in (sys.base_prefix, Path(__file__).parent.parent / "nnrun", *sys.path) if p}


@contextlib.contextmanager
def isolated(cwd, env, name, args):
    """argv, working folder, environment, signal handlers, logging, warnings and torch's thread count
    for one call, given back after."""
    saved = (sys.argv[:], os.getcwd(), dict(os.environ), sys.path[:], sys.meta_path[:], torch.get_num_threads())
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)}
    loggers = {
        n: (lg.handlers[:], lg.level, lg.disabled, lg.propagate)
        for n, lg in [("", logging.getLogger()), *logging.Logger.manager.loggerDict.items()]
        if isinstance(lg, logging.Logger)
    }
    sys.argv = [name, *map(str, args)]
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    try:
        with warnings.catch_warnings():
            # shown on stderr as a new Python would (pytest records them), by the filters it would have:
            # Python's and those torch and others add on import, without pytest's "always" for deprecations
            warnings.filters[:] = [
                f
                for f in warnings.filters
                if f[0] != "always" or f[2] not in (DeprecationWarning, PendingDeprecationWarning)
            ]
            torch.jit.TracerWarning.ignore_lib_warnings()  # torch's own, added on import (pytest's context lost it)
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
                warnings.formatwarning(message, category, filename, lineno, line)
            )
            yield
    finally:
        sys.argv, cwd, environ, sys.path[:], sys.meta_path[:], threads = saved
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(environ)
        torch.set_num_threads(threads)
        for number, handler in handlers.items():
            signal.signal(number, handler)
        for n, (kept, level, disabled, propagate) in loggers.items():  # Hydra's and nnrun's handlers go
            lg = logging.getLogger(n or None)
            lg.handlers[:], lg.level, lg.disabled, lg.propagate = kept, level, disabled, propagate


@contextlib.contextmanager
def redirected(out, err):
    """File descriptors 0, 1 and 2 and sys.stdin/stdout/stderr on /dev/null, out and err."""
    saved_fds = [os.dup(fd) for fd in (0, 1, 2)]
    saved_std = sys.stdin, sys.stdout, sys.stderr
    sys.stdout.flush()
    sys.stderr.flush()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    os.close(null)
    sys.stdin = open(0, closefd=False, encoding="utf-8")
    sys.stdout = open(1, "w", closefd=False, encoding="utf-8", buffering=1)
    sys.stderr = open(2, "w", closefd=False, encoding="utf-8", errors="backslashreplace", buffering=1)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdin, sys.stdout, sys.stderr = saved_std
        for fd, saved in enumerate(saved_fds):
            os.dup2(saved, fd)
            os.close(saved)


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
    """`nnrun hydra.run.dir=run *LONG` with code run first, as a sitecustomize.py would (forked from
    the warm helper; cold with a sitecustomize.py when there is none): for faults a test cannot cause
    from outside, such as a full disk."""
    args = ["hydra.run.dir=run", "trainer.epochs=500", "~callbacks.early_stopping", "trainer.plots=false"]
    return forked("nnrun", args, tmp_path, hook=code)


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
    "BIN",
    "FAST",
    "clean_env",
    "nnrun",
    "forked",
    "started",
    "tool",
    "refused",
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
