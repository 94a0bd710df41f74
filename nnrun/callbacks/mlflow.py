"""MLflow tracking (pip install 'nnrun[mlflow]'): each run becomes an MLflow run with the config as
params, every metrics.csv column per epoch, the test metrics, tags and the run folder's files; a
sweep is a parent run with a child per job; a resumed run continues its MLflow run. The calls run on
a thread of their own (callbacks.sender): MLflow that fails or hangs is one warning, training goes
on, and metrics.csv has everything."""

import fcntl
import json
import logging
import os
import re
from pathlib import Path
from urllib.parse import urlparse

from nnrun.callbacks.base import CALLBACKS, RUN_FILES, Callback, flat, git_commit, main_process, run_config
from nnrun.callbacks.sender import GRACE, Sender, Timed, upload_seconds
from nnrun.errors import ConfigError, Interrupted

log = logging.getLogger("nnrun")
PARENT = "mlflow_parent.json"  # in a sweep's folder: the parent run every job's run hangs under
# MLflow retries a request 7 times over minutes by default; a run should not wait on a dead server
QUICK = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


@CALLBACKS.register("mlflow")
class MLflowLogger(Callback):
    def __init__(self, tracking_uri=None, experiment_name="nnrun", run_name=None, log_checkpoints=False):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError(
                "callbacks.mlflow needs the mlflow package: pip install 'nnrun[mlflow]' (or remove the callback)"
            ) from None
        self.client_class, self.uri = MlflowClient, tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        self.experiment_name, self.run_name, self.log_checkpoints = experiment_name, run_name, log_checkpoints
        self.run_id = self.parent_id = self.client = None
        self.sender = Sender("mlflow", bounded=remote(self.uri), server=redact(self.uri or "MLflow's default store"))
        self.quickened = quicken()
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # its retry lines: ours says it once
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its "creating tables", "view run" lines

    # ---- the hooks ----

    def on_train_begin(self, logs):
        if not self.speaks():
            return
        sweep = sweep_folder()
        self.sender.send(lambda: self.attempt("start the run", lambda: self.start(sweep)))

    def state_dict(self) -> dict:
        return {"run_id": self.run_id, "parent_id": self.parent_id}

    def load_state_dict(self, state: dict) -> None:
        """A resumed run: the same MLflow run, set running again."""
        self.run_id, self.parent_id = state["run_id"], state["parent_id"]
        if not self.speaks():
            return
        sweep = sweep_folder()
        if self.run_id is None:  # it did not reach MLflow before: start now
            self.sender.send(lambda: self.attempt("start the run", lambda: self.start(sweep)))
        else:
            self.sender.send(self.carry_on)

    def on_epoch_end(self, epoch, logs):
        if not self.sender.started:  # another DDP rank
            return
        from mlflow.entities import Metric

        stamp = now()
        metrics = [Metric(safe_name(k), float(v), stamp, epoch) for k, v in logs.items() if number(v)]
        self.sender.send(lambda: self.log_epoch(epoch, metrics), metrics=True)

    def on_run_end(self, summary, error) -> None:
        late = (
            f"callbacks.mlflow: {self.sender.server} did not answer in {GRACE:.0f} s; the run ends without waiting "
            f"for it, and metrics.csv has every number"
        )
        try:
            self.sender.close(late, last=lambda: self.end(summary, error))
        finally:
            unquicken(self.quickened)

    # ---- on the sender's thread ----

    def carry_on(self) -> None:
        self.attempt("continue the run", lambda: self.connect().update_run(self.run_id, status="RUNNING"))
        if self.client is not None:
            self.sender.info(f"callbacks.mlflow: continuing MLflow run {self.run_id}")

    def log_epoch(self, epoch: int, metrics: list) -> None:
        if self.run_id is not None and self.client is not None:
            self.attempt(f"log epoch {epoch}", lambda: self.client.log_batch(self.run_id, metrics=metrics))

    def end(self, summary, error) -> None:
        if self.run_id is None or self.client is None:
            return
        if error is None:
            status, state = "FINISHED", summary.get("status", "completed")
        elif isinstance(error, (Interrupted, KeyboardInterrupt)):
            status, state = "KILLED", "interrupted"
        else:
            status, state = "FAILED", "failed"
        self.attempt("finish the run", lambda: self.finish(summary or {}, status, state))

    # ---- MLflow ----

    def speaks(self) -> bool:
        """Rank 0 alone talks to MLflow (the others train alike)."""
        return main_process()

    def connect(self):
        if self.client is None:
            self.client = Timed(self.client_class(tracking_uri=self.uri), self.sender)
        return self.client

    def attempt(self, what: str, action) -> None:
        """action(), or one warning and MLflow off for the rest of the run: never a crash."""
        try:
            action()
        except Exception as exc:  # noqa: BLE001  (MlflowException, requests' errors, sqlite's: all mean "not there")
            self.sender.warn(
                f"callbacks.mlflow: could not {what} at {self.sender.server} ({short_reason(exc)}); training goes on "
                f"without MLflow, and metrics.csv has every number"
            )
            self.client = None

    def start(self, sweep) -> None:
        """sweep: the sweep's folder when this run is a job of one (read on the training thread)."""
        if sweep is None:
            self.open_run(None)
            return
        sweep.mkdir(parents=True, exist_ok=True)
        with open(sweep / f".{PARENT}.lock", "a") as lock:  # parallel jobs: one makes the store, the experiment
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.open_run(sweep)

    def open_run(self, sweep) -> None:
        client = self.connect()
        experiment = client.get_experiment_by_name(self.experiment_name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(self.experiment_name)
        tags = {"nnrun.run_dir": str(self.run_dir)}
        if sweep is not None:
            self.parent_id = sweep_parent(client, experiment_id, sweep)
            tags["mlflow.parentRunId"] = self.parent_id
        commit = git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        run = client.create_run(experiment_id, tags=tags, run_name=self.run_name or self.run_dir.name)
        self.run_id = run.info.run_id
        self.attempt("log the config", lambda: self.log_config(client))
        where = redact(client.tracking_uri)
        self.sender.info(f"callbacks.mlflow: run {self.run_id} in experiment {self.experiment_name} at {where}")

    def log_config(self, client) -> None:
        """The resolved config, flattened (model.hidden, optimizer.lr...), as the run's params."""
        from mlflow.entities import Param

        params = [
            Param(safe_name(k), redact(json.dumps(v) if isinstance(v, (list, dict)) else str(v))[:6000])
            for k, v in flat(run_config(self.run_dir)).items()
        ]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a request
            client.log_batch(self.run_id, params=params[i : i + 100])

    def finish(self, summary: dict, status: str, state: str) -> None:
        try:
            self.send_results(summary, state)
        finally:  # the run's status, even when an upload failed
            self.client.set_terminated(self.run_id, status)

    def send_results(self, summary: dict, state: str) -> None:
        from mlflow.entities import Metric, RunTag

        client = self.client
        stamp = now()
        tests = [Metric(k, float(v), stamp, 0) for k, v in summary.items() if k.startswith("test_") and number(v)]
        if number(summary.get("best_score")) and summary.get("monitor"):  # the table shows last values otherwise
            tests.append(Metric(safe_name(f"best_{summary['monitor']}"), float(summary["best_score"]), stamp, 0))
            tests.append(Metric("best_epoch", float(summary.get("best_epoch") or 0), stamp, 0))
        tags = [RunTag("nnrun.status", state)]
        if summary.get("command"):
            tags.append(RunTag("nnrun.command", redact(str(summary["command"]))[:5000]))
        client.log_batch(self.run_id, metrics=tests, tags=tags)
        files = [self.run_dir / name for name in RUN_FILES if (self.run_dir / name).is_file()]
        for path in files:
            client.log_artifact(self.run_id, str(path), seconds=upload_seconds(path))
        folder = self.run_dir / "checkpoints"
        if self.log_checkpoints and folder.is_dir():
            client.log_artifacts(self.run_id, str(folder), artifact_path="checkpoints", seconds=upload_seconds(folder))


def remote(uri) -> bool:
    """Whether MLflow reaches the store over a network (a server, a database server): the end of a run
    waits for one only while it answers. A store on this machine (MLflow's default sqlite file, a
    folder) is waited for as long as it takes."""
    return uri is not None and urlparse(uri).scheme not in ("", "file", "sqlite")


def short_reason(exc) -> str:
    text = str(exc)
    for cause in ("Connection refused", "timed out", "Name or service not known", "Permission denied"):
        if cause in text:
            return cause.lower()
    return next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)[:200]


def number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def now() -> int:
    import time

    return int(time.time() * 1000)


def sweep_folder():
    """The sweep's folder when this run is a job of a --multirun, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().sweep.dir).resolve()


def sweep_parent(client, experiment_id: str, sweep: Path) -> str:
    """The id of the sweep's parent run: made by its first job, found by the others (the caller
    holds the sweep's lock). mlflow_parent.json is only a pointer: a run it names is taken only if
    the server says it is this sweep's parent (a copied or planted file names another run)."""
    path = sweep / PARENT
    known = read_parent(path)
    if known and known.get("tracking_uri") == redact(client.tracking_uri) and ours(client, known.get("run_id"), sweep):
        return known["run_id"]
    run = client.create_run(experiment_id, run_name=sweep.name, tags={"nnrun.sweep_dir": str(sweep)})
    text = {"run_id": run.info.run_id, "tracking_uri": redact(client.tracking_uri), "experiment_id": experiment_id}
    path.write_text(json.dumps(text, indent=2) + "\n")
    return run.info.run_id


def read_parent(path: Path):
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return known if isinstance(known, dict) and isinstance(known.get("run_id"), str) else None


def ours(client, run_id, sweep: Path) -> bool:
    """Whether run_id is, on the server, the parent run of this sweep folder."""
    try:
        return client.get_run(run_id).data.tags.get("nnrun.sweep_dir") == str(sweep)
    except Exception:  # noqa: BLE001  (no such run: not ours)
        return False


def end_sweep(config, failed: bool) -> None:
    """At the end of a --multirun (report.results): the parent run FINISHED, or FAILED when a job
    failed; only for a sweep that uses callbacks.mlflow, at the store it names, and only the run
    that the server records as this sweep's parent."""
    sweep = Path(config.hydra.sweep.dir).resolve()
    known = read_parent(sweep / PARENT)
    options = (config.get("callbacks") or {}).get("mlflow", "absent")
    if known is None or options == "absent":
        return
    uri = (options or {}).get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
    sender = Sender("mlflow", bounded=remote(uri), server=redact(uri or "MLflow's default store"))

    def close() -> None:
        try:
            from mlflow.tracking import MlflowClient

            client = Timed(MlflowClient(tracking_uri=uri), sender)
            if known.get("tracking_uri") == redact(client.tracking_uri) and ours(client, known["run_id"], sweep):
                client.set_terminated(known["run_id"], "FAILED" if failed else "FINISHED")
        except Exception as exc:  # noqa: BLE001
            sender.warn(f"callbacks.mlflow: could not close the sweep's parent run ({short_reason(exc)})")

    quickened = quicken()
    try:
        sender.send(close)
        sender.close(
            f"callbacks.mlflow: {sender.server} did not answer in {GRACE:.0f} s; the sweep's parent run stays RUNNING"
        )
    finally:
        unquicken(quickened)


def quicken() -> list:
    """QUICK's settings for nnrun's own calls, where the user set none; the names of those set."""
    added = [key for key in QUICK if key not in os.environ]
    os.environ.update((key, QUICK[key]) for key in added)
    return added


def unquicken(added: list) -> None:
    """The process's settings as they were before quicken (the caller's own MLflow calls keep theirs)."""
    for key in added:
        if os.environ.get(key) == QUICK[key]:
            del os.environ[key]


SAFE = re.compile(r"[^\w\-. /]")  # the characters MLflow takes in a param or metric name


def safe_name(name: str) -> str:
    return SAFE.sub("_", str(name))[:250]


def redact(text: str) -> str:
    """A URI's password (http://user:secret@host) never goes to the server or into files."""
    return re.sub(r"(://[^/\s:@]+):[^@\s/]+@", r"\1:***@", str(text))
