"""--multirun: one folder per job; a failing job is reported and the others still run."""

import pytest
import yaml

from conftest import nnrun, summary


def test_two_by_two_sweep_gives_four_job_folders(tmp_path):
    sweep = tmp_path / "sweep"
    result = nnrun("--multirun", "model=mlp,cnn", "optimizer.lr=0.001,0.003", "trainer.epochs=1",
                   f"hydra.sweep.dir={sweep}", cwd=tmp_path)
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


@pytest.mark.slow
def test_the_default_sweep_folder_is_under_outputs_multirun(tmp_path):
    result = nnrun("--multirun", "trainer.seed=1,2", "trainer.epochs=1", "trainer.limit_batches=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "outputs" / "multirun").glob("*/*/[01]/summary.json"))) == 2


def test_a_failing_job_is_named_and_the_rest_still_run(tmp_path):
    sweep = tmp_path / "sweep"
    result = nnrun("--multirun", "model.dropout=1.5,0.1", "trainer.epochs=1", f"hydra.sweep.dir={sweep}",
                   cwd=tmp_path)
    assert result.returncode == 2
    assert "job [model.dropout=1.5 trainer.epochs=1]" in result.stderr and "Traceback" not in result.stderr
    assert summary(sweep / "0")["status"] == "failed"
    assert summary(sweep / "1")["status"] == "completed"
