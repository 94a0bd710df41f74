"""Issue 27's smaller defects, each through the real CLI: a damaged checkpoint is not called code,
no torch advice to load unsafely, stop messages in nnrun.log, a full disk and a kill -9 leave the
checkpoints consistent, errors before training leave no folder and touch no other run, all missing
keys at once, and a sweep's syntax error says where."""

import os
import pickle
import random
import signal
import subprocess
import time

import pytest
import torch

from conftest import FAST, NNRUN, clean_env, nnrun, one_line_error, refused, summary, train, tree, with_hook
from test_backbone import IMAGES, SMALL, write_images
from test_trust import LONG, epochs_logged, start, wait_until


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def garbage(n: int = 4096) -> bytes:
    return random.Random(0).randbytes(n)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    _, run = train(root, *FAST)
    return run


def copy_of(finished, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    return run


def test_a_last_checkpoint_holding_garbage_is_damaged_not_code(tmp_path, finished):
    run = copy_of(finished, tmp_path)
    checkpoints = run / "checkpoints"
    for name in ("last.pt.sha256", "last.prev.pt", "last.prev.pt.sha256"):
        (checkpoints / name).unlink(missing_ok=True)  # no digest to catch it, nothing to fall back to
    (checkpoints / "last.pt").write_bytes(garbage())
    result = refused(f"trainer.resume={run}", "trainer.epochs=3", cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert f"{checkpoints / 'last.pt'} is damaged" in line and "start a new run" in line, line
    assert "would run code" not in line and "weights_only" not in line

    marker = tmp_path / "pwned"  # a real pickle with code (protocol 4: torch stops at its FRAME opcode)
    with open(checkpoints / "last.pt", "wb") as f:
        pickle.dump({"model": Evil(marker)}, f, protocol=4)
    result = refused(f"trainer.resume={run}", "trainer.epochs=3", cwd=tmp_path)
    assert result.returncode == 2 and "would run code" in one_line_error(result)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["code", "garbage"])
def test_a_weights_file_that_is_not_a_state_dict_never_echoes_torchs_advice(tmp_path, kind):
    write_images(tmp_path)
    marker = tmp_path / "pwned"
    with open(tmp_path / "weights.pth", "wb") as f:
        pickle.dump({"fc.weight": Evil(marker)}, f, protocol=4) if kind == "code" else f.write(garbage())
    args = [*IMAGES, *SMALL, "model=torchvision", "model.weights=weights.pth", "trainer.epochs=1"]
    result = refused(*args, cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert "model.weights=weights.pth" in line
    assert ("would run code" if kind == "code" else "is damaged") in line, line
    assert "weights_only" not in line and "likely succeed" not in line and "Re-running" not in line
    assert not marker.exists()


def test_stop_messages_reach_the_log(tmp_path):
    proc = start(*LONG, "hydra.run.dir=run", cwd=tmp_path)
    wait_until(lambda: epochs_logged(tmp_path / "run") >= 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    log = (tmp_path / "run/nnrun.log").read_text()
    assert "SIGTERM received: finishing this step and saving" in log
    assert "stopped by SIGTERM" in log and "trainer.resume=auto" in log


FULL_AT_SECOND_LAST = (
    "import errno\nfrom pathlib import Path\nfrom nnrun.train import checkpoint\n"
    "_save, _write, _state = checkpoint.save_checkpoint, checkpoint.Recording.write, {'last': 0, 'full': False}\n"
    "def save_checkpoint(path, state, keep_previous=False):\n"
    "    if Path(path).name == 'last.pt':\n"
    "        _state['last'] += 1\n"
    "        _state['full'] = _state['last'] == 2\n"
    "    return _save(path, state, keep_previous)\n"
    "def write(self, data):\n"
    "    if _state['full']:\n        raise OSError(errno.ENOSPC, 'No space left on device')\n"
    "    return _write(self, data)\n"
    "checkpoint.save_checkpoint, checkpoint.Recording.write = save_checkpoint, write\n"
)


def test_a_full_disk_at_last_pt_keeps_best_pt_in_step_and_records_where(tmp_path):
    # epoch 2's best.pt is written, then its last.pt finds the disk full
    result = with_hook(tmp_path, FULL_AT_SECOND_LAST)
    assert result.returncode == 1, result.stderr
    assert "No space left on device" in one_line_error(result)
    run = tmp_path / "run"
    record = summary(run)
    assert record["status"] == "failed" and record["epoch"] == 2 and record["step"] == 0, record
    checkpoints = run / "checkpoints"
    assert torch.load(checkpoints / "last.pt", weights_only=True)["epoch"] == 1
    assert torch.load(checkpoints / "best.pt", weights_only=True)["epoch"] == 1  # not epoch 2's
    assert not list(checkpoints.glob("best.prev.pt*"))
    from nnrun.train.checkpoint import load_checkpoint

    load_checkpoint(checkpoints / "best.pt")  # its digest is its own


KILLED_BEFORE_RENAME = (
    "import os, signal\nfrom nnrun.train import checkpoint\n"
    "_write, _count = checkpoint.write_atomic, [0]\n"
    "def write_atomic(path, text, sync=True):\n"
    "    _write(path, text, sync)\n"
    "    if path.name == 'last.prev.pt.sha256':\n"
    "        _count[0] += 1\n"
    "        if _count[0] == 2:  # epoch 3's save: the digest copied, the rename not done\n"
    "            os.kill(os.getpid(), signal.SIGKILL)\n"
    "checkpoint.write_atomic = write_atomic\n"
)


def test_a_kill_between_the_digest_copy_and_the_rename_leaves_the_previous_checkpoint_intact(tmp_path):
    result = with_hook(tmp_path, KILLED_BEFORE_RENAME)
    assert result.returncode == -signal.SIGKILL, result.stderr
    run = tmp_path / "run"
    previous = run / "checkpoints/last.prev.pt"
    assert torch.load(previous, weights_only=True)["epoch"] == 1
    last = run / "checkpoints/last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # damaged later: last.prev.pt must serve
    result = nnrun(*LONG, f"trainer.resume={run}", "trainer.epochs=2", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "previous checkpoint last.prev.pt" in result.stdout
    assert summary(run)["status"] == "completed" and epochs_logged(run) == 2


@pytest.mark.parametrize(
    "args, words",
    [
        (["optimizer.lr=-1"], "optimizer.lr=-1.0 is out of range"),
        (["data.batch_size=0"], "data.batch_size=0 is out of range"),
        (["-m", "no_such_key=1,2"], "no_such_key is not a config key"),
    ],
    ids=["lr", "batch_size", "sweep_key"],
)
def test_an_error_before_training_leaves_no_run_folder(tmp_path, args, words):
    result = refused(*args, "trainer.epochs=1", cwd=tmp_path)
    assert result.returncode == 2 and words in one_line_error(result)
    assert not [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()]
    assert not [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir() and p.name != "multirun"]


def test_a_folder_that_held_something_is_never_removed(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("mine\n")
    result = refused("hydra.run.dir=mine", "optimizer.lr=-1", cwd=tmp_path)
    assert result.returncode == 2
    assert (tmp_path / "mine/notes.txt").read_text() == "mine\n"


@pytest.mark.parametrize("why", ["model", "data"])
def test_a_refused_resume_touches_nothing_of_that_run(tmp_path, finished, why):
    run = copy_of(finished, tmp_path)
    before = {k: v for k, v in tree(run).items() if not k.endswith(".lock")}  # the lock holds who has it
    change = "model.hidden=[7]" if why == "model" else "data.val_split=0.3"
    result = refused(f"trainer.resume={run}", "trainer.epochs=3", change, cwd=tmp_path)
    assert result.returncode == 2
    assert ("another model or data" if why == "model" else "the data is not what the run trained on") in (
        one_line_error(result)
    )
    assert {k: v for k, v in tree(run).items() if not k.endswith(".lock")} == before
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").glob("*/*"))


def test_every_missing_required_key_is_named_at_once(tmp_path):
    result = refused("data=csv", "trainer.epochs=1", cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert "data.path" in line and "data.target" in line and "data.path=... data.target=..." in line, line


def test_a_sweep_syntax_error_says_where(tmp_path):
    result = refused("-m", "optimizer.lr=0.1,,0.2", cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert "optimizer.lr=0.1,,0.2" in line and "character 18" in line and "expected a value" in line, line


WAIT_FOR_THE_OTHER = (
    "import pathlib, time\nimport nnrun.argv as argv\n_refuse = argv.refuse_used_run_dir\n"
    "def refuse_used_run_dir(args):\n"
    "    _refuse(args)  # the folder did not exist yet: this command would make it\n"
    "    deadline = time.time() + 240\n"
    "    while not pathlib.Path('run/.lock').exists() and time.time() < deadline:\n"
    "        time.sleep(0.05)  # until the other nnrun has made and claimed it\n"
    "argv.refuse_used_run_dir = refuse_used_run_dir\n"
)


def test_the_loser_of_a_race_for_a_new_run_folder_removes_nothing(tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(WAIT_FOR_THE_OTHER)
    args = [*NNRUN, "hydra.run.dir=run", "trainer.epochs=2", "trainer.plots=false"]
    loser = subprocess.Popen(
        args,
        cwd=tmp_path,
        env=clean_env(PYTHONPATH=str(hook)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # (either order ends alike: the loser waits for the winner's lock)
    winner = subprocess.run(args, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=600)
    _, err = loser.communicate(timeout=600)
    assert loser.returncode == 2 and "in use" in err, err
    assert winner.returncode == 0, winner.stderr
    run = tmp_path / "run"
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "nnrun.log").is_file()
    assert summary(run)["status"] == "completed"
