"""The command as a user meets it: the default run, its folder, its console, its help."""

import os
import pty
import re
import select
import subprocess
import sys

import torch

from conftest import NNRUN, clean_env, metrics, nnrun, summary, train

CONTRACT_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "epoch_time"]
SUMMARY_KEYS = {
    "status",
    "epochs",
    "best_epoch",
    "monitor",
    "best_score",
    "test_loss",
    "test_accuracy",
    "params",
    "device",
    "wall_time",
}


def test_default_run_learns_digits_and_fills_the_run_folder(tmp_path):
    # No overrides but the ones that keep it quick: the embedded digits, offline.
    result = nnrun("trainer.epochs=15", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = list((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 1 and re.fullmatch(r"\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d", f"{runs[0].parent.name}/{runs[0].name}")
    run_dir = runs[0]
    for name in [
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "nnrun.log",
        "metrics.csv",
        "checkpoints/best.pt",
        "checkpoints/last.pt",
        "summary.json",
        "curves.png",
        "confusion_matrix.png",
    ]:
        assert (run_dir / name).is_file(), name
    info = summary(run_dir)
    assert SUMMARY_KEYS <= set(info)
    assert info["status"] == "completed" and info["device"] == "cpu"
    assert info["test_accuracy"] >= 0.9, info
    rows = metrics(run_dir)
    assert list(rows[0]) == CONTRACT_COLUMNS
    assert len(rows) == info["epochs"] <= 15
    best = rows[info["best_epoch"] - 1]
    assert float(best["val_loss"]) == info["best_score"] == min(float(r["val_loss"]) for r in rows)
    assert str(run_dir) in result.stdout and "test_accuracy" in result.stdout


def test_checkpoints_are_plain_data_with_the_resolved_config(tmp_path):
    _, run_dir = train(tmp_path, "trainer.epochs=3")
    best = torch.load(run_dir / "checkpoints/best.pt", weights_only=True)
    last = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    assert {"model", "optimizer", "epoch", "metrics", "config"} <= set(best)
    assert last["epoch"] == 3
    assert best["epoch"] == summary(run_dir)["best_epoch"]
    assert best["metrics"]["val_loss"] == summary(run_dir)["best_score"]
    assert best["config"]["model"]["name"] == "mlp"
    assert best["config"]["callbacks"]["early_stopping"]["monitor"] == "val_loss"  # resolved
    params = sum(
        t.numel()
        for k, t in best["model"].items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert params == summary(run_dir)["params"]


def test_piped_output_is_one_plain_line_per_epoch(tmp_path):
    result = nnrun(f"hydra.run.dir={tmp_path / 'run'}", "trainer.epochs=3", "~callbacks.early_stopping", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout and "\x1b" not in result.stdout
    epoch_lines = [l for l in result.stdout.splitlines() if l.startswith("epoch ")]
    assert len(epoch_lines) == 3
    assert all("val_loss" in l and "loss" in l and "lr" in l for l in epoch_lines)
    # The model summary table comes first, with the total matching the run's parameter count.
    total = re.search(r"Total params: ([\d,]+)", result.stdout)
    assert total and int(total.group(1).replace(",", "")) == summary(tmp_path / "run")["params"]


def test_terminal_gets_a_live_progress_bar(tmp_path):
    # A pseudo-terminal, as a user's shell: rich redraws the bar with ETA and the running loss.
    master, slave = pty.openpty()
    env = clean_env(COLUMNS="120", TERM="xterm")
    proc = subprocess.Popen(
        [*NNRUN, f"hydra.run.dir={tmp_path / 'run'}", "trainer.epochs=2", "model=lstm"],
        cwd=tmp_path,
        stdout=slave,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        try:
            chunk = os.read(master, 65536) if ready else b""
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=120) == 0
    text = out.decode(errors="replace")
    assert "\x1b[" in text  # redrawn in place
    assert re.search(r"loss \d\.\d{4}", text)  # live loss on the bar
    assert "0:00:" in text or "-:--:--" in text  # rich's ETA column
    assert text.count("epoch 2/2") >= 1 and "test_accuracy" in text


def test_python_dash_m_and_help(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "nnrun", "--help"], cwd=tmp_path, capture_output=True, text=True, env=clean_env()
    )
    assert result.returncode == 0
    for group in (
        "data: arrays, cifar10, csv, digits, fashion_mnist, image_folder, mnist, text_csv, timeseries",
        "model: cnn, course_cnn, course_dense, course_dense_l2, course_lstm, course_text, custom, lstm, mlp, sequential, torchvision",
        "optimizer: adam, adamw, rmsprop, sgd",
    ):
        assert group in result.stdout


def test_epochs_zero_prints_the_model_summary_without_training(tmp_path):
    result, run_dir = train(tmp_path, "trainer.epochs=0", "model=cnn")
    assert "Total params" in result.stdout and "Conv2d" in result.stdout
    assert summary(run_dir)["status"] == "summary_only"
    assert not (run_dir / "metrics.csv").exists()


def test_a_users_own_config_folder_adds_options(tmp_path):
    mine = tmp_path / "myconf" / "model"
    mine.mkdir(parents=True)
    (mine / "wide_mlp.yaml").write_text("name: mlp\nhidden: [300]\nactivation: gelu\ndropout: 0.0\nbatchnorm: true\n")
    _, run_dir = train(tmp_path, f"--config-dir={tmp_path / 'myconf'}", "model=wide_mlp", "trainer.epochs=1")
    # 64*300+300 + BN 2*300 + 300*10+10
    assert summary(run_dir)["params"] == 64 * 300 + 300 + 600 + 3010


def test_a_primary_config_of_your_own_in_your_config_folder_runs_and_is_the_rerun_command(tmp_path):
    """--config-name names a file only --config-dir has, built on nnrun's config (its defaults list)."""
    mine = tmp_path / "myconf"
    mine.mkdir()
    (mine / "mine.yaml").write_text("defaults:\n  - config\n  - _self_\ntrainer:\n  epochs: 1\n")
    _, run_dir = train(tmp_path, f"--config-dir={mine}", "--config-name=mine", "trainer.limit_batches=2")
    assert summary(run_dir)["epochs"] == 1  # mine.yaml's, over nnrun's default
    assert summary(run_dir)["command"].startswith(f"nnrun --config-dir {mine} --config-name mine ")


def test_a_plain_command_stores_what_hydras_run_stores(tmp_path):
    """`nnrun a=b` runs its one job without hydra.main; its .hydra/ matches `nnrun --run a=b`'s."""
    args = ("trainer.epochs=1", "trainer.limit_batches=2")
    _, plain = train(tmp_path, *args, name="plain")
    _, run = train(tmp_path, "--run", *args, name="run")
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        assert (plain / ".hydra" / name).read_text().replace(str(plain), "X") == (
            run / ".hydra" / name
        ).read_text().replace(str(run), "X"), name
