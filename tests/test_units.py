"""Unit tests of the core pieces, beside the CLI tests: a failure here points at a function.
Metric tallies against scikit-learn, splits, the improvement rule, the registry's checks, and a
Trainer's state round trip (a resumed Trainer ends with the same weights as one that never stopped)."""

import json
import math
import signal

import numpy as np
import pytest
import torch
from torch import nn

from nnrun.data import Data, Split, described, random_split, stratified_split
from nnrun.errors import CheckpointError, ConfigError, Interrupted
from nnrun.models import Hooks, hooks
from nnrun.registry import Registry
from nnrun.train.engine import Engine
from nnrun.monitor import improved, resolve_mode
from nnrun.train.metrics import Tally
from nnrun.train.trainer import Settings, Trainer


def test_multiclass_tally_matches_scikit_learn():
    from sklearn.metrics import accuracy_score, confusion_matrix

    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(200, 4, generator=g), torch.randint(0, 4, (200,), generator=g)
    tally = Tally("multiclass", "cpu", 4)
    for i in range(0, 200, 64):  # batches, a short last one
        tally.update(logits[i : i + 64], y[i : i + 64])
    predicted = logits.argmax(1)
    assert tally.result()["accuracy"] == pytest.approx(accuracy_score(y, predicted))
    assert tally.confusion().tolist() == confusion_matrix(y, predicted, labels=range(4)).tolist()


def test_binary_and_regression_tallies_match_scikit_learn():
    from sklearn.metrics import f1_score, mean_absolute_error, precision_score, r2_score, recall_score

    g = torch.Generator().manual_seed(1)
    scores, y = torch.randn(150, generator=g), torch.randint(0, 2, (150,), generator=g).float()
    tally = Tally("binary", "cpu", 2)
    tally.update(scores, y)
    got, predicted = tally.result(), (scores > 0).long()
    assert got["precision"] == pytest.approx(precision_score(y, predicted))
    assert got["recall"] == pytest.approx(recall_score(y, predicted))
    assert got["f1"] == pytest.approx(f1_score(y, predicted))
    values, target = torch.randn(90, generator=g), torch.randn(90, generator=g)
    tally = Tally("regression", "cpu")
    tally.update(values[:50], target[:50])
    tally.update(values[50:], target[50:])
    got = tally.result()
    assert got["mae"] == pytest.approx(mean_absolute_error(target, values), rel=1e-6)
    assert got["rmse"] == pytest.approx(math.sqrt(((values - target) ** 2).mean().item()), rel=1e-6)
    assert got["r2"] == pytest.approx(r2_score(target, values), rel=1e-5)


def test_a_tally_resumed_from_its_state_adds_up_as_one():
    g = torch.Generator().manual_seed(2)
    logits, y = torch.randn(100, 3, generator=g), torch.randint(0, 3, (100,), generator=g)
    whole = Tally("multiclass", "cpu", 3)
    whole.update(logits, y)
    first = Tally("multiclass", "cpu", 3)
    first.update(logits[:40], y[:40])
    second = Tally("multiclass", "cpu", 3, state=first.state())
    second.update(logits[40:], y[40:])
    assert second.result() == whole.result() and second.n == 100


def test_stratified_split_keeps_every_class_on_both_sides_and_is_seeded():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    kept, held = stratified_split(y, 0.2, seed=7, key="data.val_split")
    assert sorted(torch.cat([kept, held]).tolist()) == list(range(100))  # a partition
    assert torch.bincount(y[held]).tolist() == [10, 6, 4]  # 20% of each class
    again = stratified_split(y, 0.2, seed=7, key="data.val_split")
    assert torch.equal(held, again[1])
    with pytest.raises(ConfigError, match="cannot hold out class 1"):
        stratified_split(torch.tensor([0, 0, 0, 1]), 0.5, seed=0, key="data.val_split")


def test_random_split_holds_out_at_least_one_and_refuses_all():
    kept, held = random_split(10, 0.01, seed=0, key="data.test_split")
    assert len(held) == 1 and len(kept) == 9
    with pytest.raises(ConfigError, match="leaves nothing to train on"):
        random_split(3, 1.0, seed=0, key="data.test_split")


@pytest.mark.parametrize(
    "current,best,mode,delta,expected",
    [
        (0.5, None, "min", 0.0, True),
        (0.4, 0.5, "min", 0.0, True),
        (0.5, 0.5, "min", 0.0, False),
        (0.45, 0.5, "min", 0.1, False),
        (0.6, 0.5, "max", 0.0, True),
        (float("nan"), None, "min", 0.0, False),
        (float("nan"), 0.5, "max", 0.0, False),
    ],
)
def test_the_improvement_rule(current, best, mode, delta, expected):
    assert improved(current, best, mode, delta) is expected


def test_mode_auto_follows_the_metric_name():
    assert resolve_mode("val_accuracy", "auto", "k") == "max" and resolve_mode("val_loss", "auto", "k") == "min"
    with pytest.raises(ConfigError, match="k=up is not one of auto, min, max"):
        resolve_mode("val_loss", "up", "k")


def test_the_registry_names_unknown_entries_and_options():
    things = Registry("model")

    @things.register("wide")
    def wide(input_shape, num_classes, width=8):
        return width

    assert things.build("wide", (1,), 2, width=16) == 16
    with pytest.raises(ConfigError, match=r"model.name=wid is not known \(did you mean wide\?\)"):
        things.get("wid")
    with pytest.raises(ConfigError, match=r"model.widht is not an option .* \(did you mean width\?\)"):
        things.build("wide", (1,), 2, widht=3)
    with pytest.raises(ConfigError, match="model.width='x': model 'wide' expects an integer"):
        things.build("wide", (1,), 2, width="x")
    with pytest.raises(KeyError, match="registered twice"):
        things.register("wide")(wide)


def tiny_data() -> Data:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(96, 6, generator=g), torch.randint(0, 3, (96,), generator=g)
    return Data(
        train=Split(x[:64], y[:64]),
        val=Split(x[64:80], y[64:80]),
        test=Split(x[80:], y[80:]),
        batch_size=16,
        input_shape=(6,),
        num_classes=3,
        task="multiclass",
        classes=["a", "b", "c"],
        transform=None,
    )


def trainer(epochs: int) -> Trainer:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    model.penalty = None
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    return Trainer(
        Engine(model, "cpu"),
        optimizer,
        None,
        [],
        (nn.CrossEntropyLoss(), nn.CrossEntropyLoss()),
        Settings(epochs=epochs, seed=5),
    )


def test_a_trainer_state_round_trip_continues_bit_for_bit():
    data = tiny_data()
    whole = trainer(4)
    whole.fit(data)
    first = trainer(4)  # stopped by a signal after epoch 2, as Ctrl-C would
    first.outputs.stop = lambda: signal.SIGTERM if first.history.epoch >= 2 else None
    with pytest.raises(Interrupted):
        first.fit(data)
    state = first.state_dict()
    resumed = trainer(4)
    resumed.load_state_dict(state)
    resumed.fit(data)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [log["loss"] for log in resumed.history.logs] == [log["loss"] for log in whole.history.logs]
    assert resumed.history.epoch == 4 and resumed.history.best_epoch == whole.history.best_epoch
    assert np.isfinite(resumed.history.best_score)


def test_checking_a_folder_while_its_run_writes_temporary_files(tmp_path):
    """refuse_links runs before the lock, beside a live run whose .tmp files come and go (a CI
    failure: the second nnrun died with FileNotFoundError instead of 'in use')."""
    import os
    import threading

    from nnrun.runfolder import refuse_links

    (tmp_path / "checkpoints").mkdir()
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            tmp = tmp_path / "checkpoints" / f".best.pt.{i}.tmp"
            tmp.write_bytes(b"x")
            os.replace(tmp, tmp_path / "checkpoints" / "best.pt")
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(3000):
            assert refuse_links(tmp_path) == []
    finally:
        stop.set()
        thread.join()


def test_best_weights_are_kept_once_and_restored(tmp_path):
    """The trainer's best epoch and early stopping's share one copy, and a resume restores it. (A
    last.pt written before KeptWeights is another checkpoint format: refused, test_checkpoint_format.)"""
    from nnrun.callbacks import build_callbacks

    data = tiny_data()
    fitter = trainer(3)
    fitter.callbacks = build_callbacks({"early_stopping": {"patience": 5}})
    for cb in fitter.callbacks:  # csv_logger comes too: its metrics.csv goes to tmp_path
        cb.setup(fitter.model, tmp_path, fitter.save_weights, fitter.optimizer, fitter.kept)
    fitter.outputs.stop = lambda: signal.SIGTERM if fitter.history.epoch >= 2 else None
    with pytest.raises(Interrupted):
        fitter.fit(data)
    best = fitter.history.best_epoch
    assert fitter.kept.epochs == {"best": best, "early_stopping": best} and list(fitter.kept.weights) == [best]
    state = fitter.state_dict()
    kept = state["kept"]
    resumed = trainer(3)
    resumed.load_state_dict(state)
    assert resumed.kept.epochs["best"] == best
    assert all(torch.equal(resumed.kept.weights[best][k], kept["weights"][best][k]) for k in kept["weights"][best])
    resumed.model.load_state_dict({k: torch.zeros_like(v) for k, v in resumed.model.state_dict().items()})
    assert resumed.restore_best() == best
    assert torch.equal(resumed.model.state_dict()["0.weight"], kept["weights"][best]["0.weight"])


@pytest.mark.parametrize(
    "damage",
    [
        lambda kept: kept["epochs"].update(early_stopping=99),  # an epoch with no weights
        lambda kept: next(iter(kept["weights"].values())).update({"0.weight": torch.zeros(3, 3)}),  # wrong shape
        lambda kept: next(iter(kept["weights"].values()))["0.weight"].fill_(float("nan")),  # not finite
        lambda kept: kept.pop("epochs"),
    ],
    ids=["missing_epoch", "wrong_shape", "nan", "no_epochs"],
)
def test_damaged_kept_weights_are_refused_before_training(damage):
    data = tiny_data()
    first = trainer(2)
    first.fit(data)
    state = first.state_dict()
    damage(state["kept"])
    resumed = trainer(4)
    with pytest.raises(CheckpointError, match="kept weights"):
        resumed.load_state_dict(state)


def test_a_sweep_keeps_hydra_group_overrides_out_of_its_swept_keys():
    from nnrun.argv import swept

    args = ["--multirun", "hydra/launcher=parallel", "+hydra.x=1", "trainer.seed=1,2", "trainer.resume=auto"]
    assert swept(args) == ["trainer.seed=1,2"]


def test_evaluation_falls_back_to_the_training_batch_when_a_bigger_one_runs_out_of_memory():
    """Validation runs in batches of 4 x data.batch_size; one that a GPU cannot hold (raised here
    by a model that holds at most 16 samples, as a full GPU would) falls back to data.batch_size
    for the rest of the run, with the same scores."""
    from nnrun.train.loop import evaluate

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(6, 3)

        def forward(self, x):
            if len(x) > 16:
                raise torch.OutOfMemoryError("CUDA out of memory (stand-in)")
            return self.linear(x)

    data = tiny_data()  # batch_size 16: evaluation tries 64 first, on the 64 training samples
    model = Small()
    scores = evaluate(model, data, data.train, nn.CrossEntropyLoss(), "cpu")
    assert data.eval_batches == 1
    data.eval_batches = 1
    assert evaluate(model, data, data.train, nn.CrossEntropyLoss(), "cpu") == scores
    data.batch_size = 32  # now even the training batch is too big: the error is the model's
    with pytest.raises(torch.OutOfMemoryError):
        evaluate(model, data, data.train, nn.CrossEntropyLoss(), "cpu")


@pytest.mark.parametrize(
    "stored",
    [  # preprocessing.json's "transform" of each kind, as nnrun writes it (a public file: keys and order)
        {"kind": "standardize", "mean": 4.8, "std": 6.1},
        {"kind": "standardize", "mean": 0.5, "std": 0.25, "data_format": "channels_last"},
        {
            "kind": "standardize_features",
            "features": ["a"],
            "mean": [1.0],
            "std": [2.0],
            "window": 8,
            "horizon": 1,
            "target": "a",
        },
        {
            "kind": "standardize_features",
            "features": ["0", "1"],
            "mean": [0.0, 1.0],
            "std": [1.0, 2.0],
            "layout": "table",
        },
        {
            "kind": "tabular",
            "target": "y",
            "impute": "mean",
            "columns": [{"name": "age", "kind": "numeric", "mean": 40.0, "std": 9.0, "fill": 40.0}],
        },
        {
            "kind": "tokens",
            "lowercase": True,
            "max_len": 20,
            "padding": "pre",
            "truncating": "pre",
            "pad_id": 0,
            "unknown_id": 1,
            "vocabulary": ["good", "bad"],
        },
    ],
    ids=["standardize", "arrays_images", "timeseries", "arrays_table", "tabular", "tokens"],
)
def test_a_stored_transform_reads_back_as_its_typed_description_and_writes_the_same_json(stored):
    description = described.from_json(stored)
    assert type(description).kind == stored["kind"]
    assert json.dumps(description.as_json()) == json.dumps(stored)


def test_a_models_hooks_are_found_in_one_place_with_their_defaults():
    assert hooks(nn.Linear(2, 2)) == Hooks()

    class Tuned(nn.Linear):
        notes = ["a note"]

        def load_pretrained(self):
            pass

    found = hooks(Tuned(2, 2))
    assert found.notes == ("a note",) and found.load_pretrained is not None and found.train_stage is None
