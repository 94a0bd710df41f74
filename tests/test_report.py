"""What a finished run reports: plots, the report card, and hints read from its curves."""

import math
import shlex
import struct

import pytest

from conftest import metrics, nnrun, summary, train
from nnrun.report.card import diagnose


def png_size(path) -> tuple:
    """(width, height) from a PNG's IHDR chunk; fails on anything that is not a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_run_folder_has_curves_and_a_confusion_matrix_of_the_test_split(tmp_path):
    result, run_dir = train(tmp_path, "trainer.epochs=4", plots=True)
    for name in ("curves.png", "confusion_matrix.png"):
        width, height = png_size(run_dir / name)
        assert width >= 400 and height >= 300
    info = summary(run_dir)
    matrix = info["confusion_matrix"]
    assert len(matrix) == 10 and all(len(row) == 10 for row in matrix)
    total = sum(map(sum, matrix))
    assert total == 359  # digits' stratified 20% test split
    assert sum(matrix[i][i] for i in range(10)) / total == pytest.approx(info["test_accuracy"])


def test_report_card_gives_speed_the_folder_and_a_command_that_reruns_it(tmp_path):
    result, run_dir = train(tmp_path, "trainer.epochs=2", "model.hidden=[16]", "optimizer.lr=0.003")
    info = summary(run_dir)
    assert info["samples_per_sec"] > 0
    assert f"run folder: {run_dir}" in result.stdout
    assert "samples/s" in result.stdout and f"best epoch {info['best_epoch']} of 2" in result.stdout
    rerun = next(line for line in result.stdout.splitlines() if line.startswith("rerun: "))
    assert rerun == "rerun: " + info["command"]
    # The printed command, run again, reproduces the numbers.
    again = nnrun(*shlex.split(info["command"])[1:], f"hydra.run.dir={tmp_path / 'again'}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    strip = lambda rows: [{k: v for k, v in r.items() if k != "epoch_time"} for r in rows]
    assert strip(metrics(tmp_path / "again")) == strip(metrics(run_dir))


@pytest.mark.parametrize(
    "overrides,word",
    [
        (["optimizer=sgd", "optimizer.lr=5", "optimizer.momentum=0"], "diverged"),  # huge but finite
        pytest.param(
            ["optimizer.lr=1e-7", "trainer.epochs=4", "~callbacks.early_stopping"],
            "underfitting",
            marks=pytest.mark.slow(
                reason="4 epochs at lr 1e-7; diagnose() finds underfitting by default: test_diagnose_reads_the_curves"
            ),
        ),
    ],
)
def test_hints_name_the_problem_on_the_console_and_in_the_summary(tmp_path, overrides, word):
    result, run_dir = train(tmp_path, "trainer.epochs=2", "trainer.limit_batches=10", *overrides)
    hints = summary(run_dir)["hints"]
    assert any(word in hint for hint in hints), hints
    assert f"hint: {word}" in result.stdout or f"hint: the training loss {word}" in result.stdout


def test_a_healthy_run_gets_no_hints(tmp_path):
    _, run_dir = train(tmp_path, "trainer.epochs=6")
    assert summary(run_dir)["hints"] == []


def logs(train_loss, val_loss):
    return [{"loss": t, "val_loss": v} for t, v in zip(train_loss, val_loss)]


@pytest.mark.parametrize(
    "history,expected",
    [
        (logs([2.0, 1.0, 0.5, 0.3, 0.2], [2.0, 1.1, 0.9, 1.1, 1.4]), ["overfitting"]),
        (logs([2.0, 1.5, 1.2, 1.0, 0.9], [2.0, 1.6, 1.3, 1.1, 1.0]), []),
        (logs([2.3, 2.29, 2.29, 2.28, 2.28], [2.3, 2.3, 2.3, 2.3, 2.3]), ["underfitting"]),
        (logs([2.0, 5.0, math.nan], [2.0, 6.0, math.nan]), ["diverged"]),
        (logs([2.0, 3.5], [2.0, 4.0]), ["diverged"]),
    ],
)
def test_diagnose_reads_the_curves(history, expected):
    hints = diagnose(history, chance=math.log(10))
    assert len(hints) == len(expected)
    for hint, word in zip(hints, expected):
        assert word in hint


@pytest.mark.slow(reason="a training run for one switch; trainer.plots=false is in every default train()")
def test_plots_can_be_turned_off(tmp_path):
    _, run_dir = train(tmp_path, "trainer.epochs=1", "trainer.plots=false")
    assert not (run_dir / "curves.png").exists() and not (run_dir / "confusion_matrix.png").exists()
