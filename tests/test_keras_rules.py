"""early_stopping and reduce_lr_on_plateau against Keras 3's own rules: sequences of monitored
values fed to the callbacks, compared with what keras.callbacks.EarlyStopping and
ReduceLROnPlateau did with the same values (Keras 3.15.1, torch backend; the tables were printed
by feeding Keras itself, epochs 1-based here)."""

import math

import numpy as np
import pytest
import torch

from nnrun.callbacks import CALLBACKS

nan = math.nan

# name, values, options, (stop epoch or None, best epoch, best, wait at the end)
EARLY = [
    ("improves every epoch", [5, 4, 3, 2, 1, 0.5], dict(patience=2), (None, 6, 0.5, 0)),
    ("plateau", [1, 2, 2, 2, 2], dict(patience=2), (3, 1, 1, 2)),
    ("patience 0", [1, 1.5, 0.5], dict(patience=0), (2, 1, 1, 1)),
    ("min_delta edge", [1.0, 0.75, 0.5, 0.25], dict(patience=1, min_delta=0.25), (2, 1, 1.0, 1)),
    ("min_delta just enough", [1.0, 0.5, 0.125], dict(patience=1, min_delta=0.25), (None, 3, 0.125, 0)),
    ("baseline above values", [0.5, 0.4, 0.3, 0.2], dict(patience=2, baseline=1.0), (None, 4, 0.2, 0)),
    ("baseline below values", [5, 4, 3, 2, 1], dict(patience=2, baseline=0.01), (None, 5, 1, 5)),
    ("baseline reached late", [5, 4, 0.005, 0.004, 0.006, 0.007], dict(patience=2, baseline=0.01), (6, 4, 0.004, 2)),
    ("nan in the middle", [1, nan, nan, 0.5], dict(patience=2), (3, 1, 1, 2)),
    ("nan first", [nan, 1, 0.5, 0.2], dict(patience=2), (3, 1, nan, 2)),
    ("start_from_epoch", [1, 2, 3, 4, 5, 6], dict(patience=1, start_from_epoch=2), (4, 3, 3, 1)),
    ("max mode", [0.5, 0.6, 0.6, 0.55, 0.7], dict(patience=2, mode="max"), (4, 2, 0.6, 2)),
]

# name, values, options, the rate after each epoch (from 1.0)
PLATEAU = [
    ("plateau", [1] * 7, dict(patience=2, factor=0.5, min_delta=0), [1, 1, 0.5, 0.5, 0.25, 0.25, 0.125]),
    (
        "cooldown",
        [1] * 8,
        dict(patience=1, factor=0.5, cooldown=2, min_delta=0),
        [1, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125, 0.0625],
    ),
    ("min_lr", [1] * 6, dict(patience=1, factor=0.1, min_lr=0.05, min_delta=0), [1, 0.1, 0.05, 0.05, 0.05, 0.05]),
    (
        "cooldown with min_lr",
        [1] * 8,
        dict(patience=1, factor=0.5, cooldown=1, min_lr=0.3, min_delta=0),
        [1, 0.5, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3],
    ),
    ("improving", [5, 4, 3, 2, 1], dict(patience=1, factor=0.5, min_delta=0), [1, 1, 1, 1, 1]),
    ("default min_delta", [1.0, 0.99995, 0.9999, 0.9998], dict(patience=1, factor=0.5), [1, 0.5, 0.25, 0.25]),
    ("nan", [1, nan, nan, 0.5, nan], dict(patience=1, factor=0.5), [1, 0.5, 0.25, 0.25, 0.125]),
    ("patience 0", [1, 1, 0.5, 0.5], dict(patience=0, factor=0.5, min_delta=0), [1, 0.5, 0.5, 0.25]),
]


def same(a, b) -> bool:
    return (math.isnan(a) and math.isnan(b)) if isinstance(a, float) and math.isnan(a) else a == pytest.approx(b)


@pytest.mark.parametrize("name, values, options, expected", EARLY, ids=[row[0] for row in EARLY])
def test_early_stopping_follows_keras(name, values, options, expected):
    callback = CALLBACKS.build("early_stopping", **{"restore_best_weights": False, **options})
    callback.setup(torch.nn.Linear(1, 1), ".", None)
    callback.on_train_begin({})
    stop = None
    for epoch, value in enumerate(values, start=1):
        callback.on_epoch_end(epoch, {"val_loss": value})
        if callback.stop_training:
            stop = epoch
            break
    assert (stop, callback.best_epoch, callback.wait) == (expected[0], expected[1], expected[3])
    assert same(callback.best, expected[2])


@pytest.mark.parametrize("name, values, options, rates", PLATEAU, ids=[row[0] for row in PLATEAU])
def test_reduce_lr_on_plateau_follows_keras(name, values, options, rates):
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    callback = CALLBACKS.build("reduce_lr_on_plateau", **options)
    callback.setup(model, ".", None, optimizer)
    callback.on_train_begin({})
    seen = []
    for epoch, value in enumerate(values, start=1):
        callback.on_epoch_end(epoch, {"val_loss": value})
        seen.append(optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx(rates)


def test_a_factor_of_one_or_more_is_refused_as_keras_does():
    from nnrun.errors import ConfigError

    with pytest.raises(ConfigError, match="factor=1.5"):
        CALLBACKS.build("reduce_lr_on_plateau", factor=1.5)


# ---- what a Keras user types, through the real CLI ----

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from conftest import metrics, nnrun, one_line_error, refused, summary, train  # noqa: E402

QUICK = ["trainer.epochs=3", "trainer.limit_batches=4"]


def weights_of(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "model.safetensors")


def last_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]


def equal_weights(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "overrides, tested",
    [
        (["callbacks.early_stopping.restore_best_weights=false"], "last"),
        (["~callbacks.early_stopping", "trainer.test_weights=last"], "last"),
        (["~callbacks.early_stopping"], "best"),
    ],
    ids=["restore_best_weights_false", "test_weights_last", "test_weights_best"],
)
def test_the_tested_and_exported_weights_are_the_ones_asked_for(tmp_path, overrides, tested):
    # lr high enough that the last epoch is not the best one: the choice shows
    _, run_dir = train(tmp_path, *QUICK, "optimizer.lr=0.3", *overrides)
    done = summary(run_dir)
    assert done["tested_weights"] == tested
    exported, last = weights_of(run_dir), last_checkpoint(run_dir)
    if tested == "last":
        assert done["tested_epoch"] == 3 and equal_weights(exported, last)
    else:
        assert done["tested_epoch"] == done["best_epoch"]
        assert equal_weights(exported, last) == (done["best_epoch"] == 3)


def test_batch_norm_with_a_last_batch_of_one_sample_trains(tmp_path):
    # the default data's training split holds 1295 samples: 2 x 647 + 1
    result, run_dir = train(tmp_path, "model.batchnorm=true", "data.batch_size=647", "trainer.epochs=1")
    assert "leaves a last batch of one sample" in result.stdout + result.stderr + (run_dir / "nnrun.log").read_text()
    assert len(metrics(run_dir)) == 1


def regression_table(tmp_path) -> list:
    import pandas as pd

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": x @ [1.0, -2.0, 0.5]})
    frame.to_csv(tmp_path / "r.csv", index=False)
    return ["data=csv", f"data.path={tmp_path / 'r.csv'}", "data.target=y"]


@pytest.mark.parametrize(
    "loss", ["sparse_categorical_crossentropy", "categorical_crossentropy", "mean_squared_error", "mean_absolute_error"]
)
def test_keras_loss_names_train(tmp_path, loss):
    data = regression_table(tmp_path) if loss.startswith("mean") else []
    _, run_dir = train(tmp_path, *data, f"loss={loss}", "trainer.epochs=1", "trainer.limit_batches=2")
    assert summary(run_dir)["status"] == "completed"
    assert summary(run_dir)["epochs"] == 1


def test_binary_crossentropy_and_a_keras_class_weight_mapping(tmp_path):
    import pandas as pd

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": (x[:, 0] > 0).astype(int)})
    frame.to_csv(tmp_path / "t.csv", index=False)
    data = ["data=csv", f"data.path={tmp_path / 't.csv'}", "data.target=y", "trainer.epochs=1"]
    _, run_dir = train(tmp_path, *data, "loss=binary_crossentropy", "trainer.class_weight={0: 1, 1: 0}")
    assert summary(run_dir)["status"] == "completed"
    bad = refused(*data, "trainer.class_weight={7: 1}", f"hydra.run.dir={tmp_path / 'bad'}", cwd=tmp_path)
    assert bad.returncode == 2 and "7 is not a class" in one_line_error(bad)


def test_softmax_as_a_hidden_activation_says_where_softmax_belongs(tmp_path):
    result = refused("model.activation=softmax", *QUICK, cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert "belongs to a classifier's output" in line and "model.activation is for the hidden layers" in line


def test_a_completed_run_continues_for_more_epochs_in_either_form(tmp_path):
    base = ["~callbacks.early_stopping", "trainer.limit_batches=3", "trainer.plots=false"]
    for form in ("folder", "last.pt"):
        run_dir = tmp_path / form
        first = nnrun(f"hydra.run.dir={run_dir}", *base, "trainer.epochs=2", cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        target = run_dir if form == "folder" else run_dir / "checkpoints" / "last.pt"
        more = nnrun(*base, f"trainer.resume={target}", "trainer.epochs=4", cwd=tmp_path)
        assert more.returncode == 0, more.stderr
        done = summary(run_dir)
        assert [row["epoch"] for row in metrics(run_dir)] == ["1", "2", "3", "4"]
        assert done["epochs"] == 4 and "trainer.epochs=4" in done["command"] and "resume" not in done["command"]
        again = nnrun(*base, f"trainer.resume={target}", "trainer.epochs=4", cwd=tmp_path)
        assert again.returncode == 0 and "already completed its 4 epochs" in again.stdout + again.stderr
        assert [row["epoch"] for row in metrics(run_dir)] == ["1", "2", "3", "4"]


def test_a_run_that_stopped_early_continues_only_when_asked(tmp_path):
    run_dir = tmp_path / "run"
    stop = ["callbacks.early_stopping.patience=0", "callbacks.early_stopping.min_delta=100", "trainer.plots=false"]
    command = [*stop, "trainer.limit_batches=2", "trainer.epochs=5"]
    first = nnrun(f"hydra.run.dir={run_dir}", *command, cwd=tmp_path)
    assert first.returncode == 0 and summary(run_dir)["stopped_early"] and summary(run_dir)["epochs"] == 2
    # the same command again (a requeue wrapper's rerun): nothing to do, as for any completed run
    same = nnrun(f"hydra.run.dir={run_dir}", *command, "trainer.resume=auto", cwd=tmp_path)
    assert same.returncode == 0 and "already completed" in same.stdout + same.stderr
    refusal = refused(*stop, "trainer.limit_batches=2", f"trainer.resume={run_dir}", "trainer.epochs=6", cwd=tmp_path)
    assert refusal.returncode == 2 and "trainer.continue_stopped=true" in one_line_error(refusal)
    assert summary(run_dir)["status"] == "completed"  # a refusal changes nothing
    more = nnrun(
        "callbacks.early_stopping.patience=1",
        "callbacks.early_stopping.min_delta=100",
        "trainer.plots=false",
        "trainer.limit_batches=2",
        f"trainer.resume={run_dir}",
        "trainer.epochs=6",
        "trainer.continue_stopped=true",
        cwd=tmp_path,
    )
    assert more.returncode == 0, more.stderr
    assert len(metrics(run_dir)) > 2


@pytest.mark.parametrize(
    "weights, words",
    [("{true: 4}", "True is not a class"), ("{0: 1, 1: 5}", "both name class '1'"), ("{1: .inf}", "finite")],
    ids=["bool_key", "one_class_twice", "infinite"],
)
def test_a_class_weight_mapping_that_cannot_mean_one_thing_is_refused(tmp_path, weights, words):
    import pandas as pd

    # labels 1 and 2: index 0 is the class named "1", so {0: 1, 1: 5} names it twice
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 2))
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "y": np.where(x[:, 0] > 0, 2, 1)}).to_csv(tmp_path / "t.csv", index=False)
    data = ["data=csv", "data.path=t.csv", "data.target=y"]
    result = refused(*data, f"trainer.class_weight={weights}", *QUICK, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert words in one_line_error(result)


def test_batch_norm_with_batches_of_one_is_refused(tmp_path):
    result = refused("model.batchnorm=true", "data.batch_size=1", *QUICK, cwd=tmp_path)
    assert result.returncode == 2 and "data.batch_size=1" in one_line_error(result)


def test_a_source_checkout_finds_its_configs_without_an_install(tmp_path):
    """python -m nnrun from the repository root, with no nnrun installed: the checkout's nnrun/
    has no conf/ inside; nnrun.conf is the checkout's conf/."""
    import site

    root = Path(__file__).resolve().parents[1]
    packages = [p for p in site.getsitepackages() if Path(p).is_dir()]
    # -S: no site-packages processing (no editable-install finder, no installed nnrun), then
    # site-packages added by hand for torch and the rest
    code = (
        f"import sys; sys.path[:0] = [{str(root)!r}]; sys.path += {packages!r}; "
        f"import runpy; sys.argv = ['nnrun', 'trainer.epochs=0', 'hydra.run.dir={tmp_path / 'run'}']; "
        f"runpy.run_module('nnrun', run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert result.returncode == 0, result.stderr[-1500:]
    assert summary(tmp_path / "run")["status"] == "summary_only"


SQUASHED = """
from torch import nn
from nnrun.models import MODELS

@MODELS.register("squashed")
class Squashed(nn.Sequential):
    def __init__(self, input_shape, num_classes, **options):  # options: model/mlp.yaml's keys, unused
        super().__init__(nn.Flatten(), nn.Linear(input_shape[-1], 8), nn.ReLU(), nn.Linear(8, 1), nn.Sigmoid())
"""


def test_a_bounded_output_on_a_regression_model_is_refused_naming_the_layer(tmp_path):
    (tmp_path / "my_models.py").write_text(SQUASHED)
    result = refused("imports=[my_models]", "model.name=squashed", *regression_table(tmp_path), *QUICK, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = one_line_error(result)
    assert "Sigmoid" in line and "layer 4" in line and "regression" in line


def test_the_overfitting_hint_does_not_suggest_early_stopping_to_a_run_that_stopped_early():
    from nnrun.report.card import diagnose

    logs = [{"loss": 1.0 - 0.2 * i, "val_loss": v} for i, v in enumerate([0.9, 0.5, 0.7, 0.8])]
    assert "early stopping" in diagnose(logs, chance=2.3)[0]
    assert "early stopping" not in diagnose(logs, chance=2.3, stopped_early=True)[0]


def test_a_whole_run_schedule_is_not_stretched_over_more_epochs(tmp_path):
    run_dir = tmp_path / "run"
    base = ["~callbacks.early_stopping", "trainer.limit_batches=2", "trainer.plots=false", "scheduler=cosine"]
    assert nnrun(f"hydra.run.dir={run_dir}", *base, "trainer.epochs=2", cwd=tmp_path).returncode == 0
    for again in (base, base[:-1]):  # the saved run's schedule decides, whatever this command says
        more = refused(*again, f"trainer.resume={run_dir}", "trainer.epochs=4", cwd=tmp_path)
        assert more.returncode == 2 and "scheduler=cosine" in one_line_error(more)
        assert len(metrics(run_dir)) == 2
        assert summary(run_dir)["status"] == "completed" and summary(run_dir)["epochs"] == 2  # left as it was


def test_a_run_continued_by_a_relative_folder_keeps_its_absolute_path_and_leaves_no_empty_folder(tmp_path):
    base = ["~callbacks.early_stopping", "trainer.limit_batches=2", "trainer.plots=false"]
    assert nnrun("hydra.run.dir=run", *base, "trainer.epochs=1", cwd=tmp_path).returncode == 0
    more = nnrun(*base, "trainer.resume=run", "trainer.epochs=2", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert summary(tmp_path / "run")["run_dir"] == str(tmp_path / "run")
    assert f"run folder: {tmp_path / 'run'}" in more.stdout + more.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*"))


def test_early_stopping_says_when_it_restores_an_earlier_epoch_without_stopping(caplog):
    from nnrun.train.trainer import KeptWeights

    model = torch.nn.Linear(1, 1)
    callback = CALLBACKS.build("early_stopping", patience=5)
    callback.setup(model, ".", None, None, KeptWeights(model))
    callback.on_train_begin({})
    for epoch, value in enumerate([1.0, 0.5, 0.7], start=1):
        callback.on_epoch_end(epoch, {"val_loss": value})
    with caplog.at_level("INFO"):
        callback.on_train_end({})
    assert not callback.stop_training and "restored the weights of epoch 2" in caplog.text
