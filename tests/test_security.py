"""A run folder is data, never code: planted configs and checkpoints run nothing, writes stay in
the run folder, one process writes a folder at a time, and no checkpoint holds NaN weights."""

import hashlib
import json
import os
import shutil
import signal

import numpy as np
import pytest
import torch
import yaml

import nnrun as package
from conftest import FAST, clean_env, nnrun, one_line_error, refused, summary, tool, train, tree, with_hook
from test_trust import LONG, epochs_logged, killed_midway, start, wait_until

BARE = ["~model.hidden", "~model.activation", "~model.dropout", "~model.batchnorm", "~model.embedding_dim"]
TOOLS = {
    "nnrun-predict": lambda run: ["input=x.npy"],
    "nnrun-eval": lambda run: [],
    "nnrun-export": lambda run: ["format=torchscript"],
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One small completed run, copied by each test that plants something in it."""
    root = tmp_path_factory.mktemp("finished")
    _, run = train(root, "trainer.epochs=1", "trainer.limit_batches=3")
    return run


def planted(tmp_path, finished, model: dict):
    """A copy of a finished run whose stored config builds `model`; plus an input file."""
    run = tmp_path / "shared_run"
    shutil.copytree(finished, run)
    config = yaml.safe_load((run / ".hydra/config.yaml").read_text())
    config["model"] = model
    (run / ".hydra/config.yaml").write_text(yaml.safe_dump(config))
    np.save(tmp_path / "x.npy", np.zeros((3, 8, 8), dtype=np.float32))
    return run


PAYLOADS = [
    ("os.system", lambda t: {"name": "mlp", "_target_": "os.system", "command": f"touch {t / 'pwned'}"}),
    (
        "builtins.open",
        lambda t: {"name": "mlp", "_target_": "builtins.open", "file": str(t / "victim.txt"), "mode": "w"},
    ),
    (
        "nnrun.train.checkpoint.save_checkpoint",  # inside nnrun, but a function that writes files
        lambda t: {
            "name": "mlp",
            "_target_": "nnrun.train.checkpoint.save_checkpoint",
            "path": str(t / "victim.txt"),
            "state": {},
        },
    ),
]


@pytest.mark.parametrize("prog", [*TOOLS, "load_run"])
@pytest.mark.parametrize("target,payload", PAYLOADS, ids=[p[0] for p in PAYLOADS])
def test_a_planted_config_in_a_run_folder_runs_nothing(tmp_path, finished, prog, target, payload):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    run = planted(tmp_path, finished, payload(tmp_path))
    before = tree(run)
    if prog == "load_run":
        try:
            package.load_run(run)
            message = "loaded"
        except ValueError as e:
            message = str(e)
    else:
        result = tool(prog, f"run={run}", *TOOLS[prog](run), cwd=tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        message = one_line_error(result)
    assert f"model._target_={target} is not allowed" in message
    assert not (tmp_path / "pwned").exists()
    assert victim.read_text() == "precious\n"
    assert tree(run) == before


@pytest.mark.parametrize(
    "args",
    [
        [
            "+hydra.callbacks.evil._target_=builtins.open",
            "+hydra.callbacks.evil.file=victim.txt",
            "+hydra.callbacks.evil.mode=w",
        ],
        [
            "+hydra.callbacks.evil._target_=torch.nn.functional.torch.save",
            "+hydra.callbacks.evil.obj=1",
            "+hydra.callbacks.evil.f=victim.txt",
        ],
        ["imports=[os]", "+model._target_=os.system", "+model.command=touch pwned", *BARE],
        ["imports=[shutil]", "+model._target_=shutil.copyfile", "+model.src=x", "+model.dst=victim.txt", *BARE],
        ["+model._target_=nnrun.train.checkpoint.save_checkpoint", "+model.path=victim.txt", "+model.state={}", *BARE],
        # nested: Hydra would build these too, through a module's imports (torch.load of a planted pickle)
        ["+hydra.callbacks.results.sub._target_=nnrun.train.checkpoint.torch.load", "+hydra.callbacks.results.sub.f=x"],
        [
            "+hydra.callbacks.results.sub._target_=nnrun.train.checkpoint.Recording",
            "+hydra.callbacks.results.sub.file=x",
        ],
        ["+hydra.job_logging.handlers.evil={class:logging.io.FileIO,file:victim.txt,mode:w}"],
        ["+hydra.job_logging.handlers.evil={class:logging.FileHandler,filename:victim.txt}"],
        ["hydra.job.chdir=true"],
        ["hydra.job_logging.handlers.file.filename=victim.txt"],
        ["hydra.job.name=../victim"],
        ["hydra.output_subdir=../.."],
        ["hydra/job_logging=default"],  # Hydra would open a log file before nnrun claims the folder
        ["~hydra.callbacks.run_folder"],  # it claims each job's folder
        ["+hydra.job.env_set.LD_PRELOAD=./evil.so"],
    ],
)
def test_the_allowlist_has_no_holes(tmp_path, args):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    before = tree(tmp_path)
    result = refused(*args, "trainer.epochs=1", "trainer.plots=false", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert (
        "not allowed" in one_line_error(result)
        or "not your own module" in one_line_error(result)
        or "standard-library" in one_line_error(result)
    )
    assert not (tmp_path / "pwned").exists()
    assert victim.read_text() == "precious\n"
    files = {p: v for p, v in tree(tmp_path).items() if not os.path.isdir(p)}
    assert files == before  # no log, no config, nothing (at most an empty folder)


def test_imports_may_name_the_users_own_module(tmp_path):
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\nfrom nnrun.models import flat_size\n"
        "class Flat(nn.Sequential):\n"
        "    def __init__(self, input_shape, num_classes, width=16):\n"
        "        super().__init__(nn.Flatten(), nn.Linear(flat_size(input_shape), width), nn.ReLU(),\n"
        "                         nn.Linear(width, num_classes))\n"
    )
    train(
        tmp_path,
        "imports=[my_models]",
        "+model._target_=my_models.Flat",
        "~model.hidden",
        "~model.activation",
        "~model.dropout",
        "~model.batchnorm",
        "~model.embedding_dim",
        "trainer.epochs=1",
        "trainer.limit_batches=2",
    )


@pytest.mark.parametrize(
    "args,escape",
    [
        (["+callbacks.lr_monitor.filename={victim}"], "victim.txt"),
        (["+callbacks.csv_logger.filename=../../victim.txt"], "victim.txt"),
        (["+callbacks.tensorboard.log_dir=../../victim_dir"], "victim_dir"),
        (["callbacks.model_checkpoint.filename=../../victim"], "victim.pt"),
    ],
)
def test_file_names_from_the_config_cannot_leave_the_run_folder(tmp_path, args, escape):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    args = [a.format(victim=victim) for a in args]
    result = refused("hydra.run.dir=a/b", *args, "trainer.epochs=1", "trainer.plots=false", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "not allowed" in one_line_error(result) or "plain file name" in one_line_error(result)
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / escape).exists() or escape == "victim.txt"


LR_LOGGED = [*LONG, "callbacks=[default,lr_monitor]"]


@pytest.fixture(scope="module")
def killed_lr_run(tmp_path_factory):
    """A run with lr.csv killed after two epochs, for the tests that plant links in a copy of it."""
    return killed_midway(tmp_path_factory.mktemp("killed"), LR_LOGGED, epochs=2)


@pytest.mark.parametrize("name", ["metrics.csv", "nnrun.log", "lr.csv"])
def test_a_link_planted_in_a_run_folder_is_not_written_through(tmp_path, killed_lr_run, name):
    args = LR_LOGGED
    folder = shutil.copytree(killed_lr_run, tmp_path / killed_lr_run.name)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (folder / name).unlink()
    (folder / name).symlink_to(victim)
    for resume in ([f"trainer.resume={folder}"], [f"hydra.run.dir={folder}", "trainer.resume=auto"]):
        result = refused(*args, *resume, "trainer.epochs=4", cwd=tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "symbolic link" in one_line_error(result)
        assert victim.read_text() == "precious\n"


def test_resuming_a_copy_of_a_run_leaves_the_original_untouched(tmp_path):
    args = [*LONG, "callbacks.model_checkpoint.save_top_k=2", "callbacks.model_checkpoint.filename='ep{epoch:03d}'"]
    original = killed_midway(tmp_path, args, epochs=3)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    before = tree(original)
    saved = [copy / "checkpoints" / n for n in ("last.pt", "last.prev.pt")]  # a kill between two renames
    done = torch.load(next(p for p in saved if p.exists()), weights_only=True)["epoch"]
    result = nnrun(*args, f"trainer.resume={copy}", f"trainer.epochs={done + 4}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert tree(original) == before  # not a file added, changed or removed
    kept = torch.load(copy / "checkpoints/last.pt", weights_only=True)["callbacks"]["model_checkpoint"]["kept"]
    assert all("/" not in name for _, name in kept)
    on_disk = sorted(p.name for p in (copy / "checkpoints").glob("ep*.pt"))
    assert on_disk == sorted(name for _, name in kept) and len(on_disk) == 2
    digests = sorted(p.name for p in (copy / "checkpoints").glob("ep*.pt.sha256"))
    assert digests == [f"{name}.sha256" for name in on_disk]  # pruning took the digests too


def test_two_processes_cannot_write_one_run_folder(tmp_path):
    folder = tmp_path / "run"
    proc = start(f"hydra.run.dir={folder}", *LONG, cwd=tmp_path)
    wait_until(lambda: epochs_logged(folder) >= 1, proc)
    second = nnrun(f"hydra.run.dir={folder}", *LONG, "trainer.resume=auto", cwd=tmp_path)
    other = nnrun(*LONG, f"trainer.resume={folder}", cwd=tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    for result in (second, other):
        assert result.returncode == 2, result.stdout + result.stderr
        line = one_line_error(result)
        assert str(folder) in line and f"pid {proc.pid}" in line
    epochs = [row.split(",")[0] for row in (folder / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == [str(e) for e in range(1, len(epochs) + 1)]  # no row twice, no NUL bytes
    assert "\0" not in (folder / "metrics.csv").read_text()
    assert summary(folder)["status"] == "interrupted"


def test_weights_that_blow_up_are_never_saved(tmp_path):
    # the update overflows float32: the first step's loss is finite, the weights it leaves are not
    result = nnrun(
        "hydra.run.dir=run",
        "optimizer=sgd",
        "optimizer.lr=3e38",
        "optimizer.weight_decay=3e38",
        "trainer.checkpoint_every_n_steps=1",
        "trainer.epochs=2",
        "trainer.plots=false",
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "NaN or infinite" in one_line_error(result) or "training loss became" in one_line_error(result)
    info = summary(tmp_path / "run")
    assert info["status"] == "nan_loss" and info["epoch"] == 1
    for path in (tmp_path / "run/checkpoints").glob("*.pt"):
        state = torch.load(path, weights_only=True)["model"]
        assert all(torch.isfinite(t).all() for t in state.values()), path.name


def stopped_midway(tmp_path, args, epochs: int):
    """A run stopped by SIGTERM (saved cleanly: last.pt and last.prev.pt with their digests)."""
    proc = start(*args, cwd=tmp_path)
    wait_until(lambda: any(epochs_logged(f) >= epochs for f in (tmp_path / "outputs").glob("*/*")), proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    [folder] = list((tmp_path / "outputs").glob("*/*"))
    return folder


def test_resume_falls_back_past_a_checkpoint_with_nan_weights(tmp_path):
    folder = stopped_midway(tmp_path, LONG, epochs=3)
    last = folder / "checkpoints/last.pt"
    state = torch.load(last, weights_only=True)
    state["model"] = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state["model"].items()
    }
    torch.save(state, last)  # with a valid digest: only NaN inside
    (folder / "checkpoints/last.pt.sha256").write_text(hashlib.sha256(last.read_bytes()).hexdigest() + "\n")
    good = torch.load(folder / "checkpoints/last.prev.pt", weights_only=True)["epoch"]
    result = nnrun(*LONG, f"trainer.resume={folder}", f"trainer.epochs={good + 1}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "NaN or infinite weights" in result.stdout and "last.prev.pt" in result.stdout
    assert summary(folder)["status"] == "completed"


def test_a_malicious_last_checkpoint_under_resume_auto_is_an_error(tmp_path):
    folder = killed_midway(tmp_path, LONG, epochs=2)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    last = folder / "checkpoints/last.pt"
    torch.save({"model": Evil()}, last)
    (folder / "checkpoints/last.pt.sha256").write_text(hashlib.sha256(last.read_bytes()).hexdigest() + "\n")
    result = refused(*LONG, "trainer.resume=auto", cwd=tmp_path)  # the same config: this run
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line_error(result)
    assert "refused because loading it would run code" in line
    assert "weights_only" not in line and "Re-running" not in line
    assert not marker.exists()


def test_stale_temporary_files_are_removed_at_the_next_start(tmp_path):
    folder = killed_midway(tmp_path, LONG, epochs=2)
    stale = folder / "checkpoints/.last.pt.abc123.tmp"
    stale.write_bytes(b"\0" * 4096)
    result = nnrun(*LONG, f"trainer.resume={folder}", "trainer.epochs=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not list(folder.rglob("*.tmp"))


def test_a_full_disk_during_torch_save_names_the_file(tmp_path):
    # from the 4th checkpoint on (epoch 2's last.pt), writing its bytes fails with ENOSPC, which torch
    # rewords as "unexpected pos ..."
    result = with_hook(
        tmp_path,
        "import errno\nfrom nnrun.train import checkpoint\n"
        "_init, _write, _made = checkpoint.Recording.__init__, checkpoint.Recording.write, [0]\n"
        "def init(self, file):\n    _made[0] += 1\n    _init(self, file)\n"
        "def write(self, data):\n"
        "    if _made[0] > 3:\n        raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "    return _write(self, data)\n"
        "checkpoint.Recording.__init__, checkpoint.Recording.write = init, write\n",
    )
    assert result.returncode == 1, result.stderr
    line = one_line_error(result)
    assert "No space left on device while writing" in line and "previous checkpoint is kept" in line
    assert "unexpected pos" not in line
    assert summary(tmp_path / "run")["status"] == "failed"
    assert not list((tmp_path / "run").rglob("*.tmp"))
    assert torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)["epoch"] == 1


def test_a_column_of_numbers_with_a_few_bad_cells_is_named(tmp_path):
    rows = ["a,b,c,y"] + [f"{'?' if i in (5, 77) else i / 10},{i % 7},{'xy'[i % 2]},{i % 2}" for i in range(200)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    result = refused("data=csv", "data.path=t.csv", "data.target=y", "trainer.epochs=1", cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert "column 'a'" in line and "2 cell(s)" in line and "row 7" in line and "data.na_values" in line
    train(
        tmp_path,
        "data=csv",
        "data.path=t.csv",
        "data.target=y",
        "trainer.epochs=1",
        "data.na_values=['?']",
        "data.impute=mean",
    )


def test_a_text_column_with_too_many_values_is_refused(tmp_path):
    rows = ["a,id,y"] + [f"{i / 10},id{i},{i % 2}" for i in range(120)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    result = refused("data=csv", "data.path=t.csv", "data.target=y", "trainer.epochs=1", cwd=tmp_path)
    assert result.returncode == 2
    assert "120 distinct" in one_line_error(result) and "data.max_categories=50" in one_line_error(result)


def test_a_run_folder_cannot_bring_its_own_code_to_the_tools(tmp_path, finished):
    # the run folder sits under the working folder, so its evil.py looks like "your own module"
    run = planted(tmp_path, finished, {"name": "mlp", "_target_": "shared_run.evil.Net"})
    (run / "evil.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w').close()\nclass Net: pass\n")
    (run / "__init__.py").write_text("")
    config = yaml.safe_load((run / ".hydra/config.yaml").read_text())
    config["imports"] = ["shared_run.evil"]
    (run / ".hydra/config.yaml").write_text(yaml.safe_dump(config))
    for prog in TOOLS:
        result = tool(prog, f"run={run}", *TOOLS[prog](run), cwd=tmp_path)
        assert result.returncode == 2 and "is not allowed" in one_line_error(result), result.stderr
    assert not (tmp_path / "pwned").exists()


def test_a_stored_config_is_not_resolved_against_the_environment(tmp_path, finished):
    run = tmp_path / "envrun"
    shutil.copytree(finished, run)
    config = yaml.safe_load((run / ".hydra/config.yaml").read_text())
    config["data"]["root"] = "${oc.env:NNRUN_TEST_SECRET}"
    (run / ".hydra/config.yaml").write_text(yaml.safe_dump(config))
    env = clean_env(NNRUN_TEST_SECRET="hunter2")
    result = tool("nnrun-eval", f"run={run}", cwd=tmp_path, env=env)
    assert result.returncode == 2 and "resolver" in one_line_error(result)
    assert not any("hunter2" in p.read_text(errors="ignore") for p in run.rglob("*") if p.is_file())


def test_a_crafted_input_shape_is_refused_before_the_model_is_built(tmp_path, finished):
    run = tmp_path / "big"
    shutil.copytree(finished, run)
    prep = yaml.safe_load((run / "preprocessing.json").read_text())
    prep["input_shape"] = [1, 200000, 200000]  # a 40-billion-input first layer
    (run / "preprocessing.json").write_text(json.dumps(prep))
    result = tool("nnrun-eval", f"run={run}", cwd=tmp_path)
    assert result.returncode == 2 and "is not a sample shape" in one_line_error(result)
    prep["input_shape"] = [1, 64, 64]  # a plausible size, but not the one the weights were trained on
    (run / "preprocessing.json").write_text(json.dumps(prep))
    result = tool("nnrun-eval", f"run={run}", cwd=tmp_path)
    assert result.returncode == 2 and "does not fit the model" in one_line_error(result)


def test_resume_auto_with_a_named_folder_never_takes_over_another_project(tmp_path):
    other = tmp_path / "other_project"
    other.mkdir()
    folder = killed_midway(other, LONG, epochs=2)  # an unfinished run of the same config, elsewhere
    before = tree(folder)
    mine = tmp_path / "mine"
    mine.mkdir()
    result = nnrun(
        f"hydra.run.dir={tmp_path / 'x' / 'y' / 'run'}", *LONG, "trainer.resume=auto", "trainer.epochs=2", cwd=mine
    )
    assert result.returncode == 0, result.stderr
    assert "resuming" not in result.stdout
    assert tree(folder) == before


def test_a_folder_that_holds_a_run_is_not_overwritten_by_a_preset_or_a_sweep(tmp_path, finished):
    victim = tmp_path / "victim_run"
    shutil.copytree(finished, victim)
    before = tree(victim)
    (tmp_path / "presets/experiment").mkdir(parents=True)
    (tmp_path / "presets/experiment/here.yaml").write_text(f"# @package _global_\nhydra:\n  run:\n    dir: {victim}\n")
    result = refused("--config-dir", str(tmp_path / "presets"), "experiment=here", "trainer.epochs=1", cwd=tmp_path)
    assert result.returncode == 2 and "already holds a run" in one_line_error(result)
    assert tree(victim) == before
    sweep = refused(
        "--multirun",
        "hydra.sweep.dir=sw",
        "hydra.sweep.subdir=same",
        "optimizer.lr=0.001,0.002",
        "trainer.epochs=1",
        "trainer.limit_batches=2",
        "trainer.plots=false",
        cwd=tmp_path,
    )
    assert sweep.returncode == 2 and "already holds a run" in sweep.stderr
    assert yaml.safe_load((tmp_path / "sw/same/.hydra/config.yaml").read_text())["optimizer"]["lr"] == 0.001


def test_resuming_a_hard_linked_copy_leaves_the_original_untouched(tmp_path):
    args = [*LONG, "callbacks=[default,lr_monitor]"]
    original = killed_midway(tmp_path, args, epochs=2)
    copy = tmp_path / "hardlinked"
    for path in original.rglob("*"):  # cp -al: the same files under two names
        target = copy / path.relative_to(original)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
    before = {
        p: h for p, h in ((p, hashlib.sha256(p.read_bytes()).hexdigest()) for p in original.rglob("*") if p.is_file())
    }
    saved = [copy / "checkpoints" / n for n in ("last.pt", "last.prev.pt")]
    done = torch.load(next(p for p in saved if p.exists()), weights_only=True)["epoch"]
    result = nnrun(*args, f"trainer.resume={copy}", f"trainer.epochs={done + 2}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in original.rglob("*") if p.is_file()}
    assert after == before


PRESETS = {
    "dot": "hydra:\n  job_logging:\n    handlers:\n      file:\n        mode: w\n        delay: true\n"
    "        '.': {{baseFilename: {victim}}}\n",
    "ext": "hydra:\n  job_logging:\n    root: {{level: 'ext://evilmod.LEVEL'}}\n",
    "net": "hydra:\n  job_logging:\n    handlers:\n      net: {{class: logging.handlers.DatagramHandler, host: 127.0.0.1, "
    "port: 9}}\n",
    "search": "defaults:\n  - override /hydra/sweeper: optuna\nhydra:\n  sweeper:\n    custom_search_space: evilmod.f\n",
    "storage": "defaults:\n  - override /hydra/sweeper: optuna\nhydra:\n  sweeper:\n    storage: 'sqlite:///{victim}'\n",
}


@pytest.mark.parametrize("preset", PRESETS)
def test_a_preset_cannot_reach_code_or_files_through_hydras_own_settings(tmp_path, preset):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "evilmod.py").write_text(
        f"open({str(tmp_path / 'pwned')!r}, 'w').close()\nLEVEL = 'INFO'\ndef f(cfg, trial):\n    pass\n"
    )
    (tmp_path / "cd/experiment").mkdir(parents=True)
    (tmp_path / "cd/experiment/evil.yaml").write_text("# @package _global_\n" + PRESETS[preset].format(victim=victim))
    sweep = ["--multirun", "hydra.sweeper.n_trials=1"] if preset in ("search", "storage") else []
    result = refused(
        "--config-dir",
        str(tmp_path / "cd"),
        *sweep,
        "experiment=evil",
        "trainer.epochs=1",
        "trainer.limit_batches=2",
        "trainer.plots=false",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr
    assert "not allowed" in result.stderr
    assert victim.read_text() == "precious\n" and not (tmp_path / "pwned").exists()


def test_export_never_writes_through_a_link_planted_in_the_run_folder(tmp_path, finished):
    run = tmp_path / "dl"
    shutil.copytree(finished, run)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (run / ".model.ts.tmp").symlink_to(victim)
    result = tool("nnrun-export", f"run={run}", "format=torchscript", cwd=tmp_path)
    assert result.returncode == 2 and "symbolic link" in one_line_error(result)
    assert victim.read_text() == "precious\n"


def test_a_refused_resume_leaves_the_stored_config_alone(tmp_path, finished):
    run = tmp_path / "done"
    shutil.copytree(finished, run)
    before = (run / ".hydra/config.yaml").read_bytes()
    result = nnrun(f"hydra.run.dir={run}", "trainer.resume=auto", "model=cnn", "trainer.epochs=1", cwd=tmp_path)
    assert result.returncode == 0 and "already completed" in result.stdout + result.stderr
    assert (run / ".hydra/config.yaml").read_bytes() == before
    assert tool("nnrun-eval", f"run={run}", cwd=tmp_path).returncode == 0


PLANTED_HYDRA = {
    "job_logging": "hydra:\n  job_logging:\n    version: 1\n    handlers:\n      f: {class: logging.FileHandler, "
    "filename: VICTIM, mode: w}\n    root: {handlers: [f]}\n",
    "output_subdir": "hydra:\n  output_subdir: ../../planted\n",
    "hydra_logging": "hydra:\n  hydra_logging:\n    version: 1\n    handlers:\n      f: {class: logging.FileHandler, "
    "filename: VICTIM, mode: w}\n    root: {handlers: [f]}\n",
}


@pytest.mark.parametrize("key", sorted(PLANTED_HYDRA))
@pytest.mark.parametrize("mode", ["--multirun", "--help"])
def test_a_swept_or_printed_option_that_sets_hydra_keys_is_refused_before_anything_is_written(tmp_path, key, mode):
    """A group option of a --config-dir (# @package _global_) that sets hydra's logging or output
    folder: swept (Hydra applies each job's hydra: keys before any job code), or composed only to
    print --help (Hydra configures its logging first). Refused in one line, exit 2, nothing written."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    group = tmp_path / "mine" / "planted"
    group.mkdir(parents=True)
    for option in ("a", "b"):
        (group / f"{option}.yaml").write_text(
            "# @package _global_\n" + PLANTED_HYDRA[key].replace("VICTIM", str(victim))
        )
    swept = ["+planted=a,b", f"hydra.sweep.dir={tmp_path / 'sweep'}", *FAST] if mode == "--multirun" else ["+planted=a"]
    result = refused(mode, "--config-dir", str(tmp_path / "mine"), *swept, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "not allowed" in one_line_error(result)
    assert victim.read_text() == "keep me\n"
    assert not (tmp_path / "planted").exists() and not (tmp_path / "sweep").exists()


def test_a_resume_refused_in_its_own_folder_leaves_the_runs_log_as_it_was(tmp_path):
    """Resuming the run in hydra.run.dir on other data: refused after the data loaded (its lines are
    logged by then), and the run's nnrun.log, .hydra/ and checkpoints stay as they were."""
    _, run_dir = train(tmp_path, "trainer.epochs=1", "trainer.limit_batches=2")
    before = {k: v for k, v in tree(run_dir).items() if not k.endswith(".lock")}  # the lock holds who has it
    result = refused(
        f"hydra.run.dir={run_dir}",
        "trainer.resume=auto",
        "trainer.epochs=2",
        "data.test_split=0.3",
        "trainer.plots=false",
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "the data is not what the run trained on" in one_line_error(result)
    assert {k: v for k, v in tree(run_dir).items() if not k.endswith(".lock")} == before
