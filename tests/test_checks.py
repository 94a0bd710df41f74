"""Pre-flight checks: each fires on a crafted bad input, stays silent on a good one, and a
warning can be silenced by name (trainer.checks.<name>=false)."""

import numpy as np
import pandas as pd
import pytest

from conftest import one_line_error, refused, summary, train

QUICK = ["trainer.epochs=1", "~callbacks.early_stopping"]


def table(n: int, seed: int = 0, positives: float = 0.5, scale: float = 1.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n) * scale
    y = (rng.random(n) < positives).astype(int)
    return pd.DataFrame({"a": a + y, "b": b, "y": y})


def warned(run_dir) -> dict:
    return {w["check"]: w["message"] for w in summary(run_dir)["warnings"]}


def test_a_good_table_passes_every_check(tmp_path):
    table(300).to_csv(tmp_path / "good.csv", index=False)
    result, run_dir = train(tmp_path, "data=csv", "data.path=good.csv", "data.target=y", *QUICK)
    assert warned(run_dir) == {} and "check " not in result.stdout + result.stderr


def test_a_bad_table_warns_of_scale_imbalance_and_overlap_and_each_can_be_silenced(tmp_path):
    bad = table(300, positives=0.08, scale=5000.0)
    pd.concat([bad, bad]).to_csv(tmp_path / "bad.csv", index=False)  # every row twice
    args = ["data=csv", "data.path=bad.csv", "data.target=y", "data.normalize=false", *QUICK]
    result, run_dir = train(tmp_path, *args, name="loud")
    found = warned(run_dir)
    assert {"unnormalized_inputs", "class_imbalance", "overlap"} <= set(found), found
    assert "trainer.class_weight=balanced" in found["class_imbalance"]
    assert "also appear in the training split" in found["overlap"]
    assert "normalis" in found["unnormalized_inputs"]
    assert "check class_imbalance:" in result.stdout + result.stderr  # and on the console
    quiet = [f"trainer.checks.{name}=false" for name in found]
    result, run_dir = train(tmp_path, *args, *quiet, name="quiet")
    assert warned(run_dir) == {} and "check " not in result.stdout + result.stderr


@pytest.mark.slow(reason="one more training run; the imbalance warning that names this fix runs by default")
def test_class_weights_answer_the_imbalance_warning(tmp_path):
    table(300, positives=0.08).to_csv(tmp_path / "rare.csv", index=False)
    _, run_dir = train(
        tmp_path, "data=csv", "data.path=rare.csv", "data.target=y", "trainer.class_weight=balanced", *QUICK
    )
    assert "class_imbalance" not in warned(run_dir)


MODELS = """
from torch import nn
from nnrun.models.mlp import MLP

class Softmaxed(MLP):
    def __init__(self, input_shape, num_classes, **options):
        super().__init__(input_shape, num_classes, **options)
        self.append(nn.Softmax(dim=1))

class Wide(MLP):
    def __init__(self, input_shape, num_classes, **options):
        super().__init__(input_shape, num_classes + 3, **options)

class Loud(MLP):
    def __init__(self, input_shape, num_classes, **options):
        super().__init__(input_shape, num_classes, **options)
        self[-1].weight.data *= 300
"""


def test_a_first_loss_far_above_chance_warns(tmp_path):
    (tmp_path / "my_code.py").write_text(MODELS)
    _, run_dir = train(tmp_path, "imports=[my_code]", "+model._target_=my_code.Loud", *QUICK, name="loud")
    message = warned(run_dir)["first_loss"]
    assert "ln 10" in message  # silent on a good model: test_a_good_table_passes_every_check


DATASETS = """
import torch
from nnrun.data import DATASETS, Loaded

@DATASETS.register("nan_rows")
def nan_rows(root, seed, **options):
    x, y = torch.randn(100, 4), torch.arange(100) % 2
    x[17, 2] = float("nan")
    return Loaded(train=(x, y), test=(torch.randn(20, 4), y[:20]), classes=["a", "b"])

@DATASETS.register("one_class_val")
def one_class_val(root, seed, **options):
    x, y = torch.randn(100, 4), torch.arange(100) % 3
    return Loaded(train=(x, y), val=(x[:10], torch.zeros(10, dtype=torch.long)), test=(x[:20], y[:20]),
                  classes=["a", "b", "c"])

@DATASETS.register("old_dict")
def old_dict(root, seed, **options):
    x, y = torch.randn(100, 4), torch.arange(100) % 2
    return {"train": (x, y), "test": (x[:20], y[:20]), "classes": ["a", "b"]}
"""


@pytest.mark.parametrize(
    "code, overrides, words",
    [
        (MODELS, ["+model._target_=my_code.Softmaxed"], ["softmax", "logits"]),
        (MODELS, ["+model._target_=my_code.Wide"], ["(13,)", "10 logits"]),
        # built-in loaders catch these in the file, naming its row; a user's own loader meets the same checks
        (DATASETS, ["data.name=nan_rows"], ["train data has NaN or infinite inputs in sample 17"]),
        (DATASETS, ["data.name=one_class_val"], ["validation split holds a single class (a)"]),
        # a loader returns nnrun.data.Loaded (docs/extending.md), not the dict of earlier versions
        (DATASETS, ["data.name=old_dict"], ["data.name=old_dict", "returned a dict", "nnrun.data.Loaded("]),
    ],
    ids=["softmax_output", "output_shape", "non_finite_data", "single_class_validation", "loader_dict"],
)
def test_what_a_model_cannot_learn_from_is_refused_before_training(tmp_path, code, overrides, words):
    (tmp_path / "my_code.py").write_text(code)
    result = refused("imports=[my_code]", *overrides, *QUICK, cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert all(w in line for w in words), line
    assert not list(tmp_path.glob("outputs/*/*/metrics.csv"))  # stopped before training
