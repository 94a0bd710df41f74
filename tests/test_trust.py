"""Runs you can trust: killed and resumed runs end bit-identical to uninterrupted ones; signals,
damaged checkpoints, a full disk and NaN losses lose nothing; unsafe files and names are refused."""

import os
import pickle
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import (
    NNRUN,
    clean_env,
    metrics,
    nnrun,
    one_line_error,
    refused,
    started,
    summary,
    train,
    with_hook,
    write_idx,
    write_mnist,
)

# dropout (mlp default 0.2), shuffling and early stopping all on; a checkpoint every 3 steps
RESUMABLE = [
    "trainer.epochs=8",
    "trainer.checkpoint_every_n_steps=3",
    "callbacks.early_stopping.patience=3",
    "trainer.plots=false",
]
LONG = ["trainer.epochs=500", "~callbacks.early_stopping", "trainer.plots=false"]


def start(*args, cwd) -> subprocess.Popen:
    return subprocess.Popen(
        [*NNRUN, *args], cwd=cwd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_until(condition, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended first:\n{proc.communicate()[1]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def run_folders(cwd) -> list:
    return sorted(p for p in (Path(cwd) / "outputs").glob("*/*") if p.is_dir())


def epochs_logged(folder) -> int:
    path = folder / "metrics.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


def without_time(rows) -> list:
    return [{k: v for k, v in row.items() if k != "epoch_time"} for row in rows]


def weights(path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def test_killed_with_sigkill_mid_epoch_and_resumed_ends_bit_identical(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir(), killed.mkdir()
    assert nnrun(*RESUMABLE, cwd=whole).returncode == 0
    proc = started(*RESUMABLE, cwd=killed)
    wait_until(lambda: any((f / "checkpoints/last.pt").exists() for f in run_folders(killed)), proc)
    time.sleep(random.uniform(0.0, 0.6))  # a random step after the first checkpoint
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.kill()
    proc.communicate()
    [folder] = run_folders(killed)
    saved = [folder / "checkpoints" / n for n in ("last.pt", "last.prev.pt")]  # a kill between two renames
    at = torch.load(next(p for p in saved if p.exists()), weights_only=True)  # for the message below
    resumed = nnrun(*RESUMABLE, "trainer.resume=auto", cwd=killed)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {folder}" in resumed.stdout, resumed.stdout[:3000]
    assert run_folders(killed) == [folder]  # continued in place, no second folder
    [reference] = run_folders(whole)
    a, b = weights(reference / "checkpoints/last.pt"), weights(folder / "checkpoints/last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (
        f"weights differ after a kill at epoch {at['epoch'] + 1}, step {at['step']}"
    )
    assert without_time(metrics(folder)) == without_time(metrics(reference))
    assert summary(folder)["test_accuracy"] == summary(reference)["test_accuracy"]
    again = nnrun(*RESUMABLE, "trainer.resume=auto", cwd=killed)
    assert again.returncode == 0 and "already completed" in again.stdout + again.stderr
    assert run_folders(killed) == [folder]


SIGNAL = pytest.mark.slow(reason="a started process trained until the signal; SIGTERM runs by default")


@pytest.mark.parametrize(
    "sig,code,twice",
    [
        pytest.param(signal.SIGINT, 130, False, marks=SIGNAL),
        (signal.SIGTERM, 143, False),
        pytest.param(signal.SIGINT, 130, True, marks=SIGNAL),
        pytest.param(signal.SIGUSR1, 138, False, marks=SIGNAL),
    ],
)
def test_a_stop_signal_saves_and_exits_with_its_code(tmp_path, sig, code, twice):
    requeue = ["trainer.requeue_signal=SIGUSR1"] if sig == signal.SIGUSR1 else []
    proc = start(*LONG, *requeue, cwd=tmp_path)
    wait_until(lambda: any(epochs_logged(f) >= 1 for f in run_folders(tmp_path)), proc)
    proc.send_signal(sig)
    if twice:
        time.sleep(0.01)
        proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    [folder] = run_folders(tmp_path)
    info = summary(folder)
    assert info["status"] == "interrupted" and info["signal"] == signal.Signals(sig).name
    state = torch.load(folder / "checkpoints/last.pt", weights_only=True)
    # last.pt counts finished epochs; the summary names the epoch that was running
    assert (state["epoch"] + (1 if state["step"] else 0), state["step"]) == (info["epoch"], info["step"])
    assert epochs_logged(folder) == state["epoch"]  # every finished epoch, and no other
    assert "trainer.resume" in stderr and "Traceback" not in stderr and "Error executing job" not in stderr
    # it continues from there (told to stop two epochs later)
    result = nnrun(*LONG, *requeue, f"trainer.resume={folder}", f"trainer.epochs={state['epoch'] + 2}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert summary(folder)["status"] == "completed" and epochs_logged(folder) == state["epoch"] + 2


def killed_midway(tmp_path, args, epochs: int) -> Path:
    """A run killed with SIGKILL once it has logged the given number of epochs."""
    proc = started(*args, cwd=tmp_path)
    wait_until(lambda: any(epochs_logged(f) >= epochs for f in run_folders(tmp_path)), proc)
    proc.kill()
    proc.communicate()
    [folder] = run_folders(tmp_path)
    return folder


def test_a_truncated_last_checkpoint_falls_back_to_the_previous_one(tmp_path):
    folder = killed_midway(tmp_path, LONG, epochs=3)  # two saves of last.pt at least
    last = folder / "checkpoints/last.pt"
    prev = folder / "checkpoints/last.prev.pt"
    good = torch.load(prev, weights_only=True)["epoch"]
    # damaged in place; a kill between the two renames of a save leaves no last.pt: damage the one to come
    whole = last.read_bytes() if last.exists() else prev.read_bytes()
    last.write_bytes(whole[: len(whole) // 2])
    result = nnrun(*LONG, f"trainer.resume={folder}", f"trainer.epochs={good + 1}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "last.pt is damaged" in result.stdout and "previous checkpoint last.prev.pt" in result.stdout
    assert summary(folder)["status"] == "completed" and epochs_logged(folder) == good + 1


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path):
    # os.fsync fails with ENOSPC from the 7th call on (each checkpoint write calls it twice)
    result = with_hook(
        tmp_path,
        "import errno, os\n_fsync, _calls = os.fsync, [0]\n"
        "def fsync(fd):\n    _calls[0] += 1\n"
        "    if _calls[0] > 6:\n        raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "    return _fsync(fd)\nos.fsync = fsync\n",
    )
    assert result.returncode == 1
    assert "No space left on device" in one_line_error(result)
    folder = tmp_path / "run"
    assert summary(folder)["status"] == "failed" and "No space left" in summary(folder)["error"]
    assert not [p for p in (folder / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    kept = torch.load(folder / "checkpoints/last.pt", weights_only=True)  # digest checked below
    result = nnrun(*LONG, f"trainer.resume={folder}", f"trainer.epochs={kept['epoch'] + 1}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_a_nan_loss_stops_at_once_and_is_never_best(tmp_path):
    result = nnrun(
        "hydra.run.dir=run",
        "optimizer=sgd",
        "optimizer.lr=1e30",
        "trainer.epochs=3",
        "trainer.plots=false",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    line = one_line_error(result)
    assert "training loss became" in line and "lower optimizer.lr" in line
    info = summary(tmp_path / "run")
    assert info["status"] == "nan_loss" and info["epoch"] == 1 and info["step"] >= 1
    for path in (tmp_path / "run" / "checkpoints").glob("*.pt"):
        assert all(torch.isfinite(t).all() for t in weights(path).values())


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_a_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if writer == "torch":
        torch.save({"model": Evil(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"model": Evil(marker)}))
    result = refused(f"trainer.resume={path}", "trainer.epochs=1", cwd=tmp_path)
    assert result.returncode == 2
    assert "would run code" in one_line_error(result) or "not a readable checkpoint" in one_line_error(result)
    assert not marker.exists()


@pytest.mark.parametrize(
    "override",
    [
        "+model._target_=builtins.open",
        "+data._target_=os.system",
        "+callbacks.early_stopping._target_=subprocess.run",
    ],
)
def test_a_target_outside_the_allowlist_is_refused(tmp_path, override):
    result = refused(override, "trainer.epochs=1", cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert "_target_" in line and ("not allowed" in line or "not a config key" in line)  # data: a fixed schema
    assert not list(tmp_path.glob("outputs/*/*/metrics.csv"))


def test_a_target_inside_the_allowlist_is_built(tmp_path):
    result, run_dir = train(tmp_path, "+model._target_=nnrun.models.mlp.MLP", "+model.hidden=[20]", "trainer.epochs=1")
    assert summary(run_dir)["status"] == "completed" and "(None, 20)" in result.stdout


def test_run_names_cannot_leave_the_outputs_folder(tmp_path):
    result = nnrun("run_name=../../escape", "trainer.epochs=1", "trainer.plots=false", cwd=tmp_path / "..")
    # (cwd is tmp_path's parent so that ../../escape would land beside it)
    assert result.returncode == 0, result.stderr
    [folder] = [p for p in (tmp_path.parent / "outputs").glob("*/*") if p.name.endswith("escape")]
    assert folder.name.endswith("_escape") and ".." not in folder.name
    assert not (tmp_path.parent.parent / "escape").exists()


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    procs = [
        start("trainer.epochs=1", "trainer.plots=false", "trainer.limit_batches=2", cwd=tmp_path) for _ in range(2)
    ]
    for proc in procs:
        proc.communicate(timeout=300)
        assert proc.returncode == 0
    folders = run_folders(tmp_path)
    assert len(folders) == 2 and all((f / "summary.json").exists() for f in folders)


def test_an_existing_run_folder_is_not_overwritten(tmp_path):
    _, run_dir = train(tmp_path, "trainer.epochs=1")
    before = (run_dir / "summary.json").read_text()
    result = refused(f"hydra.run.dir={run_dir}", "trainer.epochs=2", cwd=tmp_path)
    assert result.returncode == 2
    assert "already holds a run" in one_line_error(result)
    assert (run_dir / "summary.json").read_text() == before


def test_a_sweep_can_stop_at_its_first_failure(tmp_path):
    sweep = tmp_path / "sweep"
    result = refused(
        "--multirun",
        "model.dropout=1.5,0.1",
        "trainer.epochs=1",
        "fail_fast=true",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert summary(sweep / "0")["status"] == "failed" and not (sweep / "1").exists()


def test_the_same_seed_gives_bitwise_identical_runs(tmp_path):
    args = ["trainer.epochs=2", "trainer.deterministic=true"]
    _, a = train(tmp_path, *args, name="a")
    _, b = train(tmp_path, *args, name="b")
    wa, wb = weights(a / "checkpoints/last.pt"), weights(b / "checkpoints/last.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert without_time(metrics(a)) == without_time(metrics(b))


def test_labels_out_of_range_are_refused_before_training(tmp_path):
    root = write_mnist(tmp_path / "m")
    labels = np.zeros(600, dtype=np.uint8)
    labels[37] = 12
    write_idx(root / "train-labels-idx1-ubyte", labels, gz=True)
    result = refused("data=mnist", f"data.root={root}", "trainer.epochs=1", cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert "12" in line and "train-labels-idx1-ubyte" in line and "37" in line


def test_the_best_weights_are_exported_as_safetensors(tmp_path):
    from safetensors.torch import load_file

    _, run_dir = train(tmp_path, "trainer.epochs=2")
    exported = load_file(run_dir / "model.safetensors")
    best = weights(run_dir / "checkpoints/best.pt")
    assert exported.keys() == best.keys() and all(torch.equal(exported[k], best[k]) for k in best)


@pytest.mark.parametrize(
    "rows,args,message",
    [
        ("x,y\n1,a\n2,a\n3,a\n4,a\n", ["data.target=y"], "column 'y' has a single value (a): nothing to classify"),
        (
            "x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(30)),
            ["data.target=y", "model=lstm"],
            "model=lstm needs sequences",
        ),
        ("x,y\n1,0\ninf,1\n3,0\n4,1\n", ["data.target=y"], "column 'x' has 1 infinite value(s), the first at"),
    ],
)
def test_data_that_cannot_train_is_refused_before_the_first_step(tmp_path, rows, args, message):
    (tmp_path / "t.csv").write_text(rows)
    result = refused("data=csv", "data.path=t.csv", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in one_line_error(result)
    assert not list(tmp_path.glob("outputs/*/*/metrics.csv"))


def test_resuming_with_another_model_is_refused_naming_the_difference(tmp_path):
    folder = killed_midway(tmp_path, LONG, epochs=2)  # last.pt of epoch 1 at least
    result = refused(*LONG, f"trainer.resume={folder}", "model.hidden=[32]", cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert "model.hidden=[128, 64] there, [32] here" in line
