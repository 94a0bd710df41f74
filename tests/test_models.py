"""Every model, optimizer, scheduler and data option composes and builds from the real configs."""

from importlib.resources import files

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import nnrun.config  # noqa: F401  (stores the schema)
from conftest import metrics, summary, train
from nnrun.models import build_model
from nnrun.callbacks import build_callbacks
from nnrun.losses import FITS, build_loss
from nnrun.optim import build_optimizer, build_scheduler


def options(group):
    return sorted(p.name[:-5] for p in files("nnrun.conf").joinpath(group).iterdir() if p.name.endswith(".yaml"))


def test_the_installed_package_ships_every_config():
    # every model the package names ships; the whole list is not pinned, so a new model needs no test edit
    assert {"cnn", "course_cnn", "course_dense", "course_dense_l2", "course_lstm", "course_text", "custom"} <= set(
        options("model")
    )
    assert {"lstm", "mlp", "sequential", "torchvision"} <= set(options("model"))
    assert options("data") == [
        "arrays",
        "cifar10",
        "csv",
        "digits",
        "fashion_mnist",
        "image_folder",
        "mnist",
        "text_csv",
        "timeseries",
    ]
    assert options("optimizer") == ["adam", "adamw", "rmsprop", "sgd"]
    assert options("scheduler") == ["cosine", "exponential", "multistep", "none", "onecycle", "plateau", "step"]
    assert options("loss") == [
        "auto",
        "bce",
        "binary_crossentropy",
        "categorical_crossentropy",
        "ce",
        "huber",
        "mae",
        "mean_absolute_error",
        "mean_squared_error",
        "mse",
        "sparse_categorical_crossentropy",
    ]
    assert options("callbacks") == [
        "csv_logger",
        "default",
        "early_stopping",
        "lr_monitor",
        "mlflow",
        "model_checkpoint",
        "none",
        "reduce_lr_on_plateau",
        "tensorboard",
        "terminate_on_nan",
        "wandb",
    ]
    assert options("experiment") == ["fashion_cnn", "fashion_fast", "fashion_lstm", "fashion_mlp"]


GROUPS = ("model", "optimizer", "scheduler", "loss", "data", "callbacks", "experiment")


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_builds(group, option):
    required = ["model.target=nnrun.models.mlp.MLP"] if option == "custom" else []  # model=custom's target: ???
    with initialize_config_module(config_module="nnrun.conf", version_base="1.3"):
        conf = compose("config", overrides=[f"{group}={option}", *required])
    plain = OmegaConf.to_container(conf, resolve=True)
    if option == "course_text":  # reads token ids: 24 per sample from a vocabulary of 100
        model = build_model(**plain["model"], input_shape=(24,), num_classes=10, vocab_size=100, task="multiclass")
        assert model(torch.zeros(2, 24, dtype=torch.long)).shape == (2, 10)
    else:
        model = build_model(**plain["model"], input_shape=(1, 28, 28), num_classes=10)
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    optimizer = build_optimizer(model.parameters(), **plain["optimizer"])
    build_scheduler(optimizer, epochs=3, steps_per_epoch=5, **plain["scheduler"])
    build_callbacks(plain["callbacks"])
    name = plain["loss"]["name"]
    build_loss(**plain["loss"], task="multiclass" if name == "auto" else FITS[name][0])


LAYERS = pytest.mark.slow(reason="a training run per model; each model trains by default, plain")


@pytest.mark.parametrize("model", ["mlp", "cnn", "lstm", "sequential"])
@pytest.mark.parametrize(
    "variant",
    [[], pytest.param(["model.batchnorm=true", "model.dropout=0.5"], marks=LAYERS)],
    ids=["plain", "bn-dropout"],
)
def test_each_model_trains_on_digits(tmp_path, model, variant):
    if model == "lstm" and variant:
        variant = ["model.cell=gru", "model.num_layers=2", "model.bidirectional=true", "model.dropout=0.5"]
    if model == "sequential" and variant:
        variant = [
            "model.layers=[{conv2d:{filters:8,kernel_size:3,padding:same}},batch_normalization,{activation:relu},"
            "{spatial_dropout2d:0.2},{bidirectional:{gru:{units:8}}},layer_normalization,{dense:{units:10}}]"
        ]
    _, run_dir = train(tmp_path, f"model={model}", *variant, "trainer.epochs=3", "~callbacks.early_stopping")
    rows = metrics(run_dir)
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert summary(run_dir)["test_accuracy"] > 0.3
