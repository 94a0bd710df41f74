"""data=csv and the three tasks: binary, multiclass and regression tables made here, trained
through the CLI; the metrics it reports are recomputed with scikit-learn from its own checkpoint
and preprocessing.json."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as skm

from conftest import metrics, one_line_error, refused, summary, train

NO_STOP = "~callbacks.early_stopping"


def table(n: int, task: str, seed: int, shift: float = 0.0) -> pd.DataFrame:
    """Two numeric columns on different scales, one text column, and a target that depends on all."""
    rng = np.random.default_rng(seed)
    age = rng.normal(50 + shift, 10, n).round(1)
    dose = rng.normal(500, 200, n).round()
    smoker = rng.choice(["yes", "no"], n)
    signal = 0.15 * (age - 50) + 0.01 * (dose - 500) + 2.0 * (smoker == "yes") - 1.0
    frame = pd.DataFrame({"age": age, "dose": dose, "smoker": smoker})
    if task == "binary":
        frame["outcome"] = np.where(signal + rng.normal(0, 0.5, n) > 0, "sick", "well")
    elif task == "multiclass":
        frame["outcome"] = pd.cut(signal, [-np.inf, -1, 1, np.inf], labels=["low", "mid", "high"]).astype(str)
    else:
        frame["outcome"] = signal * 10 + rng.normal(0, 0.5, n)
    return frame


def write(tmp_path, name: str, frame: pd.DataFrame) -> str:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return str(path)


def predictions(run_dir, frame: pd.DataFrame) -> np.ndarray:
    """The best checkpoint's outputs on frame, preprocessed as preprocessing.json says (and, for a
    regression target it standardized, scaled back as it says)."""
    from nnrun.models import build_model

    prep = json.loads((run_dir / "preprocessing.json").read_text())
    parts = []
    for column in prep["transform"]["columns"]:
        values = frame[column["name"]]
        if column["kind"] == "numeric":
            parts.append(((values.to_numpy(float) - column["mean"]) / column["std"])[:, None])
        else:
            parts.append(np.stack([(values.astype(str) == c).to_numpy(float) for c in column["categories"]], 1))
    x = torch.tensor(np.concatenate(parts, 1), dtype=torch.float32)
    state = torch.load(run_dir / "checkpoints/best.pt", weights_only=True)
    model = build_model(
        **state["config"]["model"],
        input_shape=prep["input_shape"],
        num_classes=len(prep["classes"]) if prep["task"] == "multiclass" else 1,
    )
    model.load_state_dict(state["model"])
    with torch.no_grad():
        out = model.eval()(x).double().numpy()
    target = prep.get("target")  # regression trained on standardized targets: back to the target's units
    return out * target["std"] + target["mean"] if target else out


def test_binary_metrics_match_scikit_learn(tmp_path):
    path = write(tmp_path, "train.csv", table(300, "binary", 0))
    test = table(100, "binary", 1)
    test_path = write(tmp_path, "test.csv", test)
    _, run_dir = train(
        tmp_path,
        "data=csv",
        f"data.path={path}",
        f"data.test_path={test_path}",
        "data.target=outcome",
        "trainer.epochs=8",
        plots=True,
    )
    info = summary(run_dir)
    assert info["task"] == "binary"
    assert list(metrics(run_dir)[0]) == [
        "epoch",
        "loss",
        "accuracy",
        "precision",
        "recall",
        "f1",
        "val_loss",
        "val_accuracy",
        "val_precision",
        "val_recall",
        "val_f1",
        "val_auc",
        "lr",
        "epoch_time",
    ]
    score = predictions(run_dir, test)[:, 0]
    truth = (test["outcome"] == "well").to_numpy()  # classes in sorted order: sick=0, well=1
    predicted = score > 0
    assert info["test_accuracy"] == pytest.approx(skm.accuracy_score(truth, predicted))
    assert info["test_precision"] == pytest.approx(skm.precision_score(truth, predicted))
    assert info["test_recall"] == pytest.approx(skm.recall_score(truth, predicted))
    assert info["test_f1"] == pytest.approx(skm.f1_score(truth, predicted))
    assert info["test_auc"] == pytest.approx(skm.roc_auc_score(truth, score))
    assert info["test_auc"] > 0.85  # it learned the rule, not just the priors
    assert np.array_equal(info["confusion_matrix"], skm.confusion_matrix(truth, predicted))
    assert (run_dir / "curves.png").exists() and (run_dir / "confusion_matrix.png").exists()


def test_regression_metrics_match_scikit_learn(tmp_path):
    path = write(tmp_path, "train.csv", table(300, "regression", 0))
    test = table(100, "regression", 1)
    test_path = write(tmp_path, "test.csv", test)
    _, run_dir = train(
        tmp_path,
        "data=csv",
        f"data.path={path}",
        f"data.test_path={test_path}",
        "data.target=outcome",
        "trainer.epochs=30",
        "trainer.monitor=val_r2",
        plots=True,
    )
    info = summary(run_dir)
    assert info["task"] == "regression" and info["mode"] == "max"  # r2: higher is better
    assert [k for k in metrics(run_dir)[0] if "r2" in k or "mae" in k] == ["mae", "r2", "val_mae", "val_r2"]
    value = predictions(run_dir, test)[:, 0]
    truth = test["outcome"].to_numpy()
    assert info["test_mae"] == pytest.approx(skm.mean_absolute_error(truth, value), rel=1e-4)
    assert info["test_rmse"] == pytest.approx(skm.mean_squared_error(truth, value) ** 0.5, rel=1e-4)
    assert info["test_r2"] == pytest.approx(skm.r2_score(truth, value), rel=1e-4)
    assert info["test_r2"] > 0.9
    assert (run_dir / "curves.png").exists()
    assert not (run_dir / "confusion_matrix.png").exists() and "confusion_matrix" not in info


LOSS = pytest.mark.slow(reason="a training run per loss; mae agrees with its metric by default")


@pytest.mark.parametrize(
    "loss,expected",
    [
        pytest.param(["loss=mse"], lambda row, s: (float(row["val_rmse"]) / s) ** 2, marks=LOSS),
        (["loss=mae"], lambda row, s: float(row["val_mae"]) / s),
        pytest.param(
            ["loss=huber", "loss.delta=1e6"],
            lambda row, s: 0.5 * (float(row["val_rmse"]) / s) ** 2,
            marks=LOSS,
        ),  # all errors < delta
    ],
)
def test_regression_losses_agree_with_the_metrics(tmp_path, loss, expected):
    """The loss is the objective on the standardized target (data.scale_target), the metrics are in
    the target's units: they differ by the target's std, which preprocessing.json records."""
    path = write(tmp_path, "t.csv", table(200, "regression", 0))
    _, run_dir = train(tmp_path, "data=csv", f"data.path={path}", "data.target=outcome", "trainer.epochs=3", *loss)
    std = json.loads((run_dir / "preprocessing.json").read_text())["target"]["std"]
    assert std > 2  # the table's target is not already standardized: the test can tell the units apart
    for row in metrics(run_dir):
        assert float(row["val_loss"]) == pytest.approx(expected(row, std), rel=1e-4)


def test_multiclass_text_labels_and_a_categorical_feature(tmp_path):
    path = write(tmp_path, "patients.csv", table(600, "multiclass", 0))
    result, run_dir = train(tmp_path, "data=csv", f"data.path={path}", "data.target=outcome", "trainer.epochs=15")
    info = summary(run_dir)
    assert info["task"] == "multiclass" and info["test_accuracy"] > 0.8
    prep = json.loads((run_dir / "preprocessing.json").read_text())
    assert prep["classes"] == ["high", "low", "mid"]
    assert [c["kind"] for c in prep["transform"]["columns"]] == ["numeric", "numeric", "categorical"]
    assert prep["input_shape"] == [4]  # age, dose, smoker=no, smoker=yes
    assert len(info["confusion_matrix"]) == 3
    assert "1 categorical: smoker" in result.stdout and "looks like a multiclass target" in result.stdout


TASK = pytest.mark.slow(reason="a training run per column; text labels and data.task by default")


@pytest.mark.parametrize(
    "target,override,task",
    [
        pytest.param([0.5, 1.25, 2.0, 3.5], None, "regression", marks=TASK),  # fractional numbers
        (["cat", "dog", "dog", "cat"], None, "binary"),  # two text values
        pytest.param([0, 1, 2, 3], None, "multiclass", marks=TASK),  # few integers
        ([0, 1, 2, 3], "regression", "regression"),  # ... unless told
    ],
)
def test_task_follows_the_target_column(tmp_path, target, override, task):
    frame = pd.DataFrame({"x": np.arange(40, dtype=float), "y": target * 10})
    path = write(tmp_path, "t.csv", frame)
    extra = [f"data.task={override}"] if override else []
    _, run_dir = train(
        tmp_path,
        "data=csv",
        f"data.path={path}",
        "data.target=y",
        "data.val_split=0",
        "trainer.monitor=loss",
        "data.test_split=0.25",
        "trainer.epochs=1",
        *extra,
    )
    assert summary(run_dir)["task"] == task


def test_scaling_is_fitted_on_the_training_rows_only(tmp_path):
    train_frame, test_frame = table(200, "regression", 0), table(100, "regression", 1, shift=40.0)
    path, test_path = write(tmp_path, "a.csv", train_frame), write(tmp_path, "b.csv", test_frame)
    _, run_dir = train(
        tmp_path,
        "data=csv",
        f"data.path={path}",
        f"data.test_path={test_path}",
        "data.target=outcome",
        "data.val_split=0",
        "trainer.monitor=loss",
        "trainer.epochs=1",
    )
    age = json.loads((run_dir / "preprocessing.json").read_text())["transform"]["columns"][0]
    assert age["mean"] == pytest.approx(train_frame["age"].mean())
    assert age["std"] == pytest.approx(train_frame["age"].std(ddof=0))  # scikit-learn's StandardScaler


def test_zero_class_weight_for_negatives_makes_every_prediction_positive(tmp_path):
    # Keras semantics: class_weight scales each sample's loss; negatives weigh nothing here.
    path = write(tmp_path, "t.csv", table(300, "binary", 0))
    _, run_dir = train(
        tmp_path,
        "data=csv",
        f"data.path={path}",
        "data.target=outcome",
        "trainer.class_weight=[0.0,1.0]",
        "trainer.epochs=10",
        NO_STOP,
        "optimizer.lr=0.01",
    )
    info = summary(run_dir)
    assert info["test_recall"] == 1.0
    positives = sum(info["confusion_matrix"][1]) / sum(map(sum, info["confusion_matrix"]))
    assert info["test_precision"] == pytest.approx(positives)


def test_missing_values_are_named_or_imputed(tmp_path):
    frame = table(100, "binary", 0)
    frame.loc[[6, 9], "dose"] = np.nan
    path = write(tmp_path, "gaps.csv", frame)
    args = ["data=csv", f"data.path={path}", "data.target=outcome", "trainer.epochs=1", "trainer.plots=false"]
    result = refused(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert one_line_error(result) == (
        f"nnrun: error: column 'dose' has 2 missing value(s), the first at {path} "
        f"row 8; fill them in, or set data.impute=mean (or median; categorical "
        f"columns get their most frequent value)"
    )
    assert not list(tmp_path.glob("outputs/*/*/metrics.csv"))
    _, run_dir = train(tmp_path, *args[:-1], "data.impute=median")
    dose = json.loads((run_dir / "preprocessing.json").read_text())["transform"]["columns"][1]
    assert dose["fill"] == pytest.approx(frame["dose"].median(), abs=60)  # the training rows' median


@pytest.mark.parametrize(
    "args,message",
    [
        (["data.path=MISSING.csv", "data.target=y"], "data.path=MISSING.csv: no such file"),
        (["data.target=outcom"], "data.target=outcom is not a column of"),
        (["data.target=outcome", "data.features=[age,weight]"], "data.features names weight, not column(s) of"),
        (["data.target=outcome", "data.task=regression"], "data.task=regression, but column 'outcome' holds text"),
        (["data.target=outcome", "data.task=sometimes"], "data.task=sometimes is not one of"),
        (["data.target=outcome", "loss=mse"], "loss=mse fits regression targets, but this data's task is binary"),
        (["data.target=dose", "loss=ce"], "loss=ce fits multiclass targets, but this data's task is regression"),
        (["data.target=dose", "trainer.class_weight=balanced"], "weighs classes, but this data's task is regression"),
        (["data.target=outcome", "trainer.monitor=val_r2"], "trainer.monitor=val_r2, but the run logs only"),
    ],
)
def test_table_mistakes_are_one_line_errors(tmp_path, args, message):
    path = write(tmp_path, "t.csv", table(50, "binary", 0))
    result = refused(
        "data=csv",
        *([f"data.path={path}"] if not args[0].startswith("data.path") else []),
        *args,
        "trainer.epochs=1",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert message in one_line_error(result)


def test_a_column_of_mixed_types_is_said_once_in_nnrun_words(tmp_path):
    """A column of numbers with text after pandas's first chunk (~260,000 rows): pandas's DtypeWarning
    (with its source path) never reaches the console; nnrun names the column and cell, once."""
    rows = 300_000
    codes = np.arange(rows).astype(str)
    codes[-1] = "x"
    frame = pd.DataFrame({"code": codes, "size": np.arange(rows) % 7, "outcome": np.arange(rows) % 2})
    path = write(tmp_path, "big.csv", frame)
    result = refused("data=csv", f"data.path={path}", "data.target=outcome", "trainer.epochs=1", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = one_line_error(result)  # no DtypeWarning line before it
    assert "column 'code' of" in line and f"'x' at row {rows + 1}" in line, line
