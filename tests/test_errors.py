"""Bad input: one line naming the key, exit code 2, no traceback, nothing trained."""

from importlib.resources import files

import pytest

from conftest import clean_env, nnrun, one_line_error, refused

# every option of the model group, as the one line lists them (not pinned here: a new model adds one)
MODEL_OPTIONS = ", ".join(
    sorted(p.name[:-5] for p in (files("nnrun.conf") / "model").iterdir() if p.name.endswith(".yaml"))
)

CASES = [
    # overrides, words the one line must contain
    (["optimizer.lr=abc"], ["optimizer.lr=abc", "number"]),
    (["trainer.epochs=2.5"], ["trainer.epochs=2.5", "whole number"]),
    (["optimizer=sgd", "optimizer.nesterov=maybe"], ["optimizer.nesterov=maybe", "true or false"]),
    (["callbacks.early_stopping.patience=x"], ["callbacks.early_stopping.patience", "integer"]),
    (
        ["model=transfomer"],
        [
            "model=transfomer",
            MODEL_OPTIONS,
        ],
    ),
    (["trainer.epochs=-1"], ["trainer.epochs", "-1", ">= 0"]),
    (["trainer.epoch=3"], ["trainer.epoch", "did you mean epochs"]),
    (["+trainer.epoch=3"], ["trainer.epoch", "did you mean epochs"]),
    (["model.hidde=[8]"], ["model.hidde", "hidden"]),
    (["model.dropout=abc"], ["model.dropout", "number"]),
    (["model.dropout=1.5"], ["model.dropout", "0 <= dropout < 1"]),
    (["model.activation=mish"], ["model.activation", "relu"]),  # swish is one since issue 19
    (["model=cnn", "model.channels=[8,8,8,8]"], ["model.channels", "8x8"]),
    (["optimizer.momentum=0.9"], ["optimizer.momentum", "adam"]),
    (["optimizer=sgd", "optimizer.nesterov=true", "optimizer.momentum=0"], ["optimizer.nesterov"]),
    (["data.batch_size=0"], ["data.batch_size", ">= 1"]),
    (["data.val_split=1.0"], ["data.val_split"]),
    (["data.val_split=0"], ["trainer.monitor=val_loss", "monitor loss"]),
    (["trainer.device=cuda:7"], ["trainer.device=cuda:7"]),
    (["trainer.device=tpu"], ["trainer.device=tpu"]),
    (["callbacks.early_stopping.monitor=val_acc"], ["callbacks.early_stopping.monitor", "val_accuracy"]),
    (["+callbacks.early_stoping={}"], ["early_stoping", "early_stopping"]),
    (["scheduler=plateau", "scheduler.monitor=val_los"], ["scheduler.monitor=val_los"]),
    (["data=mnist", "data.download=false"], ["data.root", "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
    (["trainer.epochs=[1"], ["[1"]),
    (["loss=mse"], ["loss=mse", "multiclass", "loss=ce"]),
    (["loss=ce", "loss.label_smoothing=1.5"], ["loss.label_smoothing"]),
    (["trainer.class_weight=[1,2]"], ["trainer.class_weight", "10 weights"]),
    (["model.l2=-1"], ["model.l2", ">= 0"]),
    (["trainer.accumulate=0"], ["trainer.accumulate", ">= 1"]),
    (["scheduler=onecycle", "scheduler.warmup_epochs=1"], ["scheduler.warmup_epochs", "pct_start"]),
    (["callbacks.model_checkpoint.save_top_k=3"], ["save_top_k", "{epoch}"]),
    (["imports=[no_such_module_xyz]"], ["imports", "no_such_module_xyz"]),
    (
        ["callbacks.model_checkpoint.filename='ep{epoch}-{val_acc:.2f}'"],
        ["callbacks.model_checkpoint.filename", "val_accuracy"],
    ),
]


@pytest.mark.parametrize(
    "overrides,words",
    [pytest.param(*case, id=" ".join(case[0])) for case in CASES],
)
def test_bad_input_is_refused_in_one_line(tmp_path, overrides, words):
    result = refused(
        *overrides, f"data.root={tmp_path / 'empty'}" if "data=mnist" in overrides else "trainer.seed=1", cwd=tmp_path
    )
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line_error(result)
    assert line.startswith("nnrun: error: ")
    for word in words:
        assert word in line, line
    assert not list(tmp_path.rglob("metrics.csv")), "a refused run must not train"
    assert not list(tmp_path.rglob("*.pt"))


def test_debug_switch_shows_the_traceback(tmp_path):
    result = nnrun("trainer.epochs=-1", cwd=tmp_path, env=clean_env(NNRUN_DEBUG="1"))
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_a_config_error_found_after_the_run_folder_was_made_removes_it(tmp_path):
    # issue 27: the one line says everything; an empty run folder with a traceback helped nobody
    result = refused(f"hydra.run.dir={tmp_path / 'run'}", "trainer.epochs=-1", cwd=tmp_path)
    assert result.returncode == 2 and "trainer.epochs" in result.stderr
    assert not (tmp_path / "run").exists()
