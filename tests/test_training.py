"""What the loop and its callbacks do, seen in the files a run leaves."""

import pytest
import torch

from conftest import FAST, metrics, summary, train

NO_STOP = "~callbacks.early_stopping"


@pytest.mark.slow(reason="three CNN runs; test_trust checks the same seed with trainer.deterministic=true")
def test_same_seed_gives_identical_metrics_and_weights(tmp_path):
    args = ["model=cnn", "trainer.epochs=2", "trainer.seed=7", "model.channels=[8]"]
    _, a = train(tmp_path, *args, name="a")
    _, b = train(tmp_path, *args, name="b")
    _, c = train(tmp_path, *args[:-2], "trainer.seed=8", "model.channels=[8]", name="c")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "epoch_time"} for r in rows]
    assert strip(metrics(a)) == strip(metrics(b))
    assert strip(metrics(a)) != strip(metrics(c))
    wa = torch.load(a / "checkpoints/last.pt", weights_only=True)["model"]
    wb = torch.load(b / "checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_early_stopping_stops_and_restores_the_best_epoch(tmp_path):
    # min_delta so large that nothing after the first epoch counts as an improvement.
    result, run_dir = train(
        tmp_path,
        "trainer.epochs=10",
        "trainer.limit_batches=5",  # the rule is about epochs, not how many batches make one
        "callbacks.early_stopping.patience=2",
        "callbacks.early_stopping.min_delta=100",
        "trainer.monitor=loss",
    )
    info = summary(run_dir)
    assert info["epochs"] == 3 and info["stopped_early"] is True
    assert "early stopping" in result.stdout
    # The run monitor (loss, no min_delta) picks its own best, and the test split uses it.
    assert info["best_epoch"] == min(range(3), key=lambda i: float(metrics(run_dir)[i]["loss"])) + 1


def test_removing_early_stopping_runs_every_epoch(tmp_path):
    _, run_dir = train(
        tmp_path,
        "trainer.epochs=4",
        "trainer.limit_batches=5",
        NO_STOP,
        "callbacks.model_checkpoint.save_best_only=false",
        "callbacks.model_checkpoint.filename='ep{epoch}-{val_loss:.3f}'",
    )  # quoted: braces are Hydra syntax
    assert summary(run_dir)["epochs"] == 4
    files = sorted(p.name for p in (run_dir / "checkpoints").glob("ep*.pt"))
    assert len(files) == 4 and (run_dir / "checkpoints" / "last.pt").exists()
    rows = metrics(run_dir)
    assert f"ep2-{float(rows[1]['val_loss']):.3f}.pt" in files


def test_callbacks_none_writes_no_checkpoints_but_metrics(tmp_path):
    _, run_dir = train(tmp_path, "callbacks=none", *FAST)
    assert not (run_dir / "checkpoints").exists()
    assert len(metrics(run_dir)) == 2
    assert summary(run_dir)["status"] == "completed"


def test_checkpoint_monitoring_accuracy_keeps_the_highest(tmp_path):
    _, run_dir = train(tmp_path, "trainer.epochs=4", "trainer.limit_batches=5", NO_STOP, "trainer.monitor=val_accuracy")
    info = summary(run_dir)
    assert info["mode"] == "max"
    best = max(float(r["val_accuracy"]) for r in metrics(run_dir))
    assert info["best_score"] == best
    ckpt = torch.load(run_dir / "checkpoints/best.pt", weights_only=True)
    assert ckpt["metrics"]["val_accuracy"] == best


SCHEDULE = pytest.mark.slow(reason="a training run per schedule; test_features sets the same lr column by default")


@pytest.mark.parametrize(
    "scheduler,expected",
    [
        pytest.param(
            ["scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.5"],
            [1e-3, 5e-4, 2.5e-4],
            marks=SCHEDULE,
        ),
        pytest.param(["scheduler=cosine"], [1e-3, 7.5e-4, 2.5e-4], marks=SCHEDULE),
        pytest.param(["scheduler=none"], [1e-3, 1e-3, 1e-3], marks=SCHEDULE),
    ],
)
def test_lr_column_shows_the_rate_each_epoch_used(tmp_path, scheduler, expected):
    _, run_dir = train(tmp_path, *scheduler, "trainer.epochs=3", "trainer.limit_batches=2", NO_STOP)
    lrs = [float(r["lr"]) for r in metrics(run_dir)]
    assert lrs == pytest.approx(expected)


def test_plateau_scheduler_cuts_the_rate_when_the_monitor_stalls(tmp_path):
    # patience 0 and a min_delta no epoch can beat: every epoch after the first is a plateau.
    _, run_dir = train(
        tmp_path,
        "scheduler=plateau",
        "scheduler.patience=0",
        "scheduler.factor=0.5",
        "scheduler.min_delta=100",
        "trainer.epochs=3",
        "trainer.limit_batches=2",
        NO_STOP,
    )
    lrs = [float(r["lr"]) for r in metrics(run_dir)]
    assert lrs == pytest.approx([1e-3, 1e-3, 5e-4])


OPTIMIZER = pytest.mark.slow(reason="a training run per optimizer; adam trains by default")


@pytest.mark.parametrize(
    "optimizer",
    [
        "adam",
        pytest.param("sgd", marks=OPTIMIZER),
        pytest.param("adamw", marks=OPTIMIZER),
        pytest.param("rmsprop", marks=OPTIMIZER),
    ],
)
def test_each_optimizer_trains(tmp_path, optimizer):
    _, run_dir = train(tmp_path, f"optimizer={optimizer}", "trainer.epochs=3", NO_STOP)
    rows = metrics(run_dir)
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])


def test_grad_clip_bounds_the_update(tmp_path):
    # SGD with a huge lr diverges without clipping (to ~1e6, still finite); a clipped run does not.
    args = [
        "optimizer=sgd",
        "optimizer.lr=5",
        "optimizer.momentum=0",
        "trainer.epochs=1",
        "callbacks=none",
        "trainer.limit_batches=10",
    ]
    _, clipped = train(tmp_path, *args, "trainer.grad_clip=0.01", name="clipped")
    _, free = train(tmp_path, *args, name="free")
    clipped_loss, free_loss = float(metrics(clipped)[0]["loss"]), float(metrics(free)[0]["loss"])
    assert clipped_loss < 3 < 1000 < free_loss


def test_limit_batches_makes_a_smoke_run(tmp_path):
    _, run_dir = train(tmp_path, "trainer.epochs=1", "trainer.limit_batches=1", "data.batch_size=16")
    # one batch of 16: the accuracy is a multiple of 1/16
    acc = float(metrics(run_dir)[0]["accuracy"])
    assert round(acc * 16, 4) == round(acc * 16)
