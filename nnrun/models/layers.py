"""Keras layers as torch modules, each built from its Keras name, arguments and defaults.

Inside nnrun images are channels-first (C, H, W) and sequences are (steps, features), as in
torch; Keras's "last axis" is therefore dim 1 of an image batch and dim -1 otherwise. Each
builder takes the input shape of one sample (no batch) and the layer's Keras arguments, and
returns a module; the stack finds each output shape by running a dummy batch through it."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from nnrun.errors import ConfigError


class Layer(nn.Module):
    """One row of the model summary, named as Keras names it (dense, conv2d_1...)."""

    keras_class = "Layer"

    def keras_params(self) -> int:
        """Keras's count: its weights, including batch norm's moving statistics (non-trainable
        weights in Keras), without torch's second recurrent bias (held at zero here)."""
        count = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return count + sum(b.numel() for n, b in self.named_buffers() if n.endswith(("running_mean", "running_var")))


class Lambda(Layer):
    def __init__(self, keras_class: str, fn):
        super().__init__()
        self.keras_class, self.fn = keras_class, fn

    def forward(self, x):
        return self.fn(x)


class LastAxis(Layer):
    """A module applied to Keras's last axis: the channels of an image batch (dim 1)."""

    def __init__(self, keras_class: str, inner: nn.Module, activation: nn.Module = None):
        super().__init__()
        self.keras_class, self.inner, self.activation = keras_class, inner, activation

    def forward(self, x):
        if x.dim() == 4:
            x = self.inner(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        else:
            x = self.inner(x)
        return self.activation(x) if self.activation is not None else x


class Conv(Layer):
    """conv1d on (B, steps, features) or conv2d on (B, C, H, W), with Keras's 'same' padding
    (extra padding at the end when it is odd, as TensorFlow does) for any stride."""

    def __init__(self, keras_class, conv, pad, activation):
        super().__init__()
        self.keras_class, self.conv, self.pad, self.activation = keras_class, conv, pad, activation

    def forward(self, x):
        channels_last = x.dim() == 3  # a sequence: torch's conv1d wants (B, features, steps)
        if channels_last:
            x = x.transpose(1, 2)
        if self.pad:
            x = F.pad(x, self.pad)
        x = self.conv(x)
        if self.activation is not None:
            x = self.activation(x)
        return x.transpose(1, 2) if channels_last else x


class Pool(Layer):
    """max/average pooling with Keras's 'same' rule: max pads with -inf, average divides by the
    number of real (unpadded) values in each window, as Keras does."""

    def __init__(self, keras_class, kind, size, stride, pad):
        super().__init__()
        self.keras_class, self.kind, self.size, self.stride, self.pad = keras_class, kind, size, stride, pad

    def forward(self, x):
        channels_last = x.dim() == 3
        if channels_last:
            x = x.transpose(1, 2)
        pool = (F.max_pool1d, F.max_pool2d) if self.kind == "max" else (F.avg_pool1d, F.avg_pool2d)
        pool = pool[len(self.size) - 1]
        if self.kind == "max":
            x = pool(F.pad(x, self.pad, value=-math.inf) if self.pad else x, self.size, self.stride)
        elif self.pad:
            ones = torch.ones_like(x[:1, :1])
            count = pool(F.pad(ones, self.pad), self.size, self.stride)
            x = pool(F.pad(x, self.pad), self.size, self.stride) / count
        else:
            x = pool(x, self.size, self.stride)
        return x.transpose(1, 2) if channels_last else x


class SpatialDropout(Layer):
    """Drops whole feature maps: an image channel (spatial_dropout2d), or a feature for every
    step of a sequence (spatial_dropout1d, and a recurrent layer's input dropout in Keras)."""

    def __init__(self, rate, keras_class="SpatialDropout1D"):
        super().__init__()
        self.keras_class, self.rate = keras_class, rate

    def forward(self, x):
        if not self.training or not self.rate:
            return x
        if x.dim() == 4:
            return F.dropout2d(x, self.rate, True)
        keep = torch.empty(x.shape[0], 1, x.shape[-1], device=x.device, dtype=x.dtype).bernoulli_(1 - self.rate)
        return x * keep / (1 - self.rate)


class Recurrent(Layer):
    """simple_rnn, lstm or gru, batch first, Keras's initialisers and bias: one trainable bias
    (torch's second one is held at zero, so the counts and the maths are Keras's), the forget
    gate's bias starting at 1. GRU is Keras's default reset_after=True, which is torch's GRU."""

    CELLS = {"SimpleRNN": nn.RNN, "LSTM": nn.LSTM, "GRU": nn.GRU}

    def __init__(self, keras_class, features, units, return_sequences, dropout, bidirectional, rows):
        super().__init__()
        self.keras_class = f"Bidirectional({keras_class})" if bidirectional else keras_class
        self.rnn = self.CELLS[keras_class](features, units, batch_first=True, bidirectional=bidirectional)
        self.return_sequences, self.rows, self.units = return_sequences, rows, units
        self.dropout = SpatialDropout(dropout) if dropout else None
        for name, p in self.rnn.named_parameters():
            if name.startswith("weight_ih"):
                nn.init.xavier_uniform_(p)
            elif name.startswith("weight_hh"):
                nn.init.orthogonal_(p)
            else:
                nn.init.zeros_(p)
                if keras_class == "LSTM" and name.startswith("bias_ih"):
                    p.data[units : 2 * units] = 1.0  # Keras's unit_forget_bias=True
                if keras_class != "GRU" and name.startswith("bias_hh"):
                    p.requires_grad_(False)

    def forward(self, x):
        if self.rows:  # an image read as a sequence: (B, C, H, W) -> H steps of C*W values
            x = x.permute(0, 2, 1, 3).flatten(2)
        if self.dropout is not None:
            x = self.dropout(x)
        out, _ = self.rnn(x)
        if self.return_sequences:
            return out
        if self.rnn.bidirectional:  # forward's last step, backward's last (the sequence's first)
            return torch.cat([out[:, -1, : self.units], out[:, 0, self.units :]], dim=1)
        return out[:, -1]


class Flatten(Layer):
    keras_class = "Flatten"

    def forward(self, x):
        return x.flatten(1)


class GlobalPool(Layer):
    """global_{average,max}_pooling{1,2}d: over the steps of (B, steps, F) or the H, W of an image."""

    def __init__(self, keras_class, kind):
        super().__init__()
        self.keras_class, self.kind = keras_class, kind

    def forward(self, x):
        dims = (1,) if x.dim() == 3 else (2, 3)
        return x.mean(dims) if self.kind == "average" else x.amax(dims)


class Reshape(Layer):
    """Keras's Reshape(target_shape), in Keras's channels-last terms: a 3-d target is
    (H, W, C), and an image input is read in (H, W, C) order, as Keras stores it."""

    keras_class = "Reshape"

    def __init__(self, target):
        super().__init__()
        self.target = tuple(target)

    def forward(self, x):
        if x.dim() == 4:
            x = x.permute(0, 2, 3, 1)
        x = x.reshape(x.shape[0], *self.target)
        return x.permute(0, 3, 1, 2) if x.dim() == 4 else x


# Keras's activations by name; softmax over Keras's last axis (an image's channels)
ACTIVATIONS = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "softmax": lambda: LastAxis("Softmax", nn.Softmax(dim=-1)),
    "linear": nn.Identity,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),  # keras.activations.leaky_relu's default slope
    "softplus": nn.Softplus,
    "softsign": nn.Softsign,
    "hard_sigmoid": nn.Hardsigmoid,
    "exponential": lambda: Lambda("Exponential", torch.exp),
}


def activation(name, where: str):
    if name is None or name == "linear":
        return None
    if name not in ACTIVATIONS:
        none = " (no activation: write null or linear)" if str(name).lower() == "none" else ""
        raise ConfigError(
            f"{where}: activation={name} is not a Keras activation{none}; use one of: {', '.join(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]()


def regularizer(value, where: str) -> tuple:
    """Keras's kernel_regularizer: 'l1' (0.01), 'l2' (0.01), {l1: .., l2: ..}, or null."""
    if value is None:
        return 0.0, 0.0
    if value in ("l1", "l2"):
        return (0.01, 0.0) if value == "l1" else (0.0, 0.01)
    if isinstance(value, dict) and value and set(value) <= {"l1", "l2"}:
        factors = [value.get(k, 0.0) for k in ("l1", "l2")]
        if all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 <= f < math.inf for f in factors):
            return float(factors[0]), float(factors[1])
    raise ConfigError(
        f"{where}: kernel_regularizer={value!r}: use l1, l2 (0.01 each, as Keras) or {{l1: 0.001, l2: 0.001}}"
    )


def pair(value, n: int, what: str, where: str) -> tuple:
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,) * n
    if len(values) != n or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ConfigError(f"{where}: {what}={value!r}: use an integer >= 1 or a list of {n}")
    return values


def same_padding(size, kernel, stride, dilation=(1, 1)) -> tuple:
    """F.pad amounts (last dim first) for Keras's 'same': out = ceil(n / stride), the odd pixel
    at the end."""
    pads = []
    for n, k, s, d in zip(size, kernel, stride, dilation):
        reach = (k - 1) * d + 1
        total = max((math.ceil(n / s) - 1) * s + reach - n, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(v for before_after in reversed(pads) for v in before_after)


def check_padding(padding, where):
    if padding not in ("valid", "same"):
        raise ConfigError(f"{where}: padding={padding!r}: use valid or same")


def glorot(module: nn.Module) -> nn.Module:
    """Keras's defaults: glorot_uniform kernel, zero bias."""
    nn.init.xavier_uniform_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    return module
