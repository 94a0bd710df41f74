"""nnrun.fit(): the nnrun command from Python, as a notebook uses it."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest

import nnrun
from conftest import clean_env


def python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=300
    )


def test_fit_trains_writes_a_run_folder_and_returns_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a notebook's Python: the calls run here, in this process
    r = nnrun.fit(["trainer.epochs=2", "trainer.plots=false"])
    assert r.dir.parent.parent == tmp_path / "outputs" and len(r.history) == 2
    summary = json.loads((r.dir / "summary.json").read_text())
    assert r.summary["test_accuracy"] == summary["test_accuracy"] > 0.5
    assert len(r.predict_classes(np.zeros((2, 8, 8)))) == 2
    assert "run folder:" in capsys.readouterr().out  # the same report card as the command


def test_fit_takes_a_command_line_string_and_a_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = nnrun.fit("model=cnn trainer.epochs=1 trainer.plots=false", run_dir="mine")
    assert r.evaluate()["test_accuracy"] == r.summary["test_accuracy"]
    assert (tmp_path / "mine" / "model.safetensors").exists()


def test_a_config_error_raises_config_error_with_the_cli_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(nnrun.ConfigError) as error:
        nnrun.fit(["model=nope"])
    line = str(error.value)  # the whole list of models is not pinned: it grows
    assert line.startswith("model=nope is not an option; choose one of: cnn, ") and "\n" not in line
    assert {"mlp", "lstm", "sequential", "torchvision"} <= set(line.split(": ", 1)[1].split(", "))
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("summary.json"))


def test_fit_leaves_the_notebooks_logging_as_it_was(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = list(logging.getLogger().handlers)
    nnrun.fit("trainer.epochs=1 trainer.limit_batches=2 trainer.plots=false")
    assert logging.getLogger().handlers == before
    assert nnrun.fit("trainer.epochs=0") is None


def test_a_stopped_fit_calls_the_callers_handler_and_gives_its_handlers_back(tmp_path):
    result = python(
        "import os, pathlib, signal, threading, time, nnrun\n"
        "called = []\n"
        "def mine(signum, frame):\n    called.append(signum)\n"
        "signal.signal(signal.SIGTERM, mine)\n"
        "def stop():\n"
        "    while not pathlib.Path('run/metrics.csv').exists():\n        time.sleep(0.02)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "threading.Thread(target=stop, daemon=True).start()\n"
        "try:\n"
        "    nnrun.fit(['trainer.epochs=400', '~callbacks.early_stopping', 'trainer.plots=false'], run_dir='run')\n"
        "except KeyboardInterrupt:\n    print('stopped')\n"
        "print(called == [signal.SIGTERM], signal.getsignal(signal.SIGTERM) is mine,\n"
        "      signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == ["stopped", "True True True"], result.stdout[-2000:]
    assert json.loads((tmp_path / "run/summary.json").read_text())["status"] == "interrupted"


def test_a_callers_handler_that_exits_is_called_after_the_run_saved(tmp_path):
    result = python(
        "import os, pathlib, signal, sys, threading, time, nnrun\n"
        "signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(3))\n"
        "def stop():\n"
        "    while not pathlib.Path('run/metrics.csv').exists():\n        time.sleep(0.02)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "threading.Thread(target=stop, daemon=True).start()\n"
        "nnrun.fit(['trainer.epochs=400', '~callbacks.early_stopping', 'trainer.plots=false'], run_dir='run')\n",
        tmp_path,
    )
    assert result.returncode == 3, result.stderr
    record = json.loads((tmp_path / "run/summary.json").read_text())
    assert record["status"] == "interrupted", record
    assert (tmp_path / "run/checkpoints/last.pt").is_file()
    assert "stopped by SIGTERM" in (tmp_path / "run/nnrun.log").read_text()
