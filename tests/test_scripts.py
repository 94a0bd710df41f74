"""The shell scripts for GPU boxes and SLURM, run with stand-in nvidia-smi, nnrun and scontrol."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def stand_ins(folder: Path, **scripts) -> dict:
    """Executable stand-ins on PATH, ahead of the real ones."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = bin_dir / name.replace("_", "-")
        path.write_text("#!/usr/bin/env bash\n" + body)
        path.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(folder)}


RECORD = 'echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES OMP_NUM_THREADS=$OMP_NUM_THREADS $*" >> "$HOME/calls"\n'
GPUS = "echo 'GPU 0: NVIDIA H200 (UUID: GPU-0)'; echo 'GPU 1: NVIDIA H200 (UUID: GPU-1)'\n"
MIG = (
    "echo 'GPU 0: NVIDIA A100 (UUID: GPU-0)'\n"
    "echo '  MIG 3g.40gb     Device  0: (UUID: MIG-aaa)'\necho '  MIG 3g.40gb     Device  1: (UUID: MIG-bbb)'\n"
)


@pytest.mark.parametrize(
    "smi,visible,expected",
    [
        (GPUS, None, ["0", "1", "0"]),
        (GPUS, "5,7", ["5", "7", "5"]),  # a SLURM allocation / the user's subset
        (MIG, None, ["MIG-aaa", "MIG-bbb", "MIG-aaa"]),  # MIG devices, not the GPU that holds them
    ],
)
def test_seeds_go_to_the_gpus_this_job_may_use(tmp_path, smi, visible, expected):
    env = stand_ins(tmp_path, nvidia_smi=smi, nnrun=RECORD, nnrun_report="exit 0\n")
    if visible:
        env["CUDA_VISIBLE_DEVICES"] = visible
    result = subprocess.run(
        ["bash", str(SCRIPTS / "seeds_on_gpus.sh"), "trainer.epochs=1", "1", "2", "3"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    calls = sorted((tmp_path / "calls").read_text().splitlines(), key=lambda c: c.split("trainer.seed=")[1])
    assert [c.split()[0].split("=")[1] for c in calls] == expected
    cores = os.cpu_count()
    assert all(c.split()[1] == f"OMP_NUM_THREADS={max(1, cores // 3)}" for c in calls)  # cores shared out


def slurm(tmp_path, child: str, signals: int = 1) -> subprocess.Popen:
    env = stand_ins(tmp_path, nnrun=child, scontrol='echo "$*" >> "$HOME/scontrol"\n')
    env["SLURM_JOB_ID"] = "42"
    proc = subprocess.Popen(
        ["bash", str(SCRIPTS / "slurm_job.sh"), "model=cnn"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    for _ in range(signals):
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.3)
    proc.wait(timeout=30)
    return proc


def test_slurm_requeues_a_run_that_saved_on_usr1(tmp_path):
    child = "trap 'sleep 0.3; exit 138' USR1\ntouch \"$HOME/started\"\nwhile true; do sleep 0.05; done\n"
    proc = slurm(tmp_path, child)
    assert proc.returncode == 138
    assert (tmp_path / "scontrol").read_text().split() == ["requeue", "42"]


def test_slurm_does_not_requeue_a_run_that_finished(tmp_path):
    # nnrun finishes its last epoch (exit 0) after the signal; a second signal meanwhile cut the
    # script's wait short again: only nnrun's own exit code may decide, never the interrupted wait's 138
    child = "trap 'sleep 1; exit 0' USR1\ntouch \"$HOME/started\"\nwhile true; do sleep 0.05; done\n"
    proc = slurm(tmp_path, child, signals=2)
    assert proc.returncode == 0, proc.stdout.read()
    assert not (tmp_path / "scontrol").exists()


def test_the_slurm_log_survives_requeues():
    header = [line for line in (SCRIPTS / "slurm_job.sh").read_text().splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --open-mode=append" in header  # a requeued attempt appends
    output = next(line for line in header if line.startswith("#SBATCH --output="))
    assert "/" not in output.split("=", 1)[1]  # no folder that may not exist


MIXED = (
    "echo 'GPU 0: NVIDIA A100 (UUID: GPU-0)'\necho '  MIG 3g.40gb     Device  0: (UUID: MIG-aaa)'\n"
    "echo 'GPU 1: NVIDIA A100 (UUID: GPU-1)'\n"
)


@pytest.mark.parametrize(
    "visible,seeds,expected",
    [
        ("", ["1", "2"], "names no GPU"),  # set but empty: this job has no GPU
        ("0,,1", ["1", "2"], None),
        (None, ["1", "1"], "given twice"),
        (None, ["1", ""], "not a whole number"),
    ],
)
def test_seed_scripts_refuse_what_would_hide_a_run(tmp_path, visible, seeds, expected):
    env = stand_ins(tmp_path, nvidia_smi=MIXED, nnrun=RECORD, nnrun_report="exit 0\n")
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    result = subprocess.run(
        ["bash", str(SCRIPTS / "seeds_on_gpus.sh"), "trainer.epochs=1", *seeds],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if expected:
        assert result.returncode == 2 and expected in result.stdout
    else:  # empty entries dropped, no seed left without a GPU
        assert result.returncode == 0
        assert sorted(c.split()[0] for c in (tmp_path / "calls").read_text().splitlines()) == [
            "CUDA_VISIBLE_DEVICES=0",
            "CUDA_VISIBLE_DEVICES=1",
        ]


def test_a_box_with_mig_and_whole_gpus_uses_both(tmp_path):
    env = stand_ins(tmp_path, nvidia_smi=MIXED, nnrun=RECORD, nnrun_report="exit 0\n")
    result = subprocess.run(
        ["bash", str(SCRIPTS / "seeds_on_gpus.sh"), "trainer.epochs=1", "1", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(c.split()[0] for c in (tmp_path / "calls").read_text().splitlines()) == [
        "CUDA_VISIBLE_DEVICES=1",
        "CUDA_VISIBLE_DEVICES=MIG-aaa",
    ]


def test_the_epoch_speed_benchmark_runs_and_prints_its_table(tmp_path, monkeypatch, capsys):
    """A smoke run (random data, 2 batches): the script run as __main__ in this process, where torch
    and nnrun are imported already (a new Python would add only their import time)."""
    import runpy
    import sys

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "epoch_speed.py"
    args = ["--models", "mlp", "--repeats", "1", "--epochs", "1", "--batches", "2", "--startup-repeats", "0"]
    monkeypatch.setattr(sys, "argv", [str(bench), *args, "--root", str(tmp_path / "none")])
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts benchmarks/ first, for its own imports
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(bench), run_name="__main__")
    out = capsys.readouterr().out
    assert done.value.code in (None, 0), out[-2000:]
    row = next(line for line in out.splitlines() if line.startswith("| mlp |"))
    assert row.endswith("x |") and float(row.split("|")[-2].strip().rstrip("x")) > 0
