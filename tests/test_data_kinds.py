"""Each kind of data end to end through the CLI, on small files made here in their real formats:
a sine-wave series (forecasting), labelled series, a labelled text file, a CIFAR-10 archive; and
image augmentation, which must touch training batches only."""

import io
import json
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import one_line_error, refused, summary, train

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def sine_table(steps: int) -> pd.DataFrame:
    t = np.arange(steps)
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "load": np.sin(2 * np.pi * t / 40) + 0.05 * rng.normal(size=steps),
            "temp": 20 + 5 * np.cos(2 * np.pi * t / 40),
        }
    )


def counts(stdout: str) -> tuple:
    """(train, val, test) sample counts from the run's data line."""
    found = re.search(r"(\d+) train, (\d+) val, (\d+) test", stdout)
    return tuple(int(n) for n in found.groups())


def test_a_sine_series_is_cut_into_windows_by_time_and_forecast(tmp_path):
    sine_table(600).to_csv(tmp_path / "sine.csv", index=False)
    result, run_dir = train(
        tmp_path,
        "data=timeseries",
        "data.path=sine.csv",
        "data.target=load",
        "model=lstm",
        "model.hidden_size=24",
        "trainer.epochs=6",
        "~callbacks.early_stopping",
    )
    # 600 steps: test = the last 120, validation the 60 before, train the first 420; each part
    # is cut on its own into windows of 24 steps plus 1 ahead, so none shares a step with another.
    assert counts(result.stdout) == (420 - 24, 60 - 24, 120 - 24)
    info = summary(run_dir)
    assert info["task"] == "regression" and info["test_r2"] > 0.8, info
    prep = json.loads((run_dir / "preprocessing.json").read_text())["transform"]
    assert prep["window"] == 24 and prep["horizon"] == 1 and prep["features"] == ["load", "temp"]
    train_part = sine_table(600)[:420]  # scaling fitted on the training steps only
    assert prep["mean"] == pytest.approx(train_part.mean().tolist(), abs=0.05)


def test_a_npy_series_with_a_longer_horizon(tmp_path):
    np.save(tmp_path / "series.npy", sine_table(300).to_numpy())
    result, run_dir = train(
        tmp_path,
        "data=timeseries",
        "data.path=series.npy",
        "data.target=0",
        "data.window=10",
        "data.horizon=5",
        "data.stride=2",
        "data.val_split=0",
        "model=mlp",
        "trainer.epochs=1",
        "trainer.monitor=loss",
        "~callbacks.early_stopping",
    )
    # train = the first 240 steps: windows start every 2 steps while start + 10 + 5 <= 240
    assert counts(result.stdout) == ((240 - 15) // 2 + 1, 0, (60 - 15) // 2 + 1)
    assert summary(run_dir)["status"] == "completed"


def test_one_labelled_series_per_row_is_classified(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for i in range(240):
        label = ["slow", "fast"][i % 2]
        cycles = 2 if label == "slow" else 6
        wave = np.sin(2 * np.pi * cycles * np.arange(32) / 32 + rng.uniform(0, 6.3)) + 0.1 * rng.normal(size=32)
        rows.append([label, *wave])
    pd.DataFrame(rows, columns=["rhythm", *(f"t{j}" for j in range(32))]).to_csv(tmp_path / "beats.csv", index=False)
    result, run_dir = train(
        tmp_path,
        "data=timeseries",
        "data.path=beats.csv",
        "data.target=rhythm",
        "data.window=null",
        "model=lstm",
        "model.hidden_size=32",
        "optimizer.lr=0.01",
        "trainer.epochs=8",
        "~callbacks.early_stopping",
    )
    info = summary(run_dir)
    assert info["task"] == "binary" and info["test_accuracy"] > 0.85, info
    assert "(32, 1)" in result.stdout  # 32 steps of one value each


def tokens(text: str) -> list:
    """Independent of nnrun's tokenizer: lower-case words and single punctuation marks."""
    return re.findall(r"[a-z0-9]+(?:'[a-z0-9]+)?|[^\w\s]", text.lower())


def test_text_trains_an_lstm_through_an_embedding_and_predicts_from_its_vocabulary(tmp_path):
    notes = pd.read_csv(EXAMPLES / "triage_notes.csv")
    test = notes[:80].copy()
    test.loc[0, "text"] += " zyxwordonlyintest"  # a word the training file never has
    notes[80:].to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    _, run_dir = train(
        tmp_path,
        "data=text_csv",
        "data.path=train.csv",
        "data.test_path=test.csv",
        "data.max_len=24",
        "model=lstm",
        "model.hidden_size=32",
        "model.embedding_dim=16",
        "optimizer.lr=0.01",
        "trainer.epochs=8",
        "~callbacks.early_stopping",
    )
    info = summary(run_dir)
    assert info["task"] == "binary" and info["test_accuracy"] > 0.85, info
    prep = json.loads((run_dir / "preprocessing.json").read_text())
    vocab = prep["transform"]["vocabulary"]
    assert "zyxwordonlyintest" not in vocab and "chest" in vocab

    # preprocessing.json is all a prediction needs: ids padded at the front, 1 for unknown words
    ids = {w: i + 2 for i, w in enumerate(vocab)}
    x = torch.zeros(len(test), 24, dtype=torch.long)
    for row, text in enumerate(test["text"]):
        seq = [ids.get(w, 1) for w in tokens(text)][-24:]
        x[row, 24 - len(seq) :] = torch.tensor(seq)
    from nnrun.models import build_model

    state = torch.load(run_dir / "checkpoints/best.pt", weights_only=True)
    model = build_model(**state["config"]["model"], input_shape=(24,), num_classes=1, vocab_size=len(vocab) + 2)
    model.load_state_dict(state["model"])
    with torch.no_grad():
        predicted = (model.eval()(x).flatten() > 0).numpy()
    truth = (test["label"] == prep["classes"][1]).to_numpy()
    assert (predicted == truth).mean() == pytest.approx(info["test_accuracy"], abs=1e-9)


def cifar_batch(n: int, seed: int) -> dict:
    """A batch as the python CIFAR-10 files hold it; the class decides which colour band is bright."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    x = rng.integers(0, 60, (n, 3, 32, 32)).astype(np.uint8)
    for i, label in enumerate(labels):
        x[i, label % 3, (label // 3) * 8 : (label // 3) * 8 + 8, :] = 250
    return {
        "batch_label": "training batch",
        "labels": [int(v) for v in labels],
        "data": x.reshape(n, -1),
        "filenames": [f"img_{i}.png" for i in range(n)],
    }


def write_cifar(folder: Path, per_batch: int = 60, archive: bool = True, poison=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    files = {name: pickle.dumps(cifar_batch(per_batch, i), protocol=2) for i, name in enumerate(names)}
    if poison is not None:
        files["data_batch_3"] = pickle.dumps(poison, protocol=2)
    if archive:
        with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as tar:
            for name, raw in files.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
    else:
        (folder / "cifar-10-batches-py").mkdir()
        for name, raw in files.items():
            (folder / "cifar-10-batches-py" / name).write_bytes(raw)
    return folder


def test_cifar10_from_its_archive_trains_the_cnn_on_colour_images(tmp_path):
    root = write_cifar(tmp_path / "cifar")
    result, run_dir = train(
        tmp_path,
        "data=cifar10",
        f"data.root={root}",
        "model=cnn",
        "model.channels=[8,16]",
        "trainer.epochs=4",
        "~callbacks.early_stopping",
        "data.batch_size=32",
    )
    assert counts(result.stdout) == (270, 30, 60)
    assert "(3, 32, 32)" in result.stdout
    assert summary(run_dir)["test_accuracy"] > 0.5


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("archive", [True, False])
def test_cifar10_refuses_a_batch_that_would_run_code(tmp_path, archive):
    marker = tmp_path / "pwned"
    root = write_cifar(tmp_path / "cifar", archive=archive, poison={"data": Payload(marker)})
    result = refused("data=cifar10", f"data.root={root}", "model=cnn", "trainer.epochs=1", cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert "data_batch_3" in line and "not a CIFAR-10 batch" in line
    assert not marker.exists()


def test_cifar10_absent_says_where_to_put_it(tmp_path):
    result = refused("data=cifar10", f"data.root={tmp_path / 'none'}", "data.download=false", cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert "cifar-10-python.tar.gz" in line and "data.root" in line


def test_augmentation_flips_and_crops_whole_batches_reproducibly():
    from nnrun.data.augment import Augment

    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    flipped = Augment(flip=True)(x, seed=3)
    for a, b in zip(flipped, x):
        assert torch.equal(a, b) or torch.equal(a, b.flip(-1))
    assert torch.equal(Augment(flip=True, crop=1)(x, seed=5), Augment(flip=True, crop=1)(x, seed=5))
    crop = Augment(crop=1)
    crop.fill = -7.0
    out = crop(x, seed=11)
    for a, b in zip(out, x):  # a 4x4 window of the image padded by one pixel of fill
        padded = torch.nn.functional.pad(b, (1, 1, 1, 1), value=-7.0)
        windows = [padded[:, i : i + 4, j : j + 4] for i in range(3) for j in range(3)]
        assert any(torch.equal(a, w) for w in windows)
    assert len({tuple(crop(x, seed=s).flatten().tolist()) for s in range(20)}) > 1


def test_augmentation_touches_training_batches_only(tmp_path):
    """The CLI's test accuracy, recomputed from best.pt on un-augmented test images, matches to
    the last digit: the test split saw no augmentation (nor did validation: best.pt was picked by
    the val_loss it logs, recomputed here too)."""
    root = write_cifar(tmp_path / "cifar", archive=False)
    _, run_dir = train(
        tmp_path,
        "data=cifar10",
        f"data.root={root}",
        "model=cnn",
        "model.channels=[8]",
        "data.augment.rotate=15",
        "data.augment.translate=0.1",
        "trainer.epochs=3",
        "~callbacks.early_stopping",
    )
    info = summary(run_dir)
    from nnrun.data import build_data
    from nnrun.models import build_model

    state = torch.load(run_dir / "checkpoints/best.pt", weights_only=True)
    conf = state["config"]
    data = build_data(**{**conf["data"], "augment": None}, seed=conf["trainer"]["seed"])
    model = build_model(**conf["model"], input_shape=data.input_shape, num_classes=10)
    model.load_state_dict(state["model"])
    with torch.no_grad():
        model.eval()
        test_acc = (model(data.test.x).argmax(1) == data.test.y).float().mean().item()
        val_loss = torch.nn.functional.cross_entropy(model(data.val.x), data.val.y).item()
    assert test_acc == pytest.approx(info["test_accuracy"], abs=1e-6)
    assert val_loss == pytest.approx(info["best_score"], rel=1e-4)


def test_augmentation_on_a_table_is_refused(tmp_path):
    pd.DataFrame({"a": range(40), "y": [0, 1] * 20}).to_csv(tmp_path / "t.csv", index=False)
    result = refused("data=csv", "data.path=t.csv", "data.target=y", "data.augment.flip=true", cwd=tmp_path)
    assert result.returncode == 2
    assert "data.augment" in one_line_error(result)
