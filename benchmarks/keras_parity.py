"""nnrun's model=sequential against real Keras (3.x, any backend): the same stacks' parameter
counts and output shapes, and, with Keras's weights copied in, the same outputs for 'same'
padding, pooling and the recurrent layers. Needs keras: pip install keras (with the torch
backend: KERAS_BACKEND=torch). Prints one line per check; not part of the tests (CI has no Keras).

    KERAS_BACKEND=torch python benchmarks/keras_parity.py
"""

import numpy as np
import torch
import keras
from keras import layers as L
from nnrun.models import build_model

torch.manual_seed(0)


def keras_params(m):
    return sum(int(np.prod(w.shape)) for w in m.weights)


def keras_trainable(m):
    return sum(int(np.prod(w.shape)) for w in m.trainable_weights)


def nn_counts(m):
    return sum(layer.keras_params() for layer in m), sum(p.numel() for p in m.parameters() if p.requires_grad)


cases = {
    "bn_conv_same_s2": (
        (28, 28, 1),
        (1, 28, 28),
        [
            L.Conv2D(8, 3, strides=2, padding="same"),
            L.BatchNormalization(),
            L.AveragePooling2D(3, padding="same"),
            L.GlobalMaxPooling2D(),
            L.Dense(10),
        ],
        [
            {"conv2d": {"filters": 8, "kernel_size": 3, "strides": 2, "padding": "same"}},
            "batch_normalization",
            {"average_pooling2d": {"pool_size": 3, "padding": "same"}},
            "global_max_pooling2d",
            {"dense": 10},
        ],
    ),
    "rnn_stack": (
        (20, 4),
        (20, 4),
        [
            L.SimpleRNN(8, return_sequences=True),
            L.GRU(6, return_sequences=True),
            L.Bidirectional(L.LSTM(5)),
            L.Dense(3),
        ],
        [
            {"simple_rnn": {"units": 8, "return_sequences": True}},
            {"gru": {"units": 6, "return_sequences": True}},
            {"bidirectional": {"lstm": 5}},
            {"dense": 3},
        ],
    ),
    "conv1d": (
        (30, 3),
        (30, 3),
        [
            L.Conv1D(4, 5, padding="same", dilation_rate=2),
            L.MaxPooling1D(3, padding="same"),
            L.LayerNormalization(),
            L.SpatialDropout1D(0.1),
            L.GlobalAveragePooling1D(),
            L.Dense(2),
        ],
        [
            {"conv1d": {"filters": 4, "kernel_size": 5, "padding": "same", "dilation_rate": 2}},
            {"max_pooling1d": {"pool_size": 3, "padding": "same"}},
            "layer_normalization",
            {"spatial_dropout1d": 0.1},
            "global_average_pooling1d",
            {"dense": 2},
        ],
    ),
    "reshape": (
        (784,),
        (784,),
        [L.Reshape((28, 28, 1)), L.Conv2D(4, 3), L.Flatten(), L.Dense(5)],
        [
            {"reshape": [28, 28, 1]},
            {"conv2d": [4]} if False else {"conv2d": {"filters": 4, "kernel_size": 3}},
            "flatten",
            {"dense": 5},
        ],
    ),
}
for name, (kin, nin, kl, nl) in cases.items():
    km = keras.Sequential([keras.Input(kin), *kl])
    out = kl[-1].units
    nm = build_model("sequential", nin, out, task="multiclass" if out > 1 else "regression", layers=nl)
    print(
        name,
        "keras",
        keras_params(km),
        keras_trainable(km),
        "nnrun",
        *nn_counts(nm),
        "shape",
        km.output_shape,
        tuple(nm(torch.zeros(2, *nin)).shape),
    )
# text
km = keras.Sequential([keras.Input((50,)), L.Embedding(1000, 64), L.LSTM(64), L.Dense(1, activation="sigmoid")])
nm = build_model(
    "sequential", (50,), 1, task="binary", layers=[{"embedding": {"output_dim": 64}}, {"lstm": 64}], vocab_size=1000
)
print("text keras", keras_params(km), "nnrun", *nn_counts(nm))
# numeric: pooling same
x = np.random.RandomState(0).randn(2, 7, 7, 3).astype("float32")
for kind, KL in (("max", L.MaxPooling2D), ("average", L.AveragePooling2D)):
    k = KL(3, strides=2, padding="same")(x)
    n = build_model(
        "sequential",
        (3, 7, 7),
        1,
        task="regression",
        layers=[{f"{kind}_pooling2d": {"pool_size": 3, "strides": 2, "padding": "same"}}, "flatten", {"dense": 1}],
    )[0]
    t = n(torch.tensor(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
    print(kind, "pool same", np.abs(np.asarray(k) - t).max())
# numeric: conv same stride 2, weights copied
c = L.Conv2D(4, 3, strides=2, padding="same")
k = c(x).detach().numpy()
n = build_model(
    "sequential",
    (3, 7, 7),
    1,
    task="regression",
    layers=[{"conv2d": {"filters": 4, "kernel_size": 3, "strides": 2, "padding": "same"}}, "flatten", {"dense": 1}],
)[0]
n.conv.weight.data = torch.tensor(c.kernel.value.detach().numpy()).permute(3, 2, 0, 1).contiguous()
n.conv.bias.data = torch.tensor(c.bias.value.detach().numpy())
print("conv same s2", np.abs(k - n(torch.tensor(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()).max())
# numeric: LSTM, SimpleRNN, GRU with weights copied
s = np.random.RandomState(1).randn(2, 6, 4).astype("float32")
for kname, KL in (("lstm", L.LSTM), ("simple_rnn", L.SimpleRNN), ("gru", L.GRU)):
    kl = KL(5)
    k = kl(s).detach().numpy()
    n = build_model("sequential", (6, 4), 5, task="regression", layers=[{kname: 5}, {"dense": 5}])[0]
    w = [v.value.detach().numpy() if hasattr(v, "value") else np.asarray(v) for v in kl.weights]
    r = n.rnn
    r.weight_ih_l0.data = torch.tensor(w[0].T.copy())
    r.weight_hh_l0.data = torch.tensor(w[1].T.copy())
    if kname == "gru":
        # keras GRU gates z,r,h; torch r,z,n
        def reorder(a):
            u = 5
            return np.concatenate([a[..., u : 2 * u], a[..., :u], a[..., 2 * u :]], -1)

        r.weight_ih_l0.data = torch.tensor(reorder(w[0]).T.copy())
        r.weight_hh_l0.data = torch.tensor(reorder(w[1]).T.copy())
        r.bias_ih_l0.data = torch.tensor(reorder(w[2][0]))
        r.bias_hh_l0.data = torch.tensor(reorder(w[2][1]))
    else:
        r.bias_ih_l0.data = torch.tensor(w[2])
    print(
        kname,
        np.abs(k - n(torch.tensor(s)).detach().numpy()).max(),
        "init forget bias",
        w[2][5:10] if kname == "lstm" else "",
    )
