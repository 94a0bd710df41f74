"""Training features from Keras courses: schedulers, accumulation, L1/L2, class weights, label
smoothing and the callbacks beyond the defaults, seen in the files a run writes."""

import csv
import math

import pytest
import torch

from conftest import metrics, nnrun, summary, train, write_mnist, yaml_config

NO_STOP = "~callbacks.early_stopping"
QUICK = ["trainer.limit_batches=4", NO_STOP]


def lrs(run_dir) -> list:
    return [float(r["lr"]) for r in metrics(run_dir)]


def batch_lrs(run_dir) -> list:
    with open(run_dir / "lr.csv", newline="") as f:
        return [float(r["lr"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize(
    "scheduler,expected",
    [
        (["scheduler=multistep", "scheduler.milestones=[1,2]"], [1e-3, 1e-4, 1e-5]),
        pytest.param(
            ["scheduler=exponential", "scheduler.gamma=0.5"],
            [1e-3, 5e-4, 2.5e-4],
            marks=pytest.mark.slow(reason="a training run per case; multistep sets the same column by default"),
        ),
    ],
)
def test_epoch_schedulers_set_the_lr_column(tmp_path, scheduler, expected):
    _, run_dir = train(tmp_path, *scheduler, "trainer.epochs=3", *QUICK)
    assert lrs(run_dir) == pytest.approx(expected)


def test_cosine_warmup_climbs_within_the_first_epoch_then_decays(tmp_path):
    _, run_dir = train(
        tmp_path,
        "scheduler=cosine",
        "scheduler.warmup_epochs=1",
        "trainer.epochs=3",
        "callbacks=[default,lr_monitor]",
        *QUICK,
    )
    per_batch = batch_lrs(run_dir)
    assert len(per_batch) == 12  # 3 epochs x 4 batches
    assert per_batch[:4] == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4])  # linear warmup over 4 steps
    assert per_batch[4] == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(per_batch[4:], per_batch[5:]))  # then only down


def test_onecycle_peaks_at_max_lr_and_ends_far_below(tmp_path):
    _, run_dir = train(
        tmp_path,
        "scheduler=onecycle",
        "scheduler.max_lr=0.01",
        "trainer.epochs=2",
        "callbacks=[default,lr_monitor]",
        "trainer.limit_batches=10",
        NO_STOP,
    )
    per_batch = batch_lrs(run_dir)
    assert per_batch[0] == pytest.approx(0.01 / 25)
    assert max(per_batch) == pytest.approx(0.01, rel=0.05)
    assert per_batch[-1] < 0.01 / 25
    assert lrs(run_dir)[0] == pytest.approx(0.01 / 25)


def test_accumulating_two_half_batches_equals_one_full_batch(tmp_path):
    args = ["model.dropout=0", "trainer.epochs=2", NO_STOP, "callbacks.model_checkpoint.save_best_only=false"]
    _, full = train(tmp_path, *args, "data.batch_size=32", "trainer.limit_batches=6", name="full")
    _, halves = train(
        tmp_path, *args, "data.batch_size=16", "trainer.accumulate=2", "trainer.limit_batches=12", name="halves"
    )
    a = torch.load(full / "checkpoints/last.pt", weights_only=True)["model"]
    b = torch.load(halves / "checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    for row_a, row_b in zip(metrics(full), metrics(halves)):
        assert float(row_a["loss"]) == pytest.approx(float(row_b["loss"]), rel=1e-4)


def test_accumulation_steps_the_scheduler_once_per_optimizer_step(tmp_path):
    _, run_dir = train(
        tmp_path,
        "scheduler=onecycle",
        "trainer.accumulate=2",
        "trainer.epochs=1",
        "callbacks=[default,lr_monitor]",
        "trainer.limit_batches=8",
        NO_STOP,
    )
    per_batch = batch_lrs(run_dir)
    assert len(per_batch) == 8
    assert all(per_batch[i] == per_batch[i + 1] for i in range(0, 8, 2))  # pairs share one step
    assert len(set(per_batch)) == 4


def weight_norm(run_dir) -> float:
    state = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["model"]
    return sum(float(t.square().sum()) for t in state.values() if t.dim() > 1)


PENALTY = pytest.mark.slow(reason="two training runs per case; model.l2 shrinks the weights by default")


@pytest.mark.parametrize(
    "optimizer,penalty",
    [
        ([], "model.l2=0.01"),
        pytest.param(
            ["optimizer=adamw"], "optimizer.weight_decay=5", marks=PENALTY
        ),  # decoupled: w *= 1 - lr * 5 each step, vs no decay
        pytest.param([], "model.l1=0.001", marks=PENALTY),
    ],
)
def test_l1_l2_and_weight_decay_shrink_the_weights(tmp_path, optimizer, penalty):
    args = ["trainer.epochs=3", NO_STOP, *optimizer]
    _, plain = train(tmp_path, *args, *(["optimizer.weight_decay=0"] if optimizer else []), name="plain")
    _, penalised = train(tmp_path, *args, penalty, name="penalised")
    assert weight_norm(penalised) < 0.8 * weight_norm(plain)


def test_class_weight_pulls_predictions_to_the_heavy_class(tmp_path):
    heavy = "[" + ",".join(["0.01"] * 9 + ["1"]) + "]"
    _, run_dir = train(tmp_path, f"trainer.class_weight={heavy}", "trainer.epochs=3", NO_STOP)
    matrix = summary(run_dir)["confusion_matrix"]
    predicted_9 = sum(row[9] for row in matrix)
    assert predicted_9 > 0.5 * sum(map(sum, matrix))
    assert all(math.isfinite(float(r["loss"])) for r in metrics(run_dir))


@pytest.mark.slow(
    reason="two training runs; class weights by default: test_class_weight_pulls_predictions_to_the_heavy_class"
)
def test_balanced_class_weight_runs_and_keeps_validation_unweighted(tmp_path):
    _, weighted = train(tmp_path, "trainer.class_weight=balanced", "trainer.epochs=2", *QUICK, name="w")
    _, plain = train(tmp_path, "trainer.epochs=2", *QUICK, name="p")
    # digits are nearly balanced: weights near 1, so nearly the same run
    for a, b in zip(metrics(weighted), metrics(plain)):
        assert float(a["val_loss"]) == pytest.approx(float(b["val_loss"]), rel=0.05)


def test_label_smoothing_keeps_the_loss_above_its_floor(tmp_path):
    # with 0.5 smoothing over 10 classes the best possible loss is the entropy of the target
    target = [0.55] + [0.05] * 9
    floor = -sum(p * math.log(p) for p in target)
    _, run_dir = train(tmp_path, "loss=ce", "loss.label_smoothing=0.5", "trainer.epochs=8", NO_STOP)
    rows = metrics(run_dir)
    assert float(rows[-1]["accuracy"]) > 0.8
    assert all(float(r["loss"]) > floor - 1e-3 for r in rows)


def test_a_nan_training_loss_stops_the_run_with_or_without_terminate_on_nan(tmp_path):
    # Keras's TerminateOnNaN stops at the bad batch; nnrun always does (status nan_loss, exit 1),
    # and the callback adds a stop on a NaN val_loss.
    result = nnrun(
        "hydra.run.dir=run",
        "optimizer=sgd",
        "optimizer.lr=20",
        "optimizer.momentum=0",
        "callbacks=[default,terminate_on_nan]",
        NO_STOP,
        "trainer.epochs=5",
        "trainer.plots=false",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    info = summary(tmp_path / "run")
    assert info["status"] == "nan_loss" and info["epoch"] == 1
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()  # a NaN epoch is never "best"


def test_reduce_lr_on_plateau_callback_cuts_the_rate(tmp_path):
    _, run_dir = train(
        tmp_path,
        "callbacks=[default,reduce_lr_on_plateau]",
        "trainer.epochs=3",
        *QUICK,
        "callbacks.reduce_lr_on_plateau.min_delta=100",
        "callbacks.reduce_lr_on_plateau.patience=0",
        "callbacks.reduce_lr_on_plateau.factor=0.5",
    )
    assert lrs(run_dir) == pytest.approx([1e-3, 1e-3, 5e-4])


@pytest.mark.parametrize(
    "options,epochs",
    [
        # Keras's rule: epochs that do not beat the baseline count, improving or not (min_delta=100:
        # none improves after the first), so patience=2 stops at epoch 2
        (
            [
                "callbacks.early_stopping.baseline=0.0",
                "callbacks.early_stopping.patience=2",
                "callbacks.early_stopping.min_delta=100",
            ],
            2,
        ),
        (
            [
                "callbacks.early_stopping.start_from_epoch=3",
                "callbacks.early_stopping.patience=0",
                "callbacks.early_stopping.min_delta=100",
            ],
            5,
        ),
        pytest.param(
            ["callbacks.early_stopping.patience=0", "callbacks.early_stopping.min_delta=100"],
            2,
            marks=pytest.mark.slow(reason="a training run per case; baseline and start_from_epoch run by default"),
        ),
    ],
)
def test_early_stopping_baseline_and_start_from_epoch(tmp_path, options, epochs):
    _, run_dir = train(tmp_path, *options, "trainer.epochs=8", "trainer.limit_batches=4")
    assert summary(run_dir)["epochs"] == epochs


def test_checkpoint_keeps_the_top_k_best_epochs(tmp_path):
    _, run_dir = train(
        tmp_path,
        "callbacks.model_checkpoint.save_top_k=2",
        "trainer.epochs=5",
        "callbacks.model_checkpoint.filename='ep{epoch}'",
        "callbacks.model_checkpoint.mode=max",
        "callbacks.model_checkpoint.monitor=epoch_time",
        NO_STOP,
        "trainer.limit_batches=4",
    )
    rows = metrics(run_dir)
    slowest = sorted(range(5), key=lambda i: float(rows[i]["epoch_time"]))[-2:]
    files = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
    assert files == sorted([f"ep{i + 1}.pt" for i in slowest] + ["last.pt", "last.prev.pt"])


def test_checkpoint_every_n_epochs(tmp_path):
    _, run_dir = train(
        tmp_path,
        "callbacks.model_checkpoint.every_n_epochs=2",
        "trainer.epochs=5",
        "callbacks.model_checkpoint.save_best_only=false",
        "callbacks.model_checkpoint.save_last=false",
        "callbacks.model_checkpoint.filename='ep{epoch}'",
        *QUICK,
    )
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")) == ["ep2.pt", "ep4.pt"]


def test_tensorboard_writes_event_files_with_every_epoch(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    _, run_dir = train(tmp_path, "callbacks=[default,tensorboard]", "trainer.epochs=3", *QUICK)
    events = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert {"loss/train", "loss/validation", "accuracy/validation", "lr"} <= set(events.Tags()["scalars"])
    losses = [e.value for e in events.Scalars("loss/train")]
    assert losses == pytest.approx([float(r["loss"]) for r in metrics(run_dir)])


def test_a_callback_from_the_users_own_module(tmp_path):
    (tmp_path / "my_callbacks.py").write_text(
        "from nnrun.callbacks import CALLBACKS, Callback\n\n"
        "@CALLBACKS.register('epoch_marks')\n"
        "class EpochMarks(Callback):\n"
        "    def __init__(self, mark='x'):\n"
        "        self.mark = mark\n"
        "    def on_epoch_end(self, epoch, logs):\n"
        "        with open(self.run_dir / 'marks.txt', 'a') as f:\n"
        "            f.write(f'{self.mark}{epoch} ')\n"
    )
    _, run_dir = train(tmp_path, "imports=[my_callbacks]", "+callbacks.epoch_marks.mark=e", "trainer.epochs=3", *QUICK)
    assert (run_dir / "marks.txt").read_text() == "e1 e2 e3 "


PRESET = pytest.mark.slow(reason="a training run per preset; fashion_mlp composes and trains by default")


@pytest.mark.parametrize(
    "preset",
    [
        "fashion_mlp",
        pytest.param("fashion_cnn", marks=PRESET),
        pytest.param("fashion_lstm", marks=PRESET),
    ],
)
def test_experiment_presets_run(tmp_path, preset):
    # The measured results are in the README; here each preset composes and trains on tiny files.
    root = write_mnist(tmp_path / "fashion", n_train=300, n_test=100)
    result, run_dir = train(
        tmp_path, f"experiment={preset}", f"data.root={root}", "trainer.epochs=1", "trainer.limit_batches=2"
    )
    info = summary(run_dir)
    assert info["status"] == "completed" and info["epochs"] == 1
    assert yaml_config(run_dir)["data"]["name"] == "fashion_mnist"
    assert {"fashion_mlp": "Linear", "fashion_cnn": "Conv2d", "fashion_lstm": "LSTM"}[preset] in result.stdout
