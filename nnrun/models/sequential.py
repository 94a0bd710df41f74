"""model=sequential: a Keras Sequential written as YAML, layer by layer.

    layers:
      - conv2d: {filters: 32, kernel_size: 3, activation: relu}
      - max_pooling2d            # a name alone: Keras's defaults
      - dropout: 0.5             # a plain value: Keras's first argument (rate)
      - dense: {units: 10, activation: softmax}

Names and arguments are Keras's; each layer's input shape is the previous one's output, found
when the model is built. A final dense as wide as the data's outputs is the output layer; its
softmax or sigmoid is left to the loss (the model ends in logits), as nnrun's losses expect."""

import inspect
import math
from collections import OrderedDict

import torch
from torch import nn

from nnrun.errors import ConfigError, suggest
from nnrun.models.base import MODELS
import nnrun.models.layers as L
from nnrun.registry import kind_name, same_kind


class Context:
    """What a layer builder needs besides its arguments: the input shape of one sample, where it
    sits (for messages), the vocabulary of token data, and the weight penalties it adds."""

    def __init__(self, shape, where, vocab, penalties):
        self.shape, self.where, self.vocab, self.penalties = shape, where, vocab, penalties

    def need(self, dims: int, what: str):
        if len(self.shape) != dims:
            raise ConfigError(f"{self.where} needs {what}; its input has shape {self.shape}")

    def penalize(self, weight, kernel_regularizer):
        l1, l2 = L.regularizer(kernel_regularizer, self.where)
        if l1 or l2:
            self.penalties.append((weight, l1, l2))


def last_axis(ctx) -> int:
    return ctx.shape[0] if len(ctx.shape) == 3 else ctx.shape[-1]


# ---- the builders: Keras's argument names and defaults; ctx first ----


def dense(ctx, units, activation=None, use_bias=True, kernel_regularizer=None):
    check_size(last_axis(ctx) * positive(units, "units", ctx), ctx)
    linear = L.glorot(nn.Linear(last_axis(ctx), positive(units, "units", ctx), bias=use_bias))
    ctx.penalize(linear.weight, kernel_regularizer)
    return L.LastAxis("Dense", linear, L.activation(activation, ctx.where))


def conv(dims):
    def build(  # noqa: PLR0913  (Keras's arguments)
        ctx,
        filters,
        kernel_size,
        strides=1,
        padding="valid",
        dilation_rate=1,
        activation=None,
        use_bias=True,
        kernel_regularizer=None,
    ):
        ctx.need(dims + 1, "images (channels, height, width)" if dims == 2 else "sequences (steps, features)")
        kernel = L.pair(kernel_size, dims, "kernel_size", ctx.where)
        stride = L.pair(strides, dims, "strides", ctx.where)
        dilation = L.pair(dilation_rate, dims, "dilation_rate", ctx.where)
        L.check_padding(padding, ctx.where)
        channels, size = (ctx.shape[0], ctx.shape[1:]) if dims == 2 else (ctx.shape[1], ctx.shape[:1])
        check_window([(k - 1) * d + 1 for k, d in zip(kernel, dilation)], size, "the kernel's reach", ctx)
        check_size(math.prod(kernel) * channels * positive(filters, "filters", ctx), ctx)
        cls = nn.Conv2d if dims == 2 else nn.Conv1d
        layer = L.glorot(cls(channels, positive(filters, "filters", ctx), kernel, stride, 0, dilation, bias=use_bias))
        ctx.penalize(layer.weight, kernel_regularizer)
        pad = L.same_padding(size, kernel, stride, dilation) if padding == "same" else ()
        return L.Conv(f"Conv{dims}D", layer, pad if any(pad) else (), L.activation(activation, ctx.where))

    return build


def pooling(kind, dims):
    def build(ctx, pool_size=2, strides=None, padding="valid"):
        ctx.need(dims + 1, "images (channels, height, width)" if dims == 2 else "sequences (steps, features)")
        size = L.pair(pool_size, dims, "pool_size", ctx.where)
        stride = L.pair(strides, dims, "strides", ctx.where) if strides is not None else size
        L.check_padding(padding, ctx.where)
        spatial = ctx.shape[1:] if dims == 2 else ctx.shape[:1]
        check_window(size, spatial, "pool_size", ctx)
        pad = L.same_padding(spatial, size, stride) if padding == "same" else ()
        name = f"{'Max' if kind == 'max' else 'Average'}Pooling{dims}D"
        return L.Pool(name, kind, size, stride, pad if any(pad) else ())

    return build


def global_pooling(kind, dims):
    def build(ctx):
        ctx.need(dims + 1, "images (channels, height, width)" if dims == 2 else "sequences (steps, features)")
        return L.GlobalPool(f"Global{'Max' if kind == 'max' else 'Average'}Pooling{dims}D", kind)

    return build


def flatten(ctx):
    return L.Flatten()


def reshape(ctx, target_shape):
    target = list(target_shape) if isinstance(target_shape, (list, tuple)) else [target_shape]
    size = math.prod(ctx.shape)
    known = [d for d in target if d != -1]
    if target.count(-1) > 1 or any(not isinstance(d, int) or d < 1 for d in known):
        raise ConfigError(f"{ctx.where}: target_shape={target_shape!r}: use positive sizes, at most one -1")
    whole = math.prod(known)
    if -1 in target and size % whole == 0:
        target[target.index(-1)] = size // whole
    if math.prod(target) != size:
        raise ConfigError(
            f"{ctx.where}: target_shape={target_shape!r} does not hold the {size} values of input {ctx.shape}"
        )
    return L.Reshape(target)


def dropout(ctx, rate):
    return L.Lambda("Dropout", nn.Dropout(rate_in_range(rate, ctx)))


def spatial_dropout(dims):
    def build(ctx, rate):
        ctx.need(dims + 1, "images (channels, height, width)" if dims == 2 else "sequences (steps, features)")
        return L.SpatialDropout(rate_in_range(rate, ctx), f"SpatialDropout{dims}D")

    return build


def batch_normalization(ctx, momentum=0.99, epsilon=0.001, center=True, scale=True):
    # Keras's momentum keeps that share of the old moving average; torch's takes that share of the new
    if not 0 <= momentum <= 1:
        raise ConfigError(
            f"{ctx.where}: momentum={momentum}: use 0..1 (Keras's meaning: 0.99 keeps 99% of the old average)"
        )
    if epsilon <= 0:
        raise ConfigError(f"{ctx.where}: epsilon={epsilon}: use a small positive number (Keras: 0.001)")
    channels = ctx.shape[0] if len(ctx.shape) != 2 else ctx.shape[1]
    cls = nn.BatchNorm2d if len(ctx.shape) == 3 else nn.BatchNorm1d
    norm = cls(channels, eps=epsilon, momentum=1 - momentum, affine=center or scale)
    if norm.affine and not (center and scale):  # Keras drops the one switched off
        (norm.bias if not center else norm.weight).requires_grad_(False)
    return L.Lambda("BatchNormalization", SequenceNorm(norm) if len(ctx.shape) == 2 else norm)


class SequenceNorm(nn.Module):
    """Batch norm of each feature of (B, steps, features), over the batch and the steps."""

    def __init__(self, norm):
        super().__init__()
        self.norm = norm

    def forward(self, x):
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


def layer_normalization(ctx, epsilon=0.001):
    if epsilon <= 0:
        raise ConfigError(f"{ctx.where}: epsilon={epsilon}: use a small positive number (Keras: 0.001)")
    return L.LastAxis("LayerNormalization", nn.LayerNorm(last_axis(ctx), eps=epsilon))


def activation_layer(ctx, activation):
    return L.Lambda("Activation", L.activation(activation, ctx.where) or nn.Identity())


def leaky_relu(ctx, negative_slope=0.3):
    return L.Lambda("LeakyReLU", nn.LeakyReLU(negative_slope))


def embedding(ctx, input_dim=None, output_dim=None):
    if output_dim is None:
        raise ConfigError(
            f"{ctx.where}: needs output_dim (the size of each word vector), e.g. {{embedding: {{output_dim: 64}}}}"
        )
    if not ctx.vocab and input_dim is None:
        raise ConfigError(f"{ctx.where} reads token ids: it needs text data (data=text_csv), or input_dim")
    if len(ctx.shape) != 1:
        raise ConfigError(f"{ctx.where} reads a sequence of token ids; its input has shape {ctx.shape}")
    rows = ctx.vocab if input_dim is None else positive(input_dim, "input_dim", ctx)
    if rows < ctx.vocab:  # an id past the table would fail mid-training (a device assert on CUDA)
        raise ConfigError(
            f"{ctx.where}: input_dim={input_dim} is smaller than the data's vocabulary ({ctx.vocab} ids: the words "
            f"kept, padding and unknown); leave input_dim out (it defaults to the vocabulary) or set data.vocab_size"
        )
    check_size(rows * positive(output_dim, "output_dim", ctx), ctx)
    table = nn.Embedding(rows, output_dim)
    nn.init.uniform_(table.weight, -0.05, 0.05)  # Keras's "uniform" initializer
    return L.Lambda("Embedding", table)


def recurrent(keras_class, bidirectional=False):
    def build(ctx, units, return_sequences=False, dropout=0.0, recurrent_dropout=0.0):
        if recurrent_dropout:
            raise ConfigError(
                f"{ctx.where}: recurrent_dropout is not supported: it needs a step-by-step loop that torch's fused "
                f"recurrent kernels do not run, and nnrun will not approximate it; use dropout (on the inputs) "
                f"or a dropout layer after the recurrent one"
            )
        rows = len(ctx.shape) == 3  # an image: its rows are the steps (as the course's LSTM on MNIST)
        if len(ctx.shape) == 1 or len(ctx.shape) > 3:
            raise ConfigError(f"{ctx.where} needs sequences (steps, features); its input has shape {ctx.shape}")
        features = ctx.shape[0] * ctx.shape[2] if rows else ctx.shape[1]
        drop = rate_in_range(dropout, ctx)
        check_size(4 * positive(units, "units", ctx) * (features + units), ctx)
        return L.Recurrent(
            keras_class, features, positive(units, "units", ctx), return_sequences, drop, bidirectional, rows
        )

    return build


RECURRENT = {"simple_rnn": "SimpleRNN", "lstm": "LSTM", "gru": "GRU"}


def bidirectional(ctx, layer, merge_mode="concat"):
    if merge_mode != "concat":
        raise ConfigError(f"{ctx.where}: merge_mode={merge_mode!r}: only concat is supported")
    name, args = one_layer(layer, ctx.where)
    if name not in RECURRENT:
        raise ConfigError(f"{ctx.where}: bidirectional wraps one of {', '.join(RECURRENT)}, not {name}")
    return call(recurrent(RECURRENT[name], bidirectional=True), ctx, args, f"{ctx.where}.{name}")


BUILDERS = {
    "dense": dense,
    "conv1d": conv(1),
    "conv2d": conv(2),
    "max_pooling1d": pooling("max", 1),
    "max_pooling2d": pooling("max", 2),
    "average_pooling1d": pooling("average", 1),
    "average_pooling2d": pooling("average", 2),
    "global_average_pooling1d": global_pooling("average", 1),
    "global_average_pooling2d": global_pooling("average", 2),
    "global_max_pooling1d": global_pooling("max", 1),
    "global_max_pooling2d": global_pooling("max", 2),
    "flatten": flatten,
    "reshape": reshape,
    "dropout": dropout,
    "spatial_dropout1d": spatial_dropout(1),
    "spatial_dropout2d": spatial_dropout(2),
    "batch_normalization": batch_normalization,
    "layer_normalization": layer_normalization,
    "activation": activation_layer,
    "leaky_relu": leaky_relu,
    "embedding": embedding,
    "simple_rnn": recurrent("SimpleRNN"),
    "lstm": recurrent("LSTM"),
    "gru": recurrent("GRU"),
    "bidirectional": bidirectional,
}


MAX_WEIGHTS = 2**31  # one layer's weights (8 GB in float32): beyond it, a typo, not a model


def check_size(weights: int, ctx) -> None:
    if weights > MAX_WEIGHTS:
        raise ConfigError(
            f"{ctx.where} would hold {weights:,} weights ({weights * 4 / 2**30:,.0f} GB); check its sizes"
        )


def check_window(window, size, what, ctx) -> None:
    """A window wider than its input: valid padding leaves nothing, and 'same' would pad the
    input to the window's size (memory a config should not be able to ask for)."""
    for reach, n in zip(window, size):
        if reach > n:
            raise ConfigError(
                f"{ctx.where}: {what} {reach} is larger than its input ({n} in {ctx.shape}); use a smaller one"
            )


def positive(value, key, ctx) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{ctx.where}: {key}={value!r}: use an integer >= 1")
    return value


def rate_in_range(rate, ctx) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ConfigError(f"{ctx.where}: rate={rate!r} is out of range: use 0 <= rate < 1")
    return float(rate)


# Keras's class names (and its short aliases) for the names nnrun takes, for "did you mean"
KERAS_NAMES = {
    **{"".join(part.title() for part in name.split("_")).lower(): name for name in BUILDERS},
    "simplernn": "simple_rnn",
    "lstm": "lstm",
    "gru": "gru",
    "conv1d": "conv1d",
    "conv2d": "conv2d",
    "maxpool1d": "max_pooling1d",
    "maxpool2d": "max_pooling2d",
    "avgpool1d": "average_pooling1d",
    "avgpool2d": "average_pooling2d",
    "globalavgpool1d": "global_average_pooling1d",
    "globalavgpool2d": "global_average_pooling2d",
    "globalmaxpool1d": "global_max_pooling1d",
    "globalmaxpool2d": "global_max_pooling2d",
    "leakyrelu": "leaky_relu",
    "spatialdropout1d": "spatial_dropout1d",
    "spatialdropout2d": "spatial_dropout2d",
}
# the argument a plain value sets ({dropout: 0.5}): Keras's first; None where Keras's first is
# one nnrun does not take (axis)
PLAIN = {"batch_normalization": None, "layer_normalization": None}


def unknown_layer(name, where) -> ConfigError:
    text = str(name)
    if text.lower() in ("input", "inputlayer"):
        return ConfigError(f"{where}: leave {text} out: the input shape comes from the data")
    known = KERAS_NAMES.get(text.replace("_", "").lower())
    hint = f" (Keras's {text} is {known} here)" if known else suggest(text, BUILDERS)
    return ConfigError(f"{where}: {text} is not a layer nnrun knows{hint}; layers: {', '.join(BUILDERS)}")


def one_layer(item, where) -> tuple:
    """(name, {arguments}) of a list item: "flatten", {dropout: 0.5} or {dense: {units: 64}}."""
    if isinstance(item, str):
        name, args = item, {}
    elif isinstance(item, dict) and len(item) == 1:
        name, args = next(iter(item.items()))
    else:
        raise ConfigError(
            f"{where}: {item!r} is not a layer; write a name (flatten) or one name: arguments "
            f"({{dense: {{units: 64}}}})"
        )
    if isinstance(name, str) and ":" in name and name.split(":")[0].strip() in BUILDERS:
        head, value = (part.strip() for part in name.split(":", 1))
        raise ConfigError(f"{where}: {name!r} is text; write the layer as a mapping: {{{head}: {value}}}")
    if name not in BUILDERS:
        raise unknown_layer(name, where)
    if args is None:
        args = {}
    if name == "bidirectional" and isinstance(args, dict) and len(args) == 1 and next(iter(args)) in RECURRENT:
        args = {"layer": args}  # {bidirectional: {lstm: {...}}}, short for {bidirectional: {layer: {lstm: ...}}}
    if not isinstance(args, dict):  # a plain value: Keras's first argument, as in Dropout(0.5)
        first = [n for n in inspect.signature(BUILDERS[name]).parameters if n != "ctx"][:1]
        first = PLAIN.get(name, first[0] if first else None)
        if first is None:
            raise ConfigError(
                f"{where}: {name} takes no plain value; write its arguments by name, e.g. {{{name}: {{}}}}"
            )
        args = {first: args}
    return name, args


def call(builder, ctx, args, where):
    """builder(ctx, **args), its arguments checked by name and by type against Keras's defaults."""
    params = inspect.signature(builder).parameters
    names = [n for n in params if n != "ctx"]
    for key, value in args.items():
        if key in ("input_shape", "batch_input_shape", "input_length"):
            raise ConfigError(f"{where}.{key}: leave it out: nnrun takes the input shape from the data")
        if key not in params or key == "ctx":
            known = f"its arguments: {', '.join(names)}" if names else "it takes no arguments"
            raise ConfigError(f"{where}.{key} is not an argument nnrun supports{suggest(key, names)}; {known}")
        default = params[key].default
        pair = key in ("kernel_size", "pool_size", "strides", "dilation_rate")  # an int or a pair: pair() checks
        if default is not inspect.Parameter.empty and not pair and not same_kind(value, default):
            raise ConfigError(f"{where}.{key}={value!r}: use {kind_name(default)}, like Keras's default {default!r}")
        if key == "activation" and value is not None and not isinstance(value, str):
            raise ConfigError(f"{where}.activation={value!r}: use one activation's name, e.g. relu")
    missing = [n for n in names if params[n].default is inspect.Parameter.empty and n not in args]
    if missing:
        raise ConfigError(f"{where}: needs {', '.join(missing)}")
    return builder(ctx, **args)


@MODELS.register("sequential")
class Sequential(nn.Sequential):
    """Keras layers in order; the output layer appended when the list does not end in one."""

    def __init__(self, input_shape, num_classes, layers=(), task=None, vocab_size=0):
        if not isinstance(layers, (list, tuple)) or not layers:
            raise ConfigError(
                "model.layers is empty: list the layers, e.g. [flatten, {dense: {units: 64, activation: relu}}]"
            )
        self.notes, penalties = [], []
        named = self.build(list(layers), tuple(input_shape), num_classes, task, vocab_size, penalties)
        super().__init__(OrderedDict(named))
        self.layer_penalties = penalties

    def build(self, items, shape, outputs, task, vocab, penalties) -> list:
        specs = [one_layer(item, f"model.layers[{i}]") for i, item in enumerate(items)]
        if len(specs) > 1 and specs[-1][0] == "activation" and specs[-2][0] == "dense":
            if specs[-2][1].get("activation") in (None, "linear"):
                # Dense(10) then Activation("softmax"): one output layer, as Keras computes it
                specs[-2:] = [("dense", {**specs[-2][1], "activation": specs[-1][1].get("activation")})]
                items = items[:-1]
        if vocab and specs[0][0] != "embedding":
            raise ConfigError(
                "model.layers[0]: this data is token ids (text); start the stack with an embedding, "
                "e.g. {embedding: {output_dim: 64}}"
            )
        head = output_layer(specs, outputs, task)
        if head not in ("append", None):
            self.notes.append(
                f"model.layers[{len(items) - 1}]: the output layer's {head} is applied by the loss, not the model (it "
                f"trains on logits, which is steadier); predictions still come out as probabilities"
            )
            specs[-1] = ("dense", {**specs[-1][1], "activation": None})
        named, counts = [], {}
        x = torch.zeros(2, *shape, dtype=torch.long) if vocab else torch.zeros(2, *shape)

        def add(name, args, where):
            nonlocal x
            module = call(BUILDERS[name], Context(tuple(x.shape[1:]), where, vocab, penalties), args, where)
            count = counts[name] = counts.get(name, -1) + 1
            named.append((name if count == 0 else f"{name}_{count}", module))
            x = dry_run(module, x, where)

        for i, (name, args) in enumerate(specs):
            if i == len(specs) - 1 and head != "append" and x.dim() > 2:
                raise ConfigError(
                    f"model.layers[{i}].dense is the output layer but gets input of shape {tuple(x.shape[1:])}; "
                    f"add flatten (or a global pooling layer) before it, as Keras needs too"
                )
            add(name, args, f"model.layers[{i}].{name}")
        if head == "append":
            if x.dim() > 2:
                add("flatten", {}, "the appended flatten")
            add("dense", {"units": outputs}, "the appended output layer")
            self.notes.append(f"model.layers: nnrun appended the output layer, Dense({outputs}), for this {task} data")
        return named


def dry_run(module, x, where):
    """The layer's output for a dummy batch: its output shape, or one line on why it cannot run."""
    too_small = "; the input is too small here: use padding: same, a smaller kernel or pool, or fewer layers before it"
    module.eval()
    try:
        with torch.no_grad():
            out = module(x)
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0]
        hint = too_small if "size" in reason.lower() else ""
        raise ConfigError(f"{where} cannot take input of shape {tuple(x.shape[1:])}: {reason}{hint}") from None
    module.train()
    if out.dim() < 2 or 0 in out.shape:
        raise ConfigError(f"{where} leaves nothing of input {tuple(x.shape[1:])}{too_small}")
    return out


def output_layer(specs, outputs: int, task) -> object:
    """What ends the stack: "append" (no output layer: nnrun adds Dense(outputs)); None (the
    last dense is the output layer, giving logits); or the activation the loss takes over."""
    name, args = specs[-1]
    act = args.get("activation") if name == "dense" else None
    act = None if act == "linear" else act
    is_head = name == "dense" and (act in ("softmax", "sigmoid") or args.get("units") == outputs)
    if not is_head:
        return "append"
    where = f"model.layers[{len(specs) - 1}].dense"
    fits = {"multiclass": (outputs, "softmax"), "binary": (1, "sigmoid"), "regression": (outputs, None)}
    units, want = fits.get(task, (outputs, act))
    if args.get("units") != units:
        raise ConfigError(
            f"{where}: units={args.get('units')} but this {task} data needs {units} output"
            f"{'s' if units > 1 else ''}; write {{dense: {{units: {units}{', activation: ' + want if want else ''}}}}}"
        )
    if act not in (want, None):
        fix = f"activation: {want}" if want else "no activation: a regression output is linear"
        raise ConfigError(
            f"{where}: activation={act} does not fit {task} data; give the output layer {fix} "
            f"(if this is a hidden layer, add the output layer after it)"
        )
    return act
