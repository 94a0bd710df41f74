"""Pre-flight checks, run before the first training step: the classic mistakes, each a small
function here. Errors stop the run with what to do; warnings are logged, kept in summary.json,
and can be silenced by name (trainer.checks.<name>=false).

Errors: non_finite_data, label_range, single_class_validation, loss_task (losses.build_loss),
        output_shape, softmax_output
Warnings: unnormalized_inputs, class_imbalance, first_loss, overlap, unscaled_target"""

import hashlib
import logging
import math

import torch

from nnrun.errors import ConfigError

log = logging.getLogger("nnrun")
SAMPLE = 10_000  # rows the statistics look at; enough to see scales and duplicates
IMBALANCE = 5  # largest class / smallest class at which class_imbalance warns


# ---- errors about the data: called by build_data, before anything is placed on a device ----


def data_errors(data) -> None:
    for split_name, split in (("train", data.train), ("validation", data.val), ("test", data.test)):
        if split is not None:
            non_finite_data(split_name, split)
            label_range(split_name, split, data)
    single_class_validation(data)


def non_finite_data(name: str, split) -> None:
    for what, values in (("inputs", split.x), ("targets", split.y)):
        # in blocks: isfinite on a whole split builds a float copy and three masks of its size
        if values.is_floating_point() and not all(bool(torch.isfinite(b).all()) for b in values.split(8192)):
            bad = (~torch.isfinite(values.reshape(len(values), -1))).any(1).nonzero().flatten()
            raise ConfigError(
                f"data: the {name} data has NaN or infinite {what} in sample {int(bad[0])} "
                f"({len(bad)} samples); clean the data first"
            )


def label_range(name: str, split, data) -> None:
    if data.task == "multiclass" and len(split.y) and (split.y.min() < 0 or split.y.max() >= data.num_classes):
        raise ConfigError(f"data: the {name} split has class labels outside 0..{data.num_classes - 1}")


def single_class_validation(data) -> None:
    if data.val is not None and data.task != "regression" and len(data.val.y.unique()) < 2:
        raise ConfigError(
            f"data.val_split: the validation split holds a single class "
            f"({data.classes[int(data.val.y[0])]}); use more data or a larger data.val_split (rows sorted by "
            f"class with data.val_split_from=end: shuffle them, or use random), or a data.val_path of several classes"
        )


# ---- errors and warnings that need the model: run() calls preflight() before fit() ----


def preflight(data, model, loss_fn, device, enabled: dict, class_weight, resumed: bool) -> list:
    """Raise on a model whose output does not fit the task; return [(name, message)] warnings,
    without those switched off in enabled (trainer.checks)."""
    x = data.train.x[:256].to(device)
    y = data.train.y[:256].to(device)
    was_training = model.training
    model.eval()  # no dropout: this pass draws no random numbers
    try:
        with torch.no_grad():
            output = model(x)
    finally:
        model.train(was_training)
    output_shape(output, data, len(x))
    softmax_output(model, output, data)
    found = [
        ("unnormalized_inputs", unnormalized_inputs(data)),
        ("class_imbalance", class_imbalance(data, class_weight)),
        ("first_loss", None if resumed else first_loss(output, y, data, loss_fn)),
        ("overlap", overlap(data)),
        ("unscaled_target", unscaled_target(data)),
    ]
    warnings = [(name, message) for name, message in found if message and enabled.get(name, True)]
    for name, message in warnings:
        log.warning(f"check {name}: {message} (silence: trainer.checks.{name}=false)")
    return warnings


def output_shape(output, data, batch: int = None) -> None:
    want = (data.outputs,) if data.task == "multiclass" else ((), (1,))
    need = f"{data.num_classes} logits (one per class)" if data.task == "multiclass" else "one value"
    if not isinstance(output, torch.Tensor):
        raise ConfigError(
            f"the model's forward returns a {type(output).__name__}, not a tensor; return one tensor "
            f"holding {need} per sample"
        )
    if output.dim() == 0 or (batch is not None and len(output) != batch):
        rows = "a single value" if output.dim() == 0 else f"{len(output)} rows"
        raise ConfigError(
            f"the model gives {rows} for a batch of {batch} samples; its forward must keep the batch "
            f"(one row of {need} per sample: no sum or mean over the batch, no slicing of it)"
        )
    if not output.is_floating_point():
        raise ConfigError(
            f"the model's outputs are {str(output.dtype).replace('torch.', '')}; return floating-point "
            f"logits (no argmax, no .long())"
        )
    got = tuple(output.shape[1:])
    if (data.task == "multiclass" and got != want) or (data.task != "multiclass" and got not in want):
        raise ConfigError(
            f"the model gives outputs of shape {got} per sample (for samples of shape {tuple(data.input_shape)}), "
            f"but this {data.task} data needs {need}; make its last layer that wide"
        )
    if not torch.isfinite(output).all():
        raise ConfigError(
            "the untrained model's outputs hold NaN or infinity for the first training samples; check its "
            "forward (a division by zero, a log of zero or of a negative value) and its initial weights"
        )


def forward_error(model, sample, exc) -> Exception:
    """The model's first forward pass raised: one line (a ConfigError) naming the data's sample
    shape, the layer that failed and what it was given, torch's message in short, and the likely
    fix. Out of memory and nnrun's own errors stay as they are."""
    if isinstance(exc, (ConfigError, torch.OutOfMemoryError)):
        return exc
    lines = str(exc).strip().splitlines()
    message = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    entered, done, output = trace_forward(model, sample)
    if len(entered) > len(done):  # inside a layer
        name, layer, shape = entered[-1]
        where = (
            layer_fault(name, layer, shape)
            or f"its layer {name} ({type(layer).__name__}) fails on inputs of shape {keras_shape(shape)}: {message}"
        )
    elif output is not None and not isinstance(output, torch.Tensor):
        where = f"its forward returns a {type(output).__name__}, not a tensor; return the outputs as one tensor"
    elif done:  # in the model's own code, between layers
        name, layer, shape = done[-1]
        where = f"its forward fails after layer {name} ({type(layer).__name__}, output {keras_shape(shape)}): {message}"
    else:
        where = f"its forward fails: {message}"
    return ConfigError(f"the model cannot take this data's samples of shape {tuple(sample.shape[1:])}: {where}")


def trace_forward(model, sample):
    """The forward pass again, watched: ([(layer name, layer, input shape)] entered, [(name, layer,
    output shape)] finished, the output or None when it raised)."""
    entered, done, hooks, output = [], [], [], None
    for name, module in model.named_modules():
        if name and not any(True for _ in module.children()):
            hooks.append(module.register_forward_pre_hook(lambda m, a, n=name: entered.append((n, m, first_shape(a)))))
            hooks.append(module.register_forward_hook(lambda m, a, out, n=name: done.append((n, m, first_shape(out)))))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            output = model(sample)
    except Exception:  # noqa: BLE001  (the same failure as the first time: entered/done say where)
        pass
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return entered, done, output


def layer_fault(name: str, layer, shape):
    """What is wrong between a Linear or a convolution and the shape it was given, with the fix;
    None for other layers."""
    if shape is None:
        return None
    what = f"its layer {name} ({type(layer).__name__}"
    if isinstance(layer, torch.nn.Linear):
        if len(shape) > 2:
            return (
                f"{what}, in_features={layer.in_features}) gets inputs of shape {keras_shape(shape)} and reads only "
                f"their last axis; flatten before it (nn.Flatten(), or x.flatten(1)) and set its in_features to "
                f"{math.prod(shape[1:])}"
            )
        if shape[-1] != layer.in_features:
            return (
                f"{what}) expects in_features={layer.in_features} but gets {shape[-1]} features per sample "
                f"(inputs of shape {keras_shape(shape)}); set that Linear's in_features to {shape[-1]}"
            )
    if isinstance(layer, torch.nn.modules.conv._ConvNd):
        axes = len(layer.kernel_size)
        if len(shape) != axes + 2:
            return (
                f"{what}) needs inputs of shape (None, channels, {', '.join(['size'] * axes)}) but gets "
                f"{keras_shape(shape)}; keep the channel and {axes} spatial axes up to it (no flatten before it)"
            )
        if shape[1] != layer.in_channels:
            return (
                f"{what}, in_channels={layer.in_channels}) gets {shape[1]} channels (inputs of shape "
                f"{keras_shape(shape)}); set its in_channels to {shape[1]}"
            )
    return None


def first_shape(value):
    """The shape of the first tensor in a layer's inputs or outputs, or None."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)) and value:
        return first_shape(value[0])
    return None


def keras_shape(shape) -> str:
    return str(("None", *shape[1:])).replace("'", "") if shape is not None else "(unknown)"


PASSING = ("Flatten", "Unflatten", "Identity", "Dropout", "Dropout1d", "Dropout2d", "AlphaDropout")
BOUNDED = {
    "Sigmoid": "0..1",
    "Softmax": "0..1",
    "Tanh": "-1..1",
    "LogSoftmax": "-inf..0",
    "Hardtanh": "-1..1",
    "Hardsigmoid": "0..1",
    "Softsign": "-1..1",
}


def softmax_output(model, output, data) -> None:
    """Course's Common Error #1/#2: a softmax (or sigmoid) in the model before a loss that applies
    it itself, which trains slowly or not at all. Seen in the outputs (rows that are probabilities)
    or in the model's last layer."""
    leaves = [(name, m) for name, m in model.named_modules() if not any(True for _ in m.children())]
    while leaves and type(leaves[-1][1]).__name__ in PASSING:  # they pass the values through unchanged
        leaves.pop()
    last = type(leaves[-1][1]).__name__ if leaves else ""
    if data.task == "regression":
        if last in BOUNDED:
            raise ConfigError(
                f"the model ends in a {last} (layer {leaves[-1][0] or 'model'}): a regression output must be "
                f"unbounded, and a {last} keeps every prediction within {BOUNDED[last]}; remove it so the model "
                f"ends in a linear layer, as nnrun's own models do"
            )
        return
    if last in ("Softmax", "LogSoftmax", "Sigmoid") or (
        data.task == "multiclass"
        and len(output)
        and (output >= 0).all()
        and torch.allclose(output.sum(1), torch.ones(len(output), device=output.device), atol=1e-4)
    ):
        kind = (
            "binary cross-entropy applies the sigmoid" if data.task == "binary" else "cross-entropy applies log-softmax"
        )
        raise ConfigError(
            f"the model ends in a {last if last in ('Softmax', 'LogSoftmax', 'Sigmoid') else 'softmax'}: "
            f"remove it and output raw scores (logits); the {kind} itself"
        )


def unnormalized_inputs(data):
    x = data.train.x[:SAMPLE]
    if not x.is_floating_point() or len(x) < 2:
        return None  # token ids: an Embedding layer reads them
    x = x.double()
    if x.dim() == 2:  # table: one scale per column
        scale = x.std(0)
    elif x.dim() == 3:  # series: one per feature, over samples and steps
        scale = x.reshape(-1, x.shape[-1]).std(0)
    else:  # images: one overall
        scale = x.std().reshape(1)
    big = float(x.abs().max())
    spread = float(scale.max() / scale[scale > 0].min()) if (scale > 0).any() else 1.0
    if big > 20 or spread > 100:
        return (
            f"the inputs are not normalised (largest |value| {big:.4g}, feature scales differ up to "
            f"{spread:.3g}x); training will be slow or unstable: keep data.normalize=true, or scale "
            f"them yourself (e.g. pixels / 255)"
        )
    return None


TARGET_RATIO = 100  # a raw regression target this many times the inputs' scale is warned about


def target_size(data):
    """(the raw regression target's size: max of |mean| and std, the inputs' typical size), or None
    when the target is standardized (data.scale_target) or the task is not regression."""
    if data.task != "regression" or data.target_scale is not None or len(data.train.y) < 2:
        return None
    y = data.train.y[:SAMPLE].double()
    x = data.train.x[:SAMPLE]
    inputs = float(x.double().std()) if x.is_floating_point() and x.numel() > 1 else 1.0
    return max(float(y.mean().abs()), float(y.std())), max(inputs, 1.0)


def unscaled_target(data):
    size = target_size(data)
    if size is None or size[0] <= TARGET_RATIO * size[1]:
        return None
    return (
        f"the regression target is about {size[0]:.3g} in size, {size[0] / size[1]:.0f}x the inputs: "
        f"with data.scale_target=false the model must learn outputs that large, and training is slow "
        f"to start; set data.scale_target=true (metrics and predictions stay in the target's units)"
    )


def class_imbalance(data, class_weight):
    if data.task == "regression" or class_weight is not None:
        return None
    counts = torch.bincount(data.train.y.long().cpu(), minlength=max(data.num_classes, 2))
    low, high = int(counts.argmin()), int(counts.argmax())
    if counts[low] * IMBALANCE > counts[high]:
        return None
    share = float(counts[low]) / float(counts.sum())
    return (
        f"classes are imbalanced: {data.classes[low]!r} has {int(counts[low])} training samples "
        f"({share:.1%}), {data.classes[high]!r} has {int(counts[high])}; accuracy will flatter the "
        f"model: set trainer.class_weight=balanced, and watch recall/F1 or AUC"
    )


def first_loss(output, y, data, loss_fn):
    """An untrained classifier gives about ln(C): even odds. Far above it, the labels or the
    initialisation are off (or the inputs are far from normalised)."""
    if data.task == "regression" or not len(y):
        return None
    expected = math.log(max(data.num_classes, 2))
    got = float(loss_fn(output.reshape(y.shape) if data.task == "binary" else output, y))
    if got <= 2 * expected:
        return None
    return (
        f"the untrained model's loss is {got:.4g}, far above {expected:.4g} (ln {max(data.num_classes, 2)}: "
        f"even odds over the classes); check that the labels match the inputs, the weight "
        f"initialisation, and the input scale"
    )


def overlap(data):
    """Identical samples in the training and validation splits: validation then measures memory."""
    if data.val is None:
        return None

    def digests(x):
        rows = x[: SAMPLE * 5].detach().cpu().contiguous().reshape(min(len(x), SAMPLE * 5), -1).numpy()
        return {hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows}

    seen = digests(data.train.x)
    val = data.val.x[: SAMPLE * 5].cpu().reshape(min(len(data.val.x), SAMPLE * 5), -1).numpy()
    shared = sum(hashlib.blake2b(row.tobytes(), digest_size=16).digest() in seen for row in val)
    if shared == 0 or shared < 0.01 * len(val):
        return None  # a stray duplicate or two is common in real datasets
    return (
        f"{shared} of {len(val)} validation samples also appear in the training split; the "
        f"validation scores overstate how well the model generalises: remove duplicate rows first"
    )
