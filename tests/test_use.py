"""Using a trained model: nnrun-eval reproduces the run's test metrics, nnrun-predict writes one
row per input with the run's own preprocessing, and nnrun.load_run(...).predict matches it."""

import csv
import shutil

import numpy as np
import pandas as pd
import pytest

import nnrun
from conftest import one_line_error, refused, summary, tool, train


def read(path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def patients(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age, smoker = rng.normal(50, 10, n).round(1), rng.choice(["yes", "no"], n)
    signal = 0.15 * (age - 50) + 2.0 * (smoker == "yes") - 1.0 + rng.normal(0, 0.5, n)
    return pd.DataFrame({"age": age, "smoker": smoker, "outcome": np.where(signal > 0, "sick", "well")})


def test_a_table_model_evaluates_predicts_and_loads(tmp_path):
    patients(300, 0).to_csv(tmp_path / "patients.csv", index=False)
    _, run_dir = train(tmp_path, "data=csv", "data.path=patients.csv", "data.target=outcome", "trainer.epochs=3")
    info = summary(run_dir)

    result = tool("nnrun-eval", f"run={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"test_accuracy: {info['test_accuracy']:.4f}" in result.stdout
    evaluated = __import__("json").loads((run_dir / "eval.json").read_text())
    for key in ("test_accuracy", "test_auc", "test_f1", "test_loss"):
        assert evaluated[key] == pytest.approx(info[key], rel=1e-6, abs=1e-7), key

    new = patients(25, 7).drop(columns="outcome")  # rows the run never saw
    new.loc[3, "smoker"] = "sometimes"  # a category it never saw: all zeros
    new.to_csv(tmp_path / "new.csv", index=False)
    result = tool("nnrun-predict", f"run={run_dir}", "input=new.csv", "output=out.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = read(tmp_path / "out.csv")
    assert len(rows) == 25 and set(rows[0]) == {"row", "prediction", "probability_well"}
    probs = nnrun.load_run(run_dir).predict(new)
    assert [float(r["probability_well"]) for r in rows] == pytest.approx(probs.tolist(), rel=1e-5)
    assert [r["prediction"] for r in rows] == ["well" if p > 0.5 else "sick" for p in probs]

    # another test file: scored with the run's fitted scaling, and in agreement with predict
    labelled = patients(40, 9)
    labelled.to_csv(tmp_path / "later.csv", index=False)
    result = tool("nnrun-eval", f"run={run_dir}", "data.test_path=later.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    expected = np.mean(nnrun.load_run(run_dir).predict_classes(labelled) == labelled["outcome"].to_numpy())
    assert "40 test samples" in result.stdout and f"test_accuracy: {expected:.4f}" in result.stdout


def test_an_image_model_predicts_raw_pixels_from_npy(tmp_path):
    _, run_dir = train(tmp_path, "trainer.epochs=2")  # MLP on the 8x8 digits
    info = summary(run_dir)
    result = tool("nnrun-eval", f"run={run_dir}", cwd=tmp_path)
    assert result.returncode == 0 and f"test_accuracy: {info['test_accuracy']:.4f}" in result.stdout

    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    np.save(tmp_path / "digits.npy", images[:40].reshape(40, 8, 8))  # raw 0..16 values, no channel axis
    result = tool("nnrun-predict", f"run={run_dir}", "input=digits.npy", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = read(tmp_path / "digits_predictions.csv")
    assert len(rows) == 40 and len(rows[0]) == 2 + 10
    run = nnrun.load_run(run_dir)
    assert [r["prediction"] for r in rows] == run.predict_classes(images[:40].reshape(40, 8, 8))
    assert np.mean([r["prediction"] == str(y) for r, y in zip(rows, labels[:40])]) > 0.7


def test_bad_use_is_one_line(tmp_path):
    result = tool("nnrun-predict", f"run={tmp_path}", "input=x.csv", cwd=tmp_path)
    assert result.returncode == 2 and "model.safetensors" in one_line_error(result)
    result = tool("nnrun-eval", "folder", cwd=tmp_path)
    assert result.returncode == 2 and "key=value" in one_line_error(result)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch 2.14 marks torch.jit deprecated
def test_export_to_torchscript_gives_the_same_outputs(tmp_path):
    import torch

    _, run_dir = train(tmp_path, "trainer.epochs=1", "model=cnn", "model.channels=[4]")
    result = tool("nnrun-export", f"run={run_dir}", "format=torchscript", cwd=tmp_path)
    assert result.returncode == 0 and "model.ts" in result.stdout, result.stderr
    run = nnrun.load_run(run_dir)
    x = run.prepare(np.random.default_rng(0).integers(0, 17, (6, 8, 8)))
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(run_dir / "model.ts"))(x), run.model(x), atol=1e-6)
    result = tool("nnrun-export", f"run={run_dir}", "format=keras", cwd=tmp_path)
    assert result.returncode == 2 and "torchscript, onnx, safetensors" in one_line_error(result)


@pytest.mark.parametrize(
    "model",
    [
        "lstm",
        pytest.param(
            "cnn", marks=pytest.mark.slow(reason="a CNN trained and exported; the lstm export runs by default")
        ),
    ],
)
def test_export_to_onnx_runs_in_onnxruntime_at_any_batch_size(tmp_path, model):
    ort = pytest.importorskip("onnxruntime")
    import torch

    _, run_dir = train(tmp_path, "trainer.epochs=1", f"model={model}")
    result = tool("nnrun-export", f"run={run_dir}", "format=onnx", cwd=tmp_path)
    assert result.returncode == 0 and "model.onnx" in result.stdout and "Warning" not in result.stderr, result.stderr
    run = nnrun.load_run(run_dir)
    session = ort.InferenceSession(str(run_dir / "model.onnx"))
    for n in (1, 7):  # exported with a batch of 2
        x = run.prepare(np.random.default_rng(n).integers(0, 17, (n, 8, 8)))
        with torch.no_grad():
            expected = run.model(x).numpy()
        assert np.allclose(session.run(None, {"input": x.numpy()})[0], expected, atol=1e-5)


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    """One epoch on 60 patients, trained once for the tests that tamper with a copy of it."""
    folder = tmp_path_factory.mktemp("table")
    patients(60, 0).to_csv(folder / "patients.csv", index=False)
    return train(folder, "data=csv", "data.path=patients.csv", "data.target=outcome", "trainer.epochs=1")[1]


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda cols: cols[0].update(std=0), "std above 0"),
        (lambda cols: cols[0].update(mean=None), "finite mean"),
        (lambda cols: cols.append(dict(cols[0])), "repeated one"),
        (lambda cols: cols[0].update(kind="weird"), "not numeric or categorical"),
        (lambda cols: cols[1].update(categories=[]), "list of its categories"),
        (lambda cols: cols[1].update(categories=["no", "no"]), "repeats a category"),
        (lambda cols: cols[1].update(categories=[f"c{i}" for i in range(100_000)]), "the model takes 3"),
    ],
    ids=["std_0", "mean_missing", "repeated_name", "unknown_kind", "no_categories", "repeated_category", "too_wide"],
)
def test_a_crafted_table_transform_is_refused_in_one_line(tmp_path, table_run, change, words):
    import json

    run_dir = shutil.copytree(table_run, tmp_path / "run")
    prep = json.loads((run_dir / "preprocessing.json").read_text())
    change(prep["transform"]["columns"])
    (run_dir / "preprocessing.json").write_text(json.dumps(prep))
    patients(5, 1).drop(columns="outcome").to_csv(tmp_path / "new.csv", index=False)
    result = tool("nnrun-predict", f"run={run_dir}", "input=new.csv", cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert "preprocessing.json" in line and words in line, line


def test_a_text_column_empty_in_the_training_rows_is_named(tmp_path):
    frame = patients(80, 0)
    frame["note"] = None
    frame.to_csv(tmp_path / "train.csv", index=False)
    later = patients(20, 1)
    later["note"] = "seen"
    later.to_csv(tmp_path / "test.csv", index=False)
    result = refused(
        "data=csv",
        "data.path=train.csv",
        "data.test_path=test.csv",
        "data.target=outcome",
        "data.impute=mean",
        "trainer.epochs=1",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "column 'note' has no values in the training rows" in one_line_error(result)
