"""--multirun: one folder per job; a failing job is reported and the others still run; the
results table (results.csv, results.md, compare.png) is written at the end and rebuilt by
nnrun-report from the run folders alone."""

import contextlib
import csv
import io
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import FAST, clean_env, nnrun, summary
from nnrun.report.results import main as report_main


def nnrun_report(*argv) -> subprocess.CompletedProcess:
    """`nnrun-report argv`, its main called in this process (the command's exit code, its stderr)."""
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            report_main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return subprocess.CompletedProcess(["nnrun-report", *argv], code, "", err.getvalue())


def results(folder) -> list:
    with open(Path(folder) / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_two_by_two_sweep_gives_four_job_folders(tmp_path):
    sweep = tmp_path / "sweep"
    result = nnrun(
        "--multirun",
        "model=mlp,cnn",
        "optimizer.lr=0.001,0.003",
        "trainer.epochs=1",
        "trainer.limit_batches=5",  # what is checked is the folders and the table, not how well they learn
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    seen = set()
    for job in jobs:
        overrides = yaml.safe_load((job / ".hydra/overrides.yaml").read_text())
        seen.add(tuple(sorted(overrides)))
        assert summary(job)["status"] == "completed"
        assert (job / "metrics.csv").is_file() and (job / "checkpoints/best.pt").is_file()
    assert len(seen) == 4

    # results.csv: one row per job, the swept keys as columns, numbers equal to each summary.json
    rows = results(sweep)
    assert len(rows) == 4 and {"model", "optimizer.lr", "status", "best_score", "test_accuracy"} <= set(rows[0])
    for row in rows:
        info = summary(row["run_dir"])
        overrides = dict(
            o.split("=", 1) for o in yaml.safe_load((Path(row["run_dir"]) / ".hydra/overrides.yaml").read_text())
        )
        assert (row["model"], row["optimizer.lr"]) == (overrides["model"], overrides["optimizer.lr"])
        assert float(row["best_score"]) == pytest.approx(info["best_score"], rel=1e-12)
        assert float(row["test_accuracy"]) == pytest.approx(info["test_accuracy"], rel=1e-12)
        assert int(row["params"]) == info["params"] and int(row["best_epoch"]) == info["best_epoch"]
    scores = [float(r["best_score"]) for r in rows]
    assert scores == sorted(scores)  # val_loss: best (lowest) first
    assert (sweep / "compare.png").stat().st_size > 10_000 and "| model |" in (sweep / "results.md").read_text()
    assert "(best first)" in result.stdout

    # nnrun-report rebuilds the same table from the run folders alone
    before = (sweep / "results.csv").read_text()
    (sweep / "results.csv").unlink()
    again = nnrun_report(sweep)
    assert again.returncode == 0, again.stderr
    assert (sweep / "results.csv").read_text() == before


@pytest.mark.slow(reason="a sweep of two runs for its folder's name; sweeps with hydra.sweep.dir run by default")
def test_the_default_sweep_folder_is_under_outputs_multirun(tmp_path):
    result = nnrun("--multirun", "trainer.seed=1,2", "trainer.epochs=1", "trainer.limit_batches=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "outputs" / "multirun").glob("*/*/[01]/summary.json"))) == 2


def test_a_failing_job_is_named_and_the_rest_still_run(tmp_path):
    sweep = tmp_path / "sweep"
    result = nnrun("--multirun", "model.dropout=1.5,0.1", "trainer.epochs=1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 2
    assert "job [model.dropout=1.5 trainer.epochs=1]" in result.stderr and "Traceback" not in result.stderr
    assert summary(sweep / "0")["status"] == "failed"
    assert summary(sweep / "1")["status"] == "completed"
    rows = results(sweep)  # the failed job is listed, last
    assert [(r["model.dropout"], r["status"]) for r in rows] == [("0.1", "completed"), ("1.5", "failed")]


def fake_run(folder: Path, overrides: list, **summary_fields) -> None:
    """A run folder as nnrun leaves it, reduced to what nnrun-report reads."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra/overrides.yaml").write_text(yaml.safe_dump(overrides))
    if summary_fields:
        import json

        (folder / "summary.json").write_text(json.dumps({"monitor": "val_accuracy", "mode": "max", **summary_fields}))
    (folder / "metrics.csv").write_text("epoch,val_accuracy\n1,0.5\n2,0.6\n")


def test_report_groups_seeds_and_shows_runs_still_going(tmp_path):
    runs = tmp_path / "runs"
    for i, (lr, seed, score) in enumerate([("0.1", 1, 0.90), ("0.1", 2, 0.80), ("0.01", 1, 0.70), ("0.01", 2, 0.72)]):
        fake_run(
            runs / f"r{i}",
            [f"optimizer.lr={lr}", f"trainer.seed={seed}"],
            status="completed",
            best_score=score,
            test_accuracy=score - 0.05,
            best_epoch=2,
        )
    fake_run(runs / "late", ["optimizer.lr=1.0", "trainer.seed=1"])  # no summary.json yet
    result = nnrun_report(runs)
    assert result.returncode == 0, result.stderr
    rows = results(runs)
    assert [r["best_score"] for r in rows] == ["0.9", "0.8", "0.72", "0.7", ""]  # mode max: highest first
    assert rows[-1]["status"] == "running"
    text = (runs / "results.md").read_text()
    assert "| 0.1 | 2 | 0.8500 ± 0.0707 | 0.8000 ± 0.0707 |" in text  # mean ± sample std of 2 seeds
    assert "| 0.01 | 2 | 0.7100 ± 0.0141 |" in text
    empty = nnrun_report(tmp_path / "nothing")
    assert empty.returncode == 2 and "no such folder" in empty.stderr


@pytest.mark.slow(reason="a sweep stopped mid-job, then continued; a stopped run resumes by default (test_trust)")
def test_an_interrupted_sweep_continues_in_its_folder_running_only_the_rest(tmp_path):
    import signal
    import time

    from conftest import NNRUN

    args = [
        "--multirun",
        "trainer.epochs=2,60",
        "~callbacks.early_stopping",
        "trainer.plots=false",
        "trainer.checkpoint_every_n_steps=5",
    ]
    proc = subprocess.Popen(
        [*NNRUN, *args], cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("outputs/multirun/*/*/1/checkpoints/last.pt")):  # job 0 done, job 1 saving
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    [sweep] = tmp_path.glob("outputs/multirun/*/*")
    first = (sweep / "0/summary.json").read_text()
    assert summary(sweep / "1")["status"] == "interrupted"

    result = nnrun(*args, "trainer.resume=auto", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"continuing the sweep in {sweep.relative_to(tmp_path)}" in result.stderr
    assert list(tmp_path.glob("outputs/multirun/*/*")) == [sweep]  # no second sweep folder
    assert (sweep / "0/summary.json").read_text() == first  # job 0 was not rerun
    assert "continuing" in (sweep / "1/nnrun.log").read_text()  # job 1 resumed, not restarted
    rows = results(sweep)
    assert [(r["trainer.epochs"], r["status"], r["epochs"]) for r in rows if r] and sorted(
        (r["trainer.epochs"], r["status"], r["epochs"]) for r in rows
    ) == [("2", "completed", "2"), ("60", "completed", "60")]
    report = nnrun_report(sweep)
    assert report.returncode == 0 and results(sweep) == rows

    changed = nnrun(
        "--multirun", "trainer.epochs=2,30", *args[2:], "trainer.resume=auto", f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert changed.returncode == 2 and "the swept config changed" in changed.stderr


LONG = ["~callbacks.early_stopping", "trainer.plots=false"]  # with 400 epochs, minutes: a signal stops it


def stopped_sweep(tmp_path, args, ready, sig) -> tuple:
    """Start `nnrun --multirun args` in a session of its own, send sig to it once ready(sweep) holds,
    and return (its exit code, its stderr, the sweep folder). Whatever it leaves running is killed."""
    import signal
    import time

    from conftest import NNRUN

    sweep = tmp_path / "sweep"
    with open(tmp_path / "stdout", "w") as out, open(tmp_path / "stderr", "w") as err:
        proc = subprocess.Popen(
            [*NNRUN, "--multirun", *args, *LONG, f"hydra.sweep.dir={sweep}"],
            cwd=tmp_path,
            env=clean_env(),
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while not ready(sweep):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr").read_text()
            time.sleep(0.05)
        proc.send_signal(sig)
        code = proc.wait(timeout=180)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # workers a stop left behind
        except ProcessLookupError:
            pass
    return code, (tmp_path / "stderr").read_text(), sweep


@pytest.mark.parametrize(
    "sig,code",
    [
        ("SIGTERM", 143),
        pytest.param(
            "SIGINT", 130, marks=pytest.mark.slow(reason="a parallel sweep per signal; SIGTERM runs by default")
        ),
    ],
    ids=["SIGTERM", "SIGINT"],
)
def test_a_stop_signal_stops_a_parallel_sweep_and_its_workers_save(tmp_path, sig, code):
    import signal

    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    exit_code, err, sweep = stopped_sweep(
        tmp_path,
        ["trainer.seed=0,1,2,3", "trainer.epochs=400", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2"],
        lambda sweep: all((sweep / str(k) / "metrics.csv").exists() for k in (0, 1)),  # both workers training
        getattr(signal, sig),
    )
    assert exit_code == code, err
    assert f"the sweep stopped for {sig}" in err and "Traceback" not in err
    rows = {r["trainer.seed"]: r["status"] for r in results(sweep)}
    assert rows == {"0": "interrupted", "1": "interrupted", "2": "not_started", "3": "not_started"}
    for job in (0, 1):  # each worker finished its step and saved
        assert summary(sweep / str(job))["signal"] == sig and (sweep / str(job) / "checkpoints/last.pt").exists()


@pytest.mark.parametrize(
    "epochs, running, rows",
    [
        ("1,400,2", "1", [("1", "completed"), ("400", "interrupted"), ("2", "not_started")]),
        ("400,1,2", "0", [("400", "interrupted"), ("1", "not_started"), ("2", "not_started")]),  # the first job
    ],
    ids=["second_job", "first_job"],
)
def test_ctrl_c_in_a_sweep_lists_the_jobs_that_did_not_start(tmp_path, epochs, running, rows):
    import signal

    code, err, sweep = stopped_sweep(
        tmp_path,
        [f"trainer.epochs={epochs}"],
        lambda sweep: (sweep / running / "metrics.csv").exists(),
        signal.SIGINT,
    )
    assert code == 130, err
    assert [(r["trainer.epochs"], r["status"]) for r in results(sweep)] == rows
    assert not (sweep / "2").exists()  # it never started
    report = nnrun_report(sweep)
    assert report.returncode == 0 and [(r["trainer.epochs"], r["status"]) for r in results(sweep)] == rows
    (sweep / "0" / "summary.json").unlink()  # a job folder that cannot be read is one row, not two
    (sweep / "0" / "summary.json").symlink_to(tmp_path / "elsewhere.json")
    report = nnrun_report(sweep)
    assert report.returncode == 0 and len(results(sweep)) == len(rows), results(sweep)
    assert sum(r["status"] == "unreadable" for r in results(sweep)) == 1


def test_parallel_jobs_share_the_cores_and_their_failures_set_the_exit_code(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    result = nnrun(
        "--multirun",
        "hydra/launcher=parallel",
        "hydra.launcher.n_jobs=2",
        "optimizer.lr=0.001,-1",
        *FAST,
        "trainer.plots=false",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    # the failing job ran in a worker process, yet the command names it and exits 2 (a config error)
    assert result.returncode == 2, result.stderr
    assert "job [optimizer.lr=-1] error: optimizer.lr=-1.0 is out of range" in result.stderr
    rows = {r["optimizer.lr"]: r for r in results(sweep)}
    assert {lr: r["status"] for lr, r in rows.items()} == {"0.001": "completed", "-1": "failed"}
    cores = len(os.sched_getaffinity(0))
    assert summary(rows["0.001"]["run_dir"])["threads"] == max(1, cores // 2)  # two jobs split the cores


@pytest.mark.slow(
    reason="submitit times the job out and requeues it 3 times (timeout_min=1); SIGUSR1 requeue: test_trust"
)
def test_a_job_timed_out_by_submitit_is_requeued_and_continues_from_its_checkpoint(tmp_path):
    # submitit's local executor does what SLURM does: SIGUSR2 before the time limit (here every 30 s),
    # then the job is requeued (3 times) and, with trainer.resume=auto, continues from last.pt
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    result = nnrun(
        "--multirun",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=1",
        "hydra.launcher.gpus_per_node=0",
        "trainer.resume=auto",
        "trainer.epochs=100000",
        "~callbacks.early_stopping",
        "trainer.plots=false",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        timeout=400,
    )
    assert result.returncode == 1 and "timed-out too many times" in result.stderr  # it never ends: 100000 epochs
    log = (sweep / "0" / "nnrun.log").read_text()
    assert log.count("continuing ") == 3 and log.count("/checkpoints/last.pt") >= 3
    epochs = [int(row["epoch"]) for row in csv.DictReader(open(sweep / "0" / "metrics.csv", newline=""))]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) > 3  # one run, no epoch twice
    assert (sweep / "0" / "checkpoints" / "last.pt").exists()


def test_optuna_search_tells_nan_trials_as_failed_and_ends_with_the_table(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    result = nnrun(
        "--multirun",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=4",
        "optimizer.lr=choice(0.003, 1e30)",
        "trainer.monitor=val_accuracy",
        *FAST,
        "trainer.plots=false",
        f"hydra.sweep.dir={sweep}",
        "hydra.sweeper.storage=sqlite:///study.db",
        cwd=tmp_path,
    )
    out = result.stdout + result.stderr
    assert "Directions: ['maximize']" in out  # follows trainer.monitor and trainer.mode
    rows = results(sweep)
    assert len(rows) == 4 and {"optimizer.lr", "data.batch_size", "model.dropout"} <= set(rows[0])
    assert {r["optimizer.lr"]: r["status"] for r in rows} == {"0.003": "completed", "1e+30": "nan_loss"}
    failed = [r for r in rows if r["status"] != "completed"]
    assert out.count("Failed experiment: Return value must be float-castable") == len(failed)
    import optuna  # what Optuna itself recorded

    study = optuna.load_study(study_name="nnrun", storage=f"sqlite:///{tmp_path / 'study.db'}")
    states = {f"{t.params['optimizer.lr']:g}": t.state.name for t in study.trials}
    assert states == {"0.003": "COMPLETE", "1e+30": "FAIL"}
    assert result.returncode == 1 and "the training loss became nan" in result.stderr
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    scores = [float(r["best_score"]) for r in rows if r["status"] == "completed"]
    assert best["best_value"] == pytest.approx(max(scores)) and float(rows[0]["best_score"]) == max(scores)
    assert "4 runs in" in result.stdout


def test_a_failed_job_frees_its_model_before_the_next_job(tmp_path):
    # on a GPU the failed job's model, data and activations would hold memory the next job needs
    (tmp_path / "probe.py").write_text(
        "import gc, weakref\nfrom nnrun.callbacks import CALLBACKS, Callback\nMODELS = []\n"
        "@CALLBACKS.register('probe')\nclass Probe(Callback):\n"
        "    def __init__(self, fail=False):\n        self.fail = fail\n"
        "    def on_train_begin(self, logs):\n        gc.collect()\n"
        "        alive = sum(ref() is not None for ref in MODELS)\n"
        "        open('alive.txt', 'a').write(f'{alive}\\n')\n        MODELS.append(weakref.ref(self.model))\n"
        "    def on_epoch_end(self, epoch, logs):\n        if self.fail:\n"
        "            raise RuntimeError('the probe fails this job')\n"
    )
    result = nnrun(
        "--multirun",
        "imports=[probe]",
        "+callbacks.probe.fail=true,false",
        "trainer.epochs=1",
        "trainer.limit_batches=2",
        "trainer.plots=false",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
    )
    assert result.returncode == 1 and "the probe fails this job" in result.stderr
    assert (tmp_path / "alive.txt").read_text().split() == ["0", "0"]  # job 0's model is gone by job 1
    assert json.loads((tmp_path / "sweep/1/summary.json").read_text())["status"] == "completed"
