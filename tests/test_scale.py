"""One device made fast and several made one: DDP under torchrun (gloo on CPU), mixed precision,
torch.compile, and the device facts every run records."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import clean_env, metrics, nnrun, one_line_error, summary, train
from nnrun.launch import main as launch_main

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]  # torchrun, also where its script is not on the path
SAME = ["model.dropout=0", "trainer.epochs=2", "~callbacks.early_stopping", "trainer.plots=false"]


def torchrun(*args, cwd, timeout=300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 -m nnrun args`, one thread a process."""
    return subprocess.run(
        [*TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "nnrun", *args],
        cwd=cwd,
        env=clean_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def weights(run_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(Path(run_dir) / "model.safetensors")


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    # 2 x 24 per process = 48 a step, as the single run; 1295 training samples leave a short last batch
    (tmp_path / "ddp").mkdir()
    ddp = torchrun("trainer.strategy=ddp", "data.batch_size=24", *SAME, cwd=tmp_path / "ddp")
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    folders = [p.parent for p in (tmp_path / "ddp").glob("outputs/*/*/summary.json")]
    assert len(list((tmp_path / "ddp").glob("outputs/*/*"))) == 1 and len(folders) == 1  # one run folder
    assert ddp.stdout.count("test (weights of the best epoch)") == 1  # rank 0 speaks

    _, single = train(tmp_path, *SAME, "data.batch_size=48", name="single")
    a, b = weights(folders[0]), weights(single)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    for row_a, row_b in zip(metrics(folders[0]), metrics(single), strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert float(row_a[key]) == pytest.approx(float(row_b[key]), rel=1e-4), key
    info = summary(folders[0])
    assert info["test_accuracy"] == pytest.approx(summary(single)["test_accuracy"], abs=1e-9)


def test_a_keras_stack_with_a_held_recurrent_bias_trains_under_ddp_as_in_one_process(tmp_path):
    # model=sequential's lstm holds torch's second bias at zero (requires_grad=False): DDP must
    # leave it out of its gradient buckets and still match one process
    stack = ["model=sequential", "model.layers=[{lstm:16},{dense:{units:10,activation:softmax}}]"]
    args = [*stack, "trainer.epochs=2", "~callbacks.early_stopping", "trainer.plots=false", "trainer.limit_batches=6"]
    (tmp_path / "ddp").mkdir()
    ddp = torchrun("trainer.strategy=ddp", "data.batch_size=24", *args, cwd=tmp_path / "ddp")
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    (folder,) = [p.parent for p in (tmp_path / "ddp").glob("outputs/*/*/summary.json")]
    _, single = train(tmp_path, *args, "data.batch_size=48", name="single")
    a, b = weights(folder), weights(single)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert not a["lstm.rnn.bias_hh_l0"].any()  # still zero: Keras's single bias


@pytest.mark.slow(
    reason="torchrun twice: stopped, then resumed; DDP in one run: test_two_gloo_processes_match_one_process..."
)
def test_a_stopped_ddp_run_resumes_in_its_folder_and_ends_as_one_process_would(tmp_path):
    folder = tmp_path / "run"
    args = ["model.dropout=0", "~callbacks.early_stopping", "trainer.plots=false", "trainer.epochs=40"]
    args += ["trainer.limit_batches=10"]  # of 27 steps an epoch: the stop still lands with most epochs to go
    command = [
        *TORCHRUN,
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "nnrun",
        "trainer.strategy=ddp",
        "data.batch_size=24",
        f"hydra.run.dir={folder}",
        *args,
    ]
    proc = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=clean_env(OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (folder / "metrics.csv").exists() or len(metrics(folder)) < 2:  # two epochs done
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on; the ranks stop at the epoch's end
    said = proc.communicate(timeout=120)[0]
    assert said.count("nnrun: stopped by SIGTERM") == 1 and "nnrun-rank" not in said, said[-3000:]  # rank 0 tells
    stopped = summary(folder)
    assert stopped["status"] == "interrupted" and stopped["epoch"] < 40, stopped

    resumed = subprocess.run(
        [*command, "trainer.resume=auto"],
        cwd=tmp_path,
        env=clean_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming {folder} from" in resumed.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no second folder
    assert [int(row["epoch"]) for row in metrics(folder)] == list(range(1, 41))
    _, single = train(tmp_path, *args, "data.batch_size=48", name="single")
    a, b = weights(folder), weights(single)
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_ddp_without_torchrun_is_a_one_line_error(tmp_path):
    result = nnrun("trainer.strategy=ddp", cwd=tmp_path)
    assert result.returncode == 2 and "torchrun --nproc_per_node=N" in one_line_error(result)


def test_bf16_trains_on_cpu_and_every_run_records_its_device(tmp_path):
    _, run_dir = train(tmp_path, "trainer.precision=bf16", "trainer.epochs=2", "trainer.limit_batches=5")
    info = summary(run_dir)
    assert info["status"] == "completed" and info["test_accuracy"] > 0.3
    assert info["torch_version"] == torch.__version__ and info["device_name"] and info["rss_peak_mb"] > 50
    assert info["samples_per_sec"] > 0 and "cuda_version" in info
    result = nnrun("trainer.precision=8", cwd=tmp_path)
    assert result.returncode == 2 and "trainer.precision=8 is not one of 32, bf16, 16" in one_line_error(result)


@pytest.mark.slow(reason="torch.compile compiles the model (inductor) on the CPU; no default test compiles")
def test_compile_gives_the_same_training_as_eager(tmp_path):
    args = ["model.dropout=0", "trainer.epochs=1", "trainer.limit_batches=5"]
    _, eager = train(tmp_path, *args, name="eager")
    _, compiled = train(tmp_path, *args, "trainer.compile=true", name="compiled")
    a, b = weights(eager), weights(compiled)
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


@pytest.mark.slow(
    reason="torchrun until early stopping fires; early stopping and the plateau cut in one process run by default"
)
def test_ddp_ranks_stop_early_and_change_the_rate_together(tmp_path):
    # each rank's batch-norm statistics differ after its last step: without rank 0's numbers on every
    # rank, early stopping fired on one rank only and gloo failed with "Connection closed by peer".
    # One torchrun checks both: early stopping (in the default callbacks) and the plateau's rate cut
    result = torchrun(
        "trainer.strategy=ddp",
        "model=cnn",
        "trainer.device=cpu",
        "trainer.epochs=40",
        "trainer.plots=false",
        "hydra.run.dir=run",
        "callbacks=[default,reduce_lr_on_plateau]",
        "callbacks.reduce_lr_on_plateau.patience=1",
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    info = summary(tmp_path / "run")
    assert info["status"] == "completed" and info["stopped_early"] and info["epochs"] < 40
    rates = [float(row["lr"]) for row in metrics(tmp_path / "run")]
    assert min(rates) < rates[0], rates  # the plateau lowered the rate


def test_ddp_with_one_named_gpu_is_refused(tmp_path):
    result = torchrun("trainer.strategy=ddp", "trainer.device=cuda:0", "trainer.epochs=1", cwd=tmp_path)
    assert result.returncode != 0
    assert "trainer.device=cuda:0 under trainer.strategy=ddp would put every process on one GPU" in result.stderr


def test_parallel_jobs_take_a_gpu_no_other_job_holds(tmp_path):
    from nnrun.train.device import free_slot, release_slots

    gpus = ["GPU-aaa", "GPU-bbb"]
    assert free_slot(gpus, 0, tmp_path) == 0  # job 0 holds GPU 0
    assert free_slot(gpus, 1, tmp_path) == 1  # job 1 holds GPU 1
    import os
    import fcntl

    os.close(__import__("nnrun.train.device", fromlist=["_SLOTS"])._SLOTS.pop())  # job 1 ends
    assert free_slot(gpus, 2, tmp_path) == 1  # job 2: GPU 0 is busy, so GPU 1, not 2 mod 2
    assert free_slot(gpus, 3, tmp_path) == 1  # all busy: its own index, shared
    release_slots()
    fd = os.open(tmp_path / "GPU-aaa.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released: free again
    os.close(fd)


def test_a_sweep_under_torchrun_is_refused(tmp_path, monkeypatch, capsys):
    # a job failing on one rank only would leave the other waiting in the next job's collectives.
    # Refused from torchrun's WORLD_SIZE before any process group starts: torchrun's environment here
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.chdir(tmp_path)
    code = launch_main(["--multirun", "trainer.strategy=ddp", "trainer.seed=1,2"])
    assert code != 0 and "--multirun under torchrun is not supported" in capsys.readouterr().err


def test_gpu_slots_ignore_a_folder_someone_else_planted(tmp_path):
    from nnrun.train.device import free_slot, release_slots

    planted = tmp_path / "file"
    planted.write_text("")
    assert free_slot(["GPU-a", "GPU-b"], 3, planted) == 1  # no crash: the job's own GPU, unlocked
    shared = tmp_path / "open"
    shared.mkdir()
    shared.chmod(0o777)
    assert free_slot(["GPU-a", "GPU-b"], 2, shared) == 0 and not list(shared.iterdir())
    release_slots()
