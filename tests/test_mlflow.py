"""callbacks.mlflow against a real `mlflow server` (sqlite store, artifacts on disk) on 127.0.0.1:
a run's params, metrics and files read back with MlflowClient; a sweep's parent and children; a
run stopped and resumed keeps one MLflow run; an MLflow that refuses or never answers is one warning,
and a stop signal is honoured while it hangs."""

import csv
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import NNRUN, clean_env, nnrun, summary, train

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

QUICK = ["data=digits", "trainer.epochs=2", "~callbacks.early_stopping"]
# MLflow's own defaults, set by a user (nnrun keeps them): 120 s a request, 7 retries
PATIENT = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "120", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A tracking server of its own: started, waited for until it answers, stopped afterwards."""
    folder = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,  # the console script's module: also where only the venv's python is on the path
            "-m",
            "mlflow",
            "server",
            "--host=127.0.0.1",
            f"--port={port}",
            f"--backend-store-uri=sqlite:///{folder / 'mlflow.db'}",
            f"--artifacts-destination={folder / 'artifacts'}",
            "--workers=1",
        ],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "server.log", "w"),  # noqa: SIM115  (open while the server runs)
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        assert proc.poll() is None, (folder / "server.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "mlflow server did not answer in 120 s"
        time.sleep(0.5)
    yield uri
    proc.terminate()
    proc.wait(30)


@pytest.fixture
def hung():
    """A server that accepts connections and never answers: the URI of a tracking server that hangs."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    held, done = [], threading.Event()

    def accept():
        while not done.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    done.set()
    thread.join(10)
    for connection in [listener, *held]:
        connection.close()


def warnings_in(result) -> list:
    return [line for line in (result.stdout + result.stderr).splitlines() if "warning" in line.lower()]


def runs_of(uri, experiment: str) -> list:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def read_metrics(run_dir) -> list:
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_run_logs_its_config_metrics_tags_and_files(tmp_path, server):
    track = [f"+callbacks.mlflow.tracking_uri={server}", "+callbacks.mlflow.experiment_name=one_run"]
    result, run_dir = train(tmp_path, *QUICK, "optimizer.lr=0.003", *track, plots=True)
    assert "callbacks.mlflow: run " in result.stdout
    [run] = runs_of(server, "one_run")
    client = MlflowClient(server)
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert run.data.params["optimizer.lr"] == "0.003" and run.data.params["model.hidden"] == "[128, 64]"
    assert run.data.params["trainer.epochs"] == "2"
    rows = read_metrics(run_dir)
    for key in ("loss", "val_loss", "val_accuracy", "lr"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert history == [(i + 1, pytest.approx(float(row[key]))) for i, row in enumerate(rows)], key
    info = summary(run_dir)
    assert run.data.metrics["test_accuracy"] == pytest.approx(info["test_accuracy"])
    assert run.data.metrics["best_val_loss"] == pytest.approx(info["best_score"])
    assert run.data.metrics["best_epoch"] == info["best_epoch"]
    assert run.data.tags["nnrun.status"] == "completed" and run.data.tags["nnrun.run_dir"] == str(run_dir)
    assert "optimizer.lr=0.003" in run.data.tags["nnrun.command"]
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert files == {"curves.png", "confusion_matrix.png", "summary.json", "preprocessing.json", "model.safetensors"}
    local = client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path / "back"))
    assert json.loads(Path(local).read_text())["test_accuracy"] == info["test_accuracy"]


def test_a_sweep_is_a_parent_run_with_a_child_per_job(tmp_path, server):
    track = [f"+callbacks.mlflow.tracking_uri={server}", "+callbacks.mlflow.experiment_name=sweep"]
    result = nnrun(
        "--multirun", f"hydra.sweep.dir={tmp_path / 'sweep'}", *QUICK, "trainer.plots=false", *track,
        "optimizer.lr=0.001,0.01", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    runs = runs_of(server, "sweep")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert parents[0].info.status == "FINISHED" and parents[0].info.run_name == "sweep"
    assert sorted(c.data.params["optimizer.lr"] for c in children) == ["0.001", "0.01"]


def test_a_stopped_run_resumes_into_the_same_mlflow_run(tmp_path, server):
    track = [f"+callbacks.mlflow.tracking_uri={server}", "+callbacks.mlflow.experiment_name=resumed"]
    args = ["data=digits", "trainer.epochs=500", "~callbacks.early_stopping", "trainer.plots=false", *track]
    proc = subprocess.Popen([*NNRUN, "hydra.run.dir=run", *args], cwd=tmp_path, env=clean_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 120
    metrics_csv = tmp_path / "run" / "metrics.csv"
    while not (metrics_csv.exists() and len(read_metrics(tmp_path / "run")) >= 2):  # two epochs in MLflow
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 143
    [killed] = runs_of(server, "resumed")
    assert killed.info.status == "KILLED" and killed.data.tags["nnrun.status"] == "interrupted"
    done = len(read_metrics(tmp_path / "run"))

    result = nnrun(*args, f"trainer.resume={tmp_path / 'run'}", f"trainer.epochs={done + 2}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"continuing MLflow run {killed.info.run_id}" in result.stdout
    [run] = runs_of(server, "resumed")  # still one run
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    steps = {m.step for m in MlflowClient(server).get_metric_history(run.info.run_id, "val_loss")}
    assert steps == set(range(1, done + 3))


def test_an_mlflow_that_does_not_answer_is_one_warning_and_the_run_completes(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    result, run_dir = train(tmp_path, *QUICK, f"+callbacks.mlflow.tracking_uri={dead}")
    assert time.monotonic() - start < 90
    warnings = warnings_in(result)
    assert len(warnings) == 1 and "callbacks.mlflow: could not start the run" in warnings[0], warnings
    assert "(connection refused); training goes on" in warnings[0]
    assert summary(run_dir)["status"] == "completed" and len(read_metrics(run_dir)) == 2


def test_a_server_that_never_answers_costs_one_warning_and_the_run_completes(tmp_path, hung):
    # the old synchronous calls waited 8 x 120 s here; nothing may wait on the server now
    args = ["hydra.run.dir=run", *QUICK, "trainer.plots=false", f"+callbacks.mlflow.tracking_uri={hung}"]
    result = nnrun(*args, cwd=tmp_path, env=clean_env(**PATIENT), timeout=240)
    assert result.returncode == 0, result.stderr
    [warning] = warnings_in(result)
    assert f"callbacks.mlflow: {hung}" in warning and "metrics.csv has every number" in warning
    run_dir = tmp_path / "run"
    assert summary(run_dir)["status"] == "completed" and len(read_metrics(run_dir)) == 2
    assert (run_dir / "model.safetensors").is_file() and (run_dir / "checkpoints" / "last.pt").is_file()


@pytest.mark.slow(
    reason="waits out a hanging server; a hung server is one warning by default: test_a_server_that_never_answers..."
)
def test_a_stop_signal_is_honoured_while_the_server_hangs(tmp_path, hung):
    args = ["hydra.run.dir=run", "data=digits", "trainer.epochs=500", "~callbacks.early_stopping",
            "trainer.plots=false", f"+callbacks.mlflow.tracking_uri={hung}"]  # fmt: skip
    proc = subprocess.Popen([*NNRUN, *args], cwd=tmp_path, env=clean_env(**PATIENT), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    run_dir, deadline = tmp_path / "run", time.monotonic() + 120
    try:
        while not ((run_dir / "metrics.csv").exists() and len(read_metrics(run_dir)) >= 1):  # training, not waiting
            assert proc.poll() is None and time.monotonic() < deadline, "no epoch in 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert [line for line in (out + err).splitlines() if "warning" in line.lower() and "callbacks.mlflow" in line]
    assert summary(run_dir)["status"] == "interrupted" and (run_dir / "checkpoints" / "last.pt").is_file()


def test_without_a_uri_it_uses_mlflows_default_store_in_the_working_folder(tmp_path):
    _, run_dir = train(tmp_path, *QUICK, "+callbacks.mlflow={}")
    assert (tmp_path / "mlflow.db").is_file()
    [run] = runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}", "nnrun")
    assert run.info.status == "FINISHED" and run.data.tags["nnrun.run_dir"] == str(run_dir)


def test_a_planted_parent_file_is_not_acted_on(tmp_path, server):
    sweep = tmp_path / "sweep"
    args = ["--multirun", f"hydra.sweep.dir={sweep}", *QUICK, "trainer.plots=false", "trainer.seed=1,2"]
    assert nnrun(*args, cwd=tmp_path).returncode == 0  # a sweep without callbacks.mlflow
    victim = MlflowClient(server).create_run(MlflowClient(server).create_experiment("victim")).info.run_id
    MlflowClient(server).set_terminated(victim, "FINISHED")
    for uri in (f"sqlite:///{tmp_path / 'planted.db'}", server):  # a store to create; another's run to close
        (sweep / "mlflow_parent.json").write_text(json.dumps({"run_id": victim, "tracking_uri": uri}))
        assert nnrun(*args, "trainer.resume=auto", cwd=tmp_path).returncode == 0
    assert not (tmp_path / "planted.db").exists()
    assert MlflowClient(server).get_run(victim).info.status == "FINISHED"
    # with callbacks.mlflow, the jobs do not hang under a run the server does not record as this sweep's
    track = [f"+callbacks.mlflow.tracking_uri={server}", "+callbacks.mlflow.experiment_name=planted"]
    other = tmp_path / "sweep2"
    other.mkdir()
    (other / "mlflow_parent.json").write_text(json.dumps({"run_id": victim, "tracking_uri": server}))
    done = nnrun(*args, f"hydra.sweep.dir={other}", *track, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    children = [r for r in runs_of(server, "planted") if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2 and victim not in {c.data.tags["mlflow.parentRunId"] for c in children}
    assert MlflowClient(server).get_run(victim).info.status == "FINISHED"


def test_a_password_in_the_uri_stays_on_this_machine(tmp_path, server):
    secret = server.replace("http://", "http://alice:s3cret@")
    track = [f"+callbacks.mlflow.tracking_uri={secret}", "+callbacks.mlflow.experiment_name=secret"]
    train(tmp_path, *QUICK, *track)
    [run] = runs_of(server, "secret")
    assert run.data.params["callbacks.mlflow.tracking_uri"] == server.replace("http://", "http://alice:***@")
    assert "s3cret" not in json.dumps(run.data.params) + json.dumps(run.data.tags)
