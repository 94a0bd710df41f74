"""model=sequential: a Keras stack written as YAML builds with Keras's parameter counts and
shapes, trains as Keras's would (the output softmax left to the loss), and refuses stacks that do
not fit the data with one line."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import metrics, nnrun, one_line_error, refused, summary, tool, train, write_mnist
from nnrun.models import build_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def params_of(tmp_path, *overrides, name="run") -> int:
    """The trainable parameter count nnrun reports for a model, built but not trained."""
    _, run_dir = train(tmp_path, *overrides, "trainer.epochs=0", name=name)
    return summary(run_dir)["params"]


@pytest.fixture
def fashion_shaped(tmp_path) -> str:
    """28x28 grey images of 10 classes, in the MNIST file format (Fashion-MNIST's shape)."""
    return f"data.root={write_mnist(tmp_path / 'mnist_files', n_train=200, n_test=50)}"


def test_course_presets_have_keras_parameter_counts(tmp_path, fashion_shaped):
    data = ["data=mnist", fashion_shaped]
    dense = lambda n_in, units: n_in * units + units  # noqa: E731  (kernel + bias, Keras's Dense)
    # Flatten -> Dense 128 relu -> Dropout 0.3 -> Dense 64 relu -> Dense 10 softmax
    dense_net = dense(28 * 28, 128) + dense(128, 64) + dense(64, 10)
    assert dense_net == 109_386
    assert params_of(tmp_path, *data, "model=course_dense", name="dense") == dense_net
    assert params_of(tmp_path, *data, "model=course_dense_l2", name="l2") == dense_net
    # Conv2D(32, 3x3) 28->26, pool 13, Conv2D(64, 3x3) 13->11, pool 5, flatten 5*5*64, Dense 64, Dense 10
    conv = lambda c_in, filters: 3 * 3 * c_in * filters + filters  # noqa: E731
    cnn = conv(1, 32) + conv(32, 64) + dense(5 * 5 * 64, 64) + dense(64, 10)
    assert cnn == 121_930
    assert params_of(tmp_path, *data, "model=course_cnn", name="cnn") == cnn
    # LSTM(64) over 28 rows of 28 pixels: 4 gates x (input kernel + recurrent kernel + one bias),
    # then Dense 32 and the appended Dense 10
    lstm = 4 * (28 * 64 + 64 * 64 + 64) + dense(64, 32) + dense(32, 10)
    assert params_of(tmp_path, *data, "model=course_lstm", name="lstm") == lstm


def test_the_text_preset_embeds_the_data_vocabulary(tmp_path):
    _, run_dir = train(
        tmp_path,
        "data=text_csv",
        f"data.path={EXAMPLES / 'triage_notes.csv'}",
        "data.vocab_size=500",
        "data.max_len=24",
        "model=course_text",
        "trainer.epochs=0",
    )
    prep = json.loads((run_dir / "preprocessing.json").read_text())
    vocab = len(prep["transform"]["vocabulary"]) + 2  # the words kept, the padding id and the unknown-word id
    assert vocab < 500  # fewer words than data.vocab_size allows: the embedding has one row per id
    embedding = vocab * 64
    lstm = 4 * (64 * 64 + 64 * 64 + 64)
    assert summary(run_dir)["task"] == "binary"
    assert summary(run_dir)["params"] == embedding + lstm + (64 * 1 + 1)


# Keras 3.15 (torch backend) printed these: model.count_params() and the trainable count, for the
# same stacks (benchmarks/keras_parity.py builds both and compares them and their outputs).
KERAS_COUNTS = [
    (
        (1, 28, 28),
        10,
        [
            {"conv2d": {"filters": 8, "kernel_size": 3, "strides": 2, "padding": "same"}},
            "batch_normalization",
            {"average_pooling2d": {"pool_size": 3, "padding": "same"}},
            "global_max_pooling2d",
            {"dense": 10},
        ],
        202,  # Keras's total: batch norm's moving mean and variance are weights there
        186,
    ),
    (
        (20, 4),
        3,
        [
            {"simple_rnn": {"units": 8, "return_sequences": True}},
            {"gru": {"units": 6, "return_sequences": True}},
            {"bidirectional": {"lstm": 5}},
            {"dense": 3},
        ],
        905,
        905,
    ),
    (
        (30, 3),
        2,
        [
            {"conv1d": {"filters": 4, "kernel_size": 5, "padding": "same", "dilation_rate": 2}},
            {"max_pooling1d": {"pool_size": 3, "padding": "same"}},
            "layer_normalization",
            {"spatial_dropout1d": 0.1},
            "global_average_pooling1d",
            {"dense": 2},
        ],
        82,
        82,
    ),
    (
        (784,),
        5,
        [{"reshape": [28, 28, 1]}, {"conv2d": {"filters": 4, "kernel_size": 3}}, "flatten", {"dense": 5}],
        13565,
        13565,
    ),
]


@pytest.mark.parametrize("shape, outputs, layers, total, trainable", KERAS_COUNTS)
def test_stacks_count_parameters_as_keras_does(shape, outputs, layers, total, trainable):
    model = build_model("sequential", shape, outputs, task="multiclass", layers=layers)
    assert sum(layer.keras_params() for layer in model) == total
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable
    assert model(torch.zeros(2, *shape)).shape == (2, outputs)


def test_same_padding_follows_keras():
    """Keras's 'same': out = ceil(n / stride), the odd padding at the end; max pooling ignores the
    padding, average pooling divides by the real values in each window."""
    x = torch.arange(9.0).reshape(1, 1, 3, 3)  # 0 1 2 / 3 4 5 / 6 7 8
    pool = lambda kind: build_model(  # noqa: E731
        "sequential", (1, 3, 3), 1, task="regression", layers=[{f"{kind}_pooling2d": {"padding": "same"}}]
    )[0]
    assert pool("max")(x).flatten().tolist() == [4, 5, 7, 8]
    assert pool("average")(x).flatten().tolist() == [(0 + 1 + 3 + 4) / 4, (2 + 5) / 2, (6 + 7) / 2, 8]
    conv = build_model(
        "sequential",
        (1, 13, 13),
        1,
        task="regression",
        layers=[{"conv2d": {"filters": 1, "kernel_size": 3, "strides": 2, "padding": "same"}}],
    )[0]
    assert conv(torch.zeros(1, 1, 13, 13)).shape[-2:] == (7, 7)  # ceil(13 / 2)


def test_a_final_softmax_trains_as_the_same_stack_without_it_and_predicts_probabilities(tmp_path):
    stack = "[flatten,{dense:{units:32,activation:relu}},{dense:{units:10%s}}]"
    args = ["data=digits", "trainer.epochs=5", "~callbacks.early_stopping"]
    result, with_softmax = train(
        tmp_path, *args, "model=sequential", f"model.layers={stack % ',activation:softmax'}", name="a"
    )
    _, logits = train(tmp_path, *args, "model=sequential", f"model.layers={stack % ''}", name="b")
    assert "the output layer's softmax is applied by the loss" in result.stdout
    loss = lambda run: [float(row["loss"]) for row in metrics(run)]  # noqa: E731
    assert np.allclose(loss(with_softmax), loss(logits), rtol=1e-5), (loss(with_softmax), loss(logits))
    assert summary(with_softmax)["test_accuracy"] > 0.8

    from sklearn.datasets import load_digits

    np.save(tmp_path / "x.npy", load_digits().images[:20])
    done = tool("nnrun-predict", f"run={with_softmax}", "input=x.npy", "output=p.csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    probabilities = np.array([[float(r[k]) for k in r if k.startswith("prob")] for r in rows])
    assert probabilities.shape == (20, 10) and (probabilities >= 0).all()
    assert np.allclose(probabilities.sum(1), 1, atol=1e-5)


@pytest.mark.parametrize(
    "layers, task_args, expected",
    [
        (
            "[{embedding:{output_dim:8}},global_average_pooling1d,{dense:{units:2,activation:softmax}}]",
            ["data=text_csv", f"data.path={EXAMPLES / 'triage_notes.csv'}"],
            "model.layers[2].dense: units=2 but this binary data needs 1 output; write {dense: {units: 1, activation: sigmoid}}",
        ),
        (
            "[flatten,{dense:{units:10,activation:relu}}]",
            [],
            "model.layers[1].dense: activation=relu does not fit multiclass data",
        ),
        ("[flaten]", [], "model.layers[0]: flaten is not a layer nnrun knows (did you mean flatten?)"),
        (
            "[{dense:{unit:3}}]",
            [],
            "model.layers[0].dense.unit is not an argument nnrun supports (did you mean units?)",
        ),
        ("[{lstm:{units:8,recurrent_dropout:0.2}}]", [], "model.layers[0].lstm: recurrent_dropout is not supported"),
        (
            "[{conv2d:{filters:4,kernel_size:3}},max_pooling2d,{conv2d:{filters:4,kernel_size:3}},max_pooling2d]",
            [],
            "model.layers[3].max_pooling2d: pool_size 2 is larger than its input (1 in (4, 1, 1))",
        ),
        ("[{dense:{units:4,kernel_regularizer:l3}}]", [], "model.layers[0].dense: kernel_regularizer='l3'"),
        ("[flatten,{dense:1000000000000}]", [], "model.layers[1].dense would hold 64,000,000,000,000 weights"),
        (
            "[{lstm:{units:8,return_sequences:'false'}}]",
            [],
            "model.layers[0].lstm.return_sequences='false': use true or false",
        ),
        (
            "[{dense:10}]",
            [],
            "model.layers[0].dense is the output layer but gets input of shape (1, 8, 8); add flatten",
        ),
        ("[MaxPool2D]", [], "MaxPool2D is not a layer nnrun knows (Keras's MaxPool2D is max_pooling2d here)"),
        (
            "[{embedding:{output_dim:8,input_dim:20}},global_average_pooling1d]",
            ["data=text_csv", f"data.path={EXAMPLES / 'triage_notes.csv'}"],
            "model.layers[0].embedding: input_dim=20 is smaller than the data's vocabulary",
        ),
        (
            "[global_average_pooling1d]",
            ["data=text_csv", f"data.path={EXAMPLES / 'triage_notes.csv'}"],
            "this data is token ids (text); start the stack with an embedding",
        ),
    ],
)
def test_a_stack_that_does_not_fit_is_one_line(tmp_path, layers, task_args, expected):
    data = task_args or ["data=digits"]
    result = refused("hydra.run.dir=run", *data, "model=sequential", f"model.layers={layers}", cwd=tmp_path)
    assert result.returncode == 2
    assert expected in one_line_error(result)


def test_your_own_yaml_through_the_config_dir(tmp_path):
    (tmp_path / "my_conf" / "model").mkdir(parents=True)
    (tmp_path / "my_conf" / "model" / "my_cnn.yaml").write_text(
        "name: sequential\n"
        "layers:\n"
        "  - conv2d: {filters: 8, kernel_size: 3, padding: same, activation: relu}\n"
        "  - max_pooling2d\n"
        "  - flatten\n"
        "  - dense: {units: 10, activation: softmax}\n"
    )
    result, run_dir = train(
        tmp_path, f"--config-dir={tmp_path / 'my_conf'}", "model=my_cnn", "data=digits", "trainer.epochs=2"
    )
    assert "conv2d (Conv2D)" in result.stdout and "(None, 8, 4, 4)" in result.stdout
    assert summary(run_dir)["params"] == (3 * 3 * 1 * 8 + 8) + (8 * 4 * 4 * 10 + 10)


def test_a_sequential_run_continues_exports_and_sweeps(tmp_path):
    args = ["data=digits", "model=course_dense", "~callbacks.early_stopping", "trainer.plots=false"]
    _, run_dir = train(tmp_path, *args, "trainer.epochs=2")
    more = nnrun(*args, f"trainer.resume={run_dir}", "trainer.epochs=3", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert len(metrics(run_dir)) == 3
    for fmt in ("torchscript", "onnx"):
        done = tool("nnrun-export", f"run={run_dir}", f"format={fmt}", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    ts = torch.jit.load(str(run_dir / "model.ts"))
    assert ts(torch.zeros(3, 1, 8, 8)).shape == (3, 10)

    sweep = nnrun(
        "--multirun",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "data=digits",
        "model=course_dense,sequential",
        "trainer.epochs=1",
        "trainer.plots=false",
        cwd=tmp_path,
    )
    assert sweep.returncode == 0, sweep.stderr
    with open(tmp_path / "sweep" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["model"] for r in rows) == ["course_dense", "sequential"]


def test_a_planted_layer_in_a_run_folder_is_refused_before_it_takes_memory(tmp_path):
    # pooling has no weights, so model.safetensors cannot tell; a window of 5,000,000 with
    # padding: same would pad each image to that size
    layers = "[{conv2d:{filters:4,kernel_size:3,padding:same}},max_pooling2d,flatten,{dense:{units:10}}]"
    _, run_dir = train(tmp_path, "data=digits", "model=sequential", f"model.layers={layers}", "trainer.epochs=1")
    config = run_dir / ".hydra" / "config.yaml"
    planted = config.read_text().replace(
        "  - max_pooling2d\n", "  - max_pooling2d: {pool_size: [2, 5000000], padding: same}\n"
    )
    assert planted != config.read_text()
    config.write_text(planted)
    for name, *more in (["nnrun-eval"], ["nnrun-export", "format=onnx"]):
        done = tool(name, f"run={run_dir}", *more, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert "pool_size 5000000 is larger than its input (8 in (4, 8, 8))" in one_line_error(done)


def test_the_summary_counts_as_keras_does_and_a_swept_layer_list_shows_in_the_table(tmp_path):
    stacks = "[flatten,{dense:16},batch_normalization],[flatten,{dense:8}]"
    sweep = nnrun(
        "--multirun",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "data=digits",
        "model=sequential",
        f"model.layers={stacks}",
        "trainer.epochs=1",
        "trainer.plots=false",
        cwd=tmp_path,
    )
    assert sweep.returncode == 0, sweep.stderr
    # Dense 16 on 64 pixels: 1,040; batch norm: 4 x 16 (2 trainable, the moving mean and variance not); Dense 10: 170
    assert "Total params: 1,274" in sweep.stdout and "Trainable params: 1,242" in sweep.stdout
    assert "Non-trainable params: 32" in sweep.stdout
    table = sweep.stdout[sweep.stdout.index("2 runs in") :]
    assert "[flatten,{dense:8}]" in table  # the console table shows it: not read as markup
