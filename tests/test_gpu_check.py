"""benchmarks/gpu_check.sh, the one prepared check for a CUDA machine: its plan (--dry-run) needs
no GPU, torch or Hydra, and names every step with its exact command."""

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def test_the_dry_run_prints_every_step_and_runs_nothing(tmp_path):
    result = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out"), "GPU_CHECK_WORK": str(tmp_path / "work")},
    )
    assert result.returncode == 0, result.stderr
    plan = result.stdout
    for step in range(1, 12):
        assert f"\n{step}. " in plan, f"step {step} missing from the plan:\n{plan}"
    assert "nnrun --multirun model=mlp,cnn,lstm trainer.precision=32,bf16,16" in plan
    assert "TORCH_LOGS=recompiles" in plan and "trainer.deterministic=true" in plan
    assert "set_sync_debug_mode" in plan and "seeds_on_gpus.sh" in plan and "hydra/launcher=parallel" in plan
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()  # a plan writes nothing


def test_an_unknown_argument_is_refused(tmp_path):
    result = subprocess.run(
        ["bash", str(SCRIPT), "--fast"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2 and "unknown argument --fast" in result.stderr
