"""callbacks.wandb with the real wandb, offline (no API key, no network): the offline run in the run
folder holds the metrics, config, test scores and files; a sweep shares one group; a stopped and
resumed run keeps one W&B run id; a missing package is one line."""

import json
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FAST, NNRUN, clean_env, metrics, nnrun, one_line_error, summary, yaml_config
from nnrun.launch import main as launch_main

pytest.importorskip("wandb")
ADD = "+callbacks.wandb={}"


def offline_env(tmp_path) -> dict:
    """No key, no WANDB_* settings, HOME (W&B's ~/.cache, ~/.config, ~/.netrc) inside tmp_path."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in clean_env().items() if not k.startswith("WANDB_") and k != "NETRC"}
    return {**env, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "XDG_CONFIG_HOME": str(home / ".config")}


def records(path: Path) -> list:
    """The records of a .wandb file (LevelDB's log format: 32 KiB blocks of CRC, length, type and a
    chunk; a record is one protobuf Record in one or more chunks), as (kind, message) pairs."""
    from wandb.proto import wandb_internal_pb2

    data, out, pending, pos, block = path.read_bytes(), [], b"", 7, 32768  # 7: the file's own header
    assert data[:4] == b":W&B", path
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):  # the block's padding
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append((record.WhichOneof("record_type"), getattr(record, record.WhichOneof("record_type"))))
            pending = b""
    return out


class OfflineRun:
    """What one offline-run-* folder says: id, config, history rows by step, summary, tags, files, exit code."""

    def __init__(self, folder: Path):
        [self.file] = folder.glob("run-*.wandb")
        self.folder, self.id = folder, self.file.stem.removeprefix("run-")
        self.config, self.history, self.summary, self.files, self.exit_code = {}, {}, {}, [], None
        for kind, message in records(self.file):
            if kind == "run":  # the last one holds the run's final tags and notes
                self.run = message
                self.config.update((u.key, json.loads(u.value_json)) for u in message.config.update)
            elif kind == "history":
                row = {".".join(i.nested_key) or i.key: json.loads(i.value_json) for i in message.item}
                self.history[row["_step"]] = row
            elif kind == "summary":
                self.summary.update((".".join(u.nested_key) or u.key, json.loads(u.value_json)) for u in message.update)
            elif kind == "files":
                self.files += [f.path for f in message.files]
            elif kind == "exit":
                self.exit_code = message.exit_code


def offline_runs(run_dir: Path) -> list:
    return [OfflineRun(f) for f in sorted((run_dir / "wandb").glob("offline-run-*"))]


def test_the_offline_run_holds_the_metrics_config_test_scores_and_files(tmp_path):
    run_dir, env = tmp_path / "run", offline_env(tmp_path)
    start = time.perf_counter()
    result = nnrun(f"hydra.run.dir={run_dir}", *FAST, ADD, cwd=tmp_path, env=env)
    took = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert "wandb:" not in result.stdout + result.stderr  # nnrun's console as it was
    [run] = offline_runs(run_dir)  # mode null without a key: offline, in the run folder
    rows = metrics(run_dir)
    assert sorted(run.history) == [int(row["epoch"]) for row in rows] == [1, 2]  # step = epoch
    for row in rows:  # every metrics.csv column, the same numbers
        assert {k: float(v) for k, v in row.items()} == {k: float(run.history[int(row["epoch"])][k]) for k in row}
    done = summary(run_dir)
    assert run.summary["test_accuracy"] == done["test_accuracy"] and run.summary["test_loss"] == done["test_loss"]
    assert run.summary["status"] == "completed" and list(run.run.tags) == ["finished"] and run.exit_code == 0
    config = yaml_config(run_dir)
    assert run.config["model.name"] == config["model"]["name"] and run.config["trainer.epochs"] == 2
    assert run.config["data.name"] == "digits" and run.run.display_name == "run"
    assert f"run folder: {run_dir}" in run.run.notes and "command: nnrun " in run.run.notes
    names = ["curves.png", "confusion_matrix.png", "summary.json", "preprocessing.json", "model.safetensors"]
    assert set(names) <= set(run.files)
    for name in ("summary.json", "model.safetensors"):
        assert (run.folder / "files" / name).read_bytes() == (run_dir / name).read_bytes()
    assert not (run.folder / "files" / "checkpoints").exists()  # log_checkpoints=false
    assert took < 60, f"the run took {took:.1f} s: wandb held the process at exit"


def test_a_sweep_shares_one_group(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["--multirun", f"hydra.sweep.dir={sweep}", "trainer.seed=1,2", *FAST, "trainer.plots=false", ADD]
    result = nnrun(*args, cwd=tmp_path, env=offline_env(tmp_path))
    assert result.returncode == 0, result.stderr
    runs = [run for job in ("0", "1") for run in offline_runs(sweep / job)]
    assert len(runs) == 2 and runs[0].id != runs[1].id
    assert [run.run.run_group for run in runs] == ["sweep", "sweep"]
    assert [run.run.job_type for run in runs] == ["0", "1"]
    # W&B's copies of summary.json (wandb/offline-run-*/files/) are not runs of the sweep
    assert "2 runs in" in result.stdout
    assert len((sweep / "results.csv").read_text().strip().splitlines()) == 1 + 2


def test_a_stopped_and_resumed_run_keeps_one_wandb_run(tmp_path):
    run_dir, env = tmp_path / "run", offline_env(tmp_path)
    args = [f"hydra.run.dir={run_dir}", "trainer.epochs=500", "~callbacks.early_stopping", "trainer.plots=false", ADD]
    proc = subprocess.Popen([*NNRUN, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not ((run_dir / "metrics.csv").exists() and len(metrics(run_dir)) >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    [stopped] = offline_runs(run_dir)
    assert stopped.exit_code == 143 and list(stopped.run.tags) == ["killed"]
    epochs = len(metrics(run_dir))
    resume = [f"trainer.resume={run_dir}", f"trainer.epochs={epochs + 2}"]
    result = nnrun(*args[:1], *args[2:], *resume, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    first, second = offline_runs(run_dir)
    assert first.id == second.id == stopped.id  # `wandb sync` of both continues one run
    assert max(second.history) == epochs + 2 and second.exit_code == 0 and list(second.run.tags) == ["finished"]


def test_a_missing_wandb_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb fails, as where it is not installed
    monkeypatch.chdir(tmp_path)
    code = launch_main(["hydra.run.dir=run", *FAST, ADD])
    said = capsys.readouterr()
    assert code == 2
    assert "pip install 'nnrun[wandb]'" in one_line_error(subprocess.CompletedProcess([], code, said.out, said.err))
