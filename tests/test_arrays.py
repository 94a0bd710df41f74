"""data=arrays end to end through the CLI, on tiny arrays saved here as a notebook would: each
shape (table, grey and colour images in either channel order, sequences), each kind of label,
data.val_path and Keras's validation_split rule (data.val_split_from=end), nnrun-predict on the
arrays, and the files refused."""

import csv
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

import nnrun
from conftest import FAST, one_line_error, refused, summary, tool, train
from nnrun.trained import predict_main


def predict(tmp_path, run_dir, file: str) -> list:
    """nnrun-predict's own entry point, in this process (a cold start costs seconds); its rows."""
    predict_main([f"run={run_dir}", f"input={tmp_path / file}", f"output={tmp_path / 'out.csv'}"])
    with open(tmp_path / "out.csv", newline="") as f:
        return list(csv.DictReader(f))


def predicts_as_load_run(tmp_path, run_dir, x: np.ndarray, column: str) -> None:
    """nnrun-predict on x saved as .npy gives, in column, what load_run(...).predict(x) gives."""
    np.save(tmp_path / "new.npy", x)
    rows = predict(tmp_path, run_dir, "new.npy")
    assert [float(r[column]) for r in rows] == pytest.approx(nnrun.load_run(run_dir).predict(x).tolist(), rel=1e-5)


def counts(stdout: str) -> tuple:
    """(train, val, test) sample counts from the run's data line."""
    return tuple(int(n) for n in re.search(r"(\d+) train, (\d+) val, (\d+) test", stdout).groups())


def images(n: int, seed: int, channels_last: bool = True):
    """(n, 8, 8, 3) uint8 images whose class (0, 1, 2) is where a bright band lies."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.integers(0, 60, size=(n, 8, 8, 3)).astype(np.uint8)
    for i, label in enumerate(y):
        x[i, label * 3 : label * 3 + 2, :, label] = 250
    return (x if channels_last else x.transpose(0, 3, 1, 2)), y


def prep(run_dir) -> dict:
    return json.loads((run_dir / "preprocessing.json").read_text())


def test_channels_last_images_are_transposed_and_predicted_in_their_own_layout(tmp_path):
    x, y = images(90, 0)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    result, run_dir = train(tmp_path, "data=arrays", "data.path=train.npz", "model=cnn", *FAST)
    assert counts(result.stdout) == (66, 6, 18)  # 20% test, then 10% of the rest, stratified
    assert "x is channels-last (N, H, W, C); transposed to (N, C, H, W)" in (run_dir / "nnrun.log").read_text()
    stored = prep(run_dir)
    assert stored["input_shape"] == [3, 8, 8] and stored["classes"] == ["0", "1", "2"]
    assert stored["transform"]["kind"] == "standardize" and stored["transform"]["data_format"] == "channels_last"

    new, _ = images(7, 5)  # predictions take (N, H, W, C) as training did
    np.save(tmp_path / "new.npy", new)
    rows = predict(tmp_path, run_dir, "new.npy")
    model = nnrun.load_run(run_dir).model
    mean, std = stored["transform"]["mean"], stored["transform"]["std"]
    by_hand = model((torch.from_numpy(new).permute(0, 3, 1, 2).float() - mean) / std).softmax(1).detach().numpy()
    assert [float(r["probability_1"]) for r in rows] == pytest.approx(by_hand[:, 1].tolist(), rel=1e-4, abs=1e-6)


def test_an_npy_pair_of_channels_first_images_with_one_hot_labels_and_a_val_path(tmp_path):
    x, y = images(90, 1, channels_last=False)
    np.save(tmp_path / "x.npy", x.astype(np.float32) / 255)
    np.save(tmp_path / "y.npy", np.eye(3, dtype=np.float32)[y])  # Keras's to_categorical
    xv, yv = images(12, 2, channels_last=False)
    np.save(tmp_path / "xv.npy", xv.astype(np.float32) / 255)
    np.save(tmp_path / "yv.npy", np.eye(3, dtype=np.float32)[yv])
    result, run_dir = train(
        tmp_path, "data=arrays", "data.x=x.npy", "data.y=y.npy", "data.val_path=[xv.npy,yv.npy]", "model=cnn", *FAST
    )
    assert counts(result.stdout) == (72, 12, 18)  # validation: the 12 rows of the file, none split off
    log = (run_dir / "nnrun.log").read_text()
    assert "y holds one-hot rows of 3 classes" in log and "data.val_split does not apply" in log
    stored = prep(run_dir)
    assert stored["classes"] == ["0", "1", "2"] and stored["transform"]["data_format"] == "channels_first"
    np.savez(tmp_path / "new.npz", x=xv[:5].astype(np.float32) / 255)
    assert len(predict(tmp_path, run_dir, "new.npz")) == 5


def test_3d_integers_are_grey_images_and_3d_floats_sequences(tmp_path):
    rng = np.random.default_rng(3)
    names = np.array(["cat", "dog"])[np.arange(60) % 2]  # string labels, saved without pickle
    grey = rng.integers(0, 255, size=(60, 8, 8)).astype(np.uint8)
    np.savez(tmp_path / "grey.npz", x=grey, y=names)
    _, run_dir = train(tmp_path, "data=arrays", "data.path=grey.npz", *FAST, name="grey")
    assert prep(run_dir)["input_shape"] == [1, 8, 8] and prep(run_dir)["classes"] == ["cat", "dog"]

    steps = rng.normal(size=(60, 8, 8)).astype(np.float32) * 50 + 10  # (N, steps, features)
    steps[:, :, 0] += np.where(names == "dog", 100, 0)[:, None]
    np.savez(tmp_path / "steps.npz", x=steps, y=names)
    _, run_dir = train(tmp_path, "data=arrays", "data.path=steps.npz", "model=lstm", *FAST, name="steps")
    stored = prep(run_dir)
    assert stored["input_shape"] == [8, 8] and stored["task"] == "binary"
    assert stored["transform"]["kind"] == "standardize_features" and len(stored["transform"]["mean"]) == 8
    predicts_as_load_run(tmp_path, run_dir, steps[:4], "probability_dog")


def test_a_table_regression_holds_out_keras_validation_split_rows(tmp_path):
    # 10 training rows; Keras's validation_split=0.25 trains on the first floor(10 * 0.75) = 7 and
    # validates on rows 7, 8, 9 (round(2.5) would hold out 2). Rows 7 and 8 repeat rows 0 and 1,
    # so the overlap check counts 2 of the 3 validation rows as seen in training.
    rng = np.random.default_rng(4)
    x = rng.normal(size=(10, 3)) * [1.0, 1000.0, 0.0]  # the third column constant
    x[7], x[8] = x[0], x[1]
    y = x[:, 0] * 3 + rng.normal(size=10) * 0.1
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=rng.normal(size=(6, 3)), y=rng.normal(size=6))
    result, run_dir = train(
        tmp_path,
        "data=arrays",
        "data.path=train.npz",
        "data.test_path=test.npz",
        "data.val_split=0.25",
        "data.val_split_from=end",
        *FAST,
    )
    assert counts(result.stdout) == (7, 3, 6)
    warnings = [w["message"] for w in summary(run_dir)["warnings"] if w["check"] == "overlap"]
    assert warnings and warnings[0].startswith("2 of 3 validation samples also appear in the training split")
    stored = prep(run_dir)["transform"]
    assert stored["kind"] == "standardize_features" and stored["layout"] == "table"
    assert stored["mean"] == pytest.approx(x[:7].mean(0).tolist())  # fitted on the 7 training rows only
    assert stored["std"][2] == 1.0  # a constant column is centred, not divided by 0
    predicts_as_load_run(tmp_path, run_dir, x[:4], "prediction")


def test_val_path_gives_the_validation_rows_of_csv_and_text_csv(tmp_path):
    rng = np.random.default_rng(5)
    table = pd.DataFrame({"a": rng.normal(size=80), "b": rng.normal(size=80)})
    table["label"] = np.where(table.a + table.b > 0, "up", "down")
    table[:60].to_csv(tmp_path / "train.csv", index=False)
    table[60:].to_csv(tmp_path / "val.csv", index=False)
    result, _ = train(
        tmp_path, "data=csv", "data.path=train.csv", "data.target=label", "data.val_path=val.csv", *FAST, name="csv"
    )
    assert counts(result.stdout) == (48, 20, 12)  # test: 20% of train.csv; validation: all of val.csv

    words = np.array(["good day", "fine sun", "bad rain", "awful storm"])
    texts = pd.DataFrame({"text": words[np.arange(50) % 4], "label": np.where(np.arange(50) % 4 < 2, "pos", "neg")})
    texts[:40].to_csv(tmp_path / "texts.csv", index=False)
    texts[40:].to_csv(tmp_path / "texts_val.csv", index=False)
    result, _ = train(
        tmp_path, "data=text_csv", "data.path=texts.csv", "data.val_path=texts_val.csv", *FAST, name="text"
    )
    assert counts(result.stdout) == (32, 10, 8)


@pytest.mark.parametrize(
    "arrays, expected",
    [
        ({"x": np.zeros((5, 3)), "y": np.array([{"a": 1}] * 5, dtype=object)}, "holds Python objects"),
        ({"x": np.zeros((5, 3)), "y": np.arange(4)}, "x holds 5 samples but y 4 labels"),
        ({"x": np.zeros((5, 3, 8, 4), dtype=np.uint8), "y": np.arange(5)}, "set data.data_format=channels_last"),
    ],
    ids=["pickled", "lengths", "channels"],
)
def test_arrays_that_cannot_be_trusted_or_read_are_refused_in_one_line(tmp_path, arrays, expected):
    for name, array in arrays.items():
        np.save(tmp_path / f"{name}.npy", array, allow_pickle=array.dtype == object)
    result = refused("data=arrays", "data.x=x.npy", "data.y=y.npy", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 2
    assert expected in one_line_error(result)


def raw_member(folder):
    """An .npz whose y member is not an .npy (NumPy hands back its bytes)."""
    import io
    import zipfile

    buffer = io.BytesIO()
    np.save(buffer, np.zeros((5, 3)))
    with zipfile.ZipFile(folder / "data.npz", "w") as archive:
        archive.writestr("x.npy", buffer.getvalue())
        archive.writestr("y.npy", b"just some bytes")


def huge_header(folder):
    """A 200-byte .npy whose header claims 10^12 rows (np.load would ask for 15 TB)."""
    import zipfile

    from numpy.lib import format as npformat

    with open(folder / "x.npy", "wb") as f:
        npformat.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 4)})
        f.write(b"\0" * 64)
    np.save(folder / "y.npy", np.arange(5))
    with zipfile.ZipFile(folder / "data.npz", "w") as archive:
        archive.write(folder / "x.npy", "x.npy")
        archive.write(folder / "y.npy", "y.npy")


def raw_first_member(folder):
    """A first member that is not .npy, then one whose header claims 8 TB: neither is read whole."""
    import io
    import zipfile

    from numpy.lib import format as npformat

    buffer = io.BytesIO()
    npformat.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    with zipfile.ZipFile(folder / "data.npz", "w") as archive:
        archive.writestr("x.npy", b"not an npy file at all")
        archive.writestr("y.npy", buffer.getvalue() + b"\0" * 64)


@pytest.mark.parametrize(
    "make, expected",
    [
        (raw_member, "is not a NumPy array"),
        (raw_first_member, "the member x.npy is not a NumPy array"),
        (huge_header, "truncated or damaged"),
        (
            lambda d: (
                np.savez(d / "data.npz", x=np.zeros((30, 2)), y=np.arange(30) % 2),
                np.savez(d / "val.npz", x=np.zeros((6, 2)), y=np.arange(6) % 3),
            ),
            "data.val_path=val.npz holds class(es) '2' that the training data lacks",
        ),
    ],
    ids=["raw-member", "raw-first-member", "huge-header", "class-only-in-val"],
)
def test_npz_files_that_would_crash_or_mislead_are_refused_in_one_line(tmp_path, make, expected):
    make(tmp_path)
    result = refused("data=arrays", "data.path=data.npz", "data.val_path=val.npz", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 2
    assert expected in one_line_error(result)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_class_only_in_a_csv_val_path_is_refused_and_bad_cells_name_their_own_file(tmp_path):
    rows = pd.DataFrame({"a": np.arange(40.0), "label": np.where(np.arange(40) % 2, "x", "y")})
    rows.to_csv(tmp_path / "train.csv", index=False)
    rows[:5].assign(label="z").to_csv(tmp_path / "val.csv", index=False)
    result = refused("data=csv", "data.path=train.csv", "data.target=label", "data.val_path=val.csv", cwd=tmp_path)
    assert result.returncode == 2
    assert "data.val_path=val.csv holds class(es) 'z'" in one_line_error(result)

    rows[:5].assign(a=["1", "2", "?", "4", "5"]).to_csv(tmp_path / "val.csv", index=False)
    result = refused("data=csv", "data.path=train.csv", "data.target=label", "data.val_path=val.csv", cwd=tmp_path)
    line = one_line_error(result)
    assert "column 'a' of val.csv" in line and "'?' at row 4" in line  # its own file and row, not train.csv's


def test_predict_refuses_nan_and_text_inputs_and_takes_a_1d_feature(tmp_path):
    x = np.linspace(-1, 1, 60)
    np.savez(tmp_path / "one.npz", x=x, y=(x > 0).astype(int))
    _, run_dir = train(tmp_path, "data=arrays", "data.path=one.npz", *FAST)
    np.save(tmp_path / "new.npy", np.array([-0.9, 0.9]))
    assert len(predict(tmp_path, run_dir, "new.npy")) == 2  # (N,) as training read it: one feature
    for name, array, expected in [
        ("nan.npy", np.array([[0.5], [np.nan]]), "NaN or infinite values in 1 sample(s), the first at index 1"),
        ("text.npy", np.array([["a"], ["b"]]), "inputs must be numbers"),
    ]:
        np.save(tmp_path / name, array)
        result = tool("nnrun-predict", f"run={run_dir}", f"input={name}", cwd=tmp_path)
        assert result.returncode == 2 and expected in one_line_error(result)


@pytest.mark.parametrize(
    "shape, dtype",
    [((600, 5), np.float32), ((600, 2, 6, 6), np.float32), ((600, 6, 6), np.uint8), ((600, 4, 3), np.float64)],
)
def test_splits_hold_their_own_rows_scaled_by_the_training_rows_without_a_second_copy(tmp_path, shape, dtype):
    """Each split holds the rows the seeded splits pick, with their labels, scaled by statistics of
    the training rows, as indexing and scaling the whole array gave; float arrays are split in place,
    so train, val and test share the loaded array's memory (a 2.4 GB .npz peaked at 6.8 GB; see
    benchmarks/arrays_memory.py)."""
    from nnrun.data import build_data, stratified_split

    rng = np.random.default_rng(0)
    x = (rng.integers(0, 256, shape) if dtype == np.uint8 else rng.normal(3.0, 2.0, shape)).astype(dtype)
    y = rng.integers(0, 3, shape[0])
    np.savez(tmp_path / "a.npz", x=x, y=y)
    data = build_data("arrays", batch_size=32, val_split=0.1, seed=0, path=str(tmp_path / "a.npz"))
    train_idx, test_idx = stratified_split(torch.from_numpy(y), 0.2, 0, "data.test_split")
    kept, val_idx = stratified_split(torch.from_numpy(y)[train_idx], 0.1, 0, "data.val_split")
    rows = {"train": train_idx[kept], "val": train_idx[val_idx], "test": test_idx}
    raw = torch.from_numpy(x.astype(np.float32) if dtype == np.float64 else x)
    raw = raw.unsqueeze(1) if len(shape) == 3 and dtype == np.uint8 else raw  # grey images: (N, 1, H, W)
    for part, picked in rows.items():
        split = getattr(data, part)
        assert torch.equal(split.y, torch.from_numpy(y)[picked]), part
        assert torch.equal(split.x, data.transform(raw[picked])), part
    fitted = raw[rows["train"]].double().numpy()
    described = data.transform.describe().as_json()
    if described["kind"] == "standardize":
        assert described["mean"] == pytest.approx(fitted.mean(), rel=1e-6)
    else:
        flat = fitted.reshape(-1, fitted.shape[-1])
        assert described["mean"] == pytest.approx(flat.mean(0).tolist(), rel=1e-12)
        assert described["std"] == pytest.approx(flat.std(0, ddof=1).tolist(), rel=1e-12)
    buffers = {s.x.untyped_storage().data_ptr() for s in (data.train, data.val, data.test)}
    assert len(buffers) == (3 if dtype == np.uint8 else 1)  # float32 scaled in place; uint8 becomes float32
