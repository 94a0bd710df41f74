"""The checkpoint format (nnrun.stored.FORMAT): last.pt, best.pt and model.safetensors carry it, and
a file of another format, or of none, is refused in one line naming both, exit 2, nothing written:
by a resume, by nnrun-eval and by nnrun.load_run. No shim reads an older layout."""

import hashlib
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import FAST, train, tree
from nnrun.errors import ConfigError
from nnrun.launch import main
from nnrun.stored import FORMAT
from nnrun.trained import eval_main, load_run

# (the format written into the file, None: no format at all; how the refusal names it)
OTHER = {"older": (0, "format 0"), "newer": (FORMAT + 1, f"format {FORMAT + 1}"), "none": (None, "format 0 (it has")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    _, run = train(tmp_path_factory.mktemp("finished"), *FAST)
    return run


def copy_of(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    return run


def test_every_checkpoint_carries_the_format(finished):
    for name in ("last.pt", "last.prev.pt", "best.pt"):
        assert torch.load(finished / "checkpoints" / name, weights_only=True)["format"] == FORMAT, name
    with safe_open(str(finished / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": str(FORMAT)}


@pytest.mark.parametrize("other", OTHER)
@pytest.mark.parametrize("in_place", [False, True], ids=["named", "in_place"])
def test_a_resume_refuses_a_last_pt_of_another_format(tmp_path, finished, monkeypatch, capsys, other, in_place):
    run = copy_of(finished, tmp_path)
    last = run / "checkpoints" / "last.pt"
    value, named = OTHER[other]
    state = torch.load(last, weights_only=True)
    state.pop("format") if value is None else state.update(format=value)
    torch.save(state, last)
    (run / "checkpoints" / "last.pt.sha256").write_text(hashlib.sha256(last.read_bytes()).hexdigest() + "\n")
    assert (run / "checkpoints" / "last.prev.pt").exists()  # of this format: no fallback to it either
    before = {k: v for k, v in tree(run).items() if not k.endswith(".lock")}  # the lock holds who has it
    monkeypatch.chdir(tmp_path)
    where = [f"hydra.run.dir={run}", "trainer.resume=auto"] if in_place else [f"trainer.resume={run}"]
    assert main([*where, "trainer.epochs=3", "trainer.plots=false"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert f"{last} is checkpoint {named}" in lines[0], lines[0]
    assert f"this nnrun reads format {FORMAT}: start a new run (or use the nnrun release that wrote it)" in lines[0]
    assert {k: v for k, v in tree(run).items() if not k.endswith(".lock")} == before
    assert not list(tmp_path.glob("outputs/*/*"))


@pytest.mark.parametrize("other", OTHER)
def test_the_tools_refuse_weights_of_another_format(tmp_path, finished, capsys, other):
    run = copy_of(finished, tmp_path)
    value, named = OTHER[other]
    weights = run / "model.safetensors"
    save_file(load_file(weights), str(weights), metadata=None if value is None else {"format": str(value)})
    before = tree(run)
    line = f"run={run}: model.safetensors is checkpoint {named}"
    with pytest.raises(ConfigError) as refused:
        load_run(run)
    assert line in str(refused.value) and "\n" not in str(refused.value)
    assert "train the run again with this nnrun (or use the nnrun release that wrote it)" in str(refused.value)
    with pytest.raises(SystemExit) as exited:
        eval_main([f"run={run}"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nnrun-eval: error: ") and line in err and len(err.splitlines()) == 1, err
    assert tree(run) == before  # no eval.json


def test_load_state_dict_restores_the_callbacks_and_the_data_fingerprint(tmp_path):
    """Everything a resume needs comes from the checkpoint, through Trainer.load_state_dict alone:
    the callbacks go on where they were (no on_train_begin), and the data's fingerprint is kept."""
    import signal

    from nnrun.callbacks import build_callbacks
    from nnrun.data import fingerprint
    from nnrun.errors import Interrupted
    from test_units import tiny_data, trainer

    def fitter(epochs: int, folder):
        made = trainer(epochs)
        made.callbacks = build_callbacks({"early_stopping": {"patience": 2, "min_delta": 10.0}})
        for cb in made.callbacks:  # csv_logger comes too: its metrics.csv goes to folder
            cb.setup(made.model, folder, made.save_weights, made.optimizer, made.kept)
        return made

    data = tiny_data()
    first = fitter(6, tmp_path)
    first.outputs.stop = lambda: signal.SIGTERM if first.history.epoch >= 2 else None
    with pytest.raises(Interrupted):
        first.fit(data)
    state = first.state_dict()
    assert state["format"] == FORMAT and state["data"] == fingerprint(data)
    resumed = fitter(6, tmp_path)
    resumed.load_state_dict(state)
    assert resumed.data_fingerprint == fingerprint(data)
    stopping = resumed.callbacks[0]
    assert (stopping.best_epoch, stopping.wait) == (1, 1)  # epoch 2 missed by min_delta: waiting
    assert resumed.fit(data).stopped_early and resumed.history.epoch == 3  # patience 2: the next miss stops
