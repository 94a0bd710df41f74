"""Losses by name, each for the tasks it fits; loss=auto follows the data's task."""

import torch
from torch import nn

from nnrun.errors import ConfigError
from nnrun.registry import Registry

LOSSES = Registry("loss")
FITS = {}  # loss name -> tasks it fits
DEFAULT = {"multiclass": "ce", "binary": "bce", "regression": "mse"}
# Keras's names for the same losses (its loss strings; labels are class indices here, and
# categorical_crossentropy also takes one-hot rows, as torch's cross-entropy does)
KERAS = {
    "sparse_categorical_crossentropy": "ce",
    "categorical_crossentropy": "ce",
    "binary_crossentropy": "bce",
    "mean_squared_error": "mse",
    "mean_absolute_error": "mae",
}


def fits(*tasks):
    def mark(fn):
        FITS[fn.__name__] = tasks
        return fn

    return mark


@LOSSES.register("ce")
@fits("multiclass")
def ce(class_weight=None, label_smoothing=0.0):
    """Cross-entropy on logits; label_smoothing spreads that share of the target over all classes."""
    if not 0 <= label_smoothing < 1:
        raise ConfigError(f"loss.label_smoothing={label_smoothing}: use 0 <= label_smoothing < 1")
    if class_weight is None:
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    return PerSample(nn.CrossEntropyLoss(weight=class_weight, label_smoothing=label_smoothing, reduction="sum"))


class PerSample(nn.Module):
    """sum(weight[y] * loss) / batch size, as Keras's class_weight; torch's weighted mean divides by
    the weights' sum instead, which is NaN for a batch whose classes all weigh 0."""

    def __init__(self, summed: nn.Module):
        super().__init__()
        self.summed = summed

    def forward(self, output, target):
        return self.summed(output, target) / len(target)


@LOSSES.register("bce")
@fits("binary")
def bce(class_weight=None):
    """Binary cross-entropy on one logit (sigmoid inside, numerically stable)."""
    return nn.BCEWithLogitsLoss() if class_weight is None else WeightedBCE(class_weight)


class WeightedBCE(nn.Module):
    """mean(weight[y] * bce): Keras's class_weight for a binary target."""

    def __init__(self, class_weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", class_weight)

    def forward(self, output, target):
        losses = nn.functional.binary_cross_entropy_with_logits(output, target, reduction="none")
        return (losses * self.weight[target.long()]).mean()


@LOSSES.register("mse")
@fits("regression")
def mse(class_weight=None):
    return nn.MSELoss()


@LOSSES.register("mae")
@fits("regression")
def mae(class_weight=None):
    return nn.L1Loss()


@LOSSES.register("huber")
@fits("regression")
def huber(class_weight=None, delta=1.0):
    return nn.HuberLoss(delta=delta)


FITS.update({alias: FITS[name] for alias, name in KERAS.items()})  # a Keras name fits what its loss fits


def build_loss(name: str, task: str, class_weight=None, **options) -> nn.Module:
    """The training loss; class_weight (a tensor, one weight per class) only where it applies."""
    if name == "auto":
        name = DEFAULT[task]
    typed, name = name, KERAS.get(name, name)
    LOSSES.get(name)  # an unknown name fails here, listing the known
    if task not in FITS[name]:
        fitting = [n for n in LOSSES.names() if task in FITS[n]]
        raise ConfigError(
            f"loss={typed} fits {' or '.join(FITS[name])} targets, but this data's task is "
            f"{task}; use loss=auto or {' / '.join(f'loss={n}' for n in fitting)}"
        )
    return LOSSES.build(name, class_weight=class_weight, **options)


def build_losses(conf: dict, data, class_weight, device) -> tuple:
    """(training loss, evaluation loss): class weights weigh only the training loss, as in Keras."""
    if class_weight is not None and data.task == "regression":
        raise ConfigError(
            f"trainer.class_weight={class_weight} weighs classes, but this data's task is regression; remove it"
        )
    weights = class_weights(class_weight, data.train.y, data.num_classes, classes=data.classes)
    return (
        build_loss(**conf, task=data.task, class_weight=weights).to(device),
        build_loss(**conf, task=data.task).to(device),
    )


def class_weights(spec, labels: torch.Tensor, num_classes: int, key: str = "trainer.class_weight", classes=()):
    """None, 'balanced' (n / (C * count), as scikit-learn), a list of one weight per class, or
    Keras's mapping class -> weight (keys: class indices or the class names; a class left out
    weighs 1, as in Keras)."""
    if spec is None:
        return None
    if isinstance(spec, dict):
        return mapped_weights(spec, num_classes, key, [str(c) for c in classes])
    if spec == "balanced":
        counts = torch.bincount(labels.long().cpu(), minlength=num_classes).float()
        if (counts == 0).any():
            missing = (counts == 0).nonzero().flatten().tolist()
            raise ConfigError(f"{key}=balanced: classes {missing} have no training samples")
        return counts.sum() / (num_classes * counts)
    if isinstance(spec, str) or len(spec) != num_classes or any(float(w) < 0 for w in spec):
        raise ConfigError(
            f"{key}={spec}: use balanced, or a list of {num_classes} weights >= 0 (one per class, in class order)"
        )
    return torch.tensor([float(w) for w in spec])


def mapped_weights(spec: dict, num_classes: int, key: str, classes: list) -> torch.Tensor:
    """Keras's class_weight mapping as one weight per class (a class left out weighs 1)."""
    import math

    weights, seen = torch.ones(num_classes), {}
    for label, weight in spec.items():
        index = None
        if isinstance(label, bool):
            pass  # true/false are not classes (Hydra reads {true: 4} as a bool key)
        elif str(label) in classes:  # a class name (a CSV's labels are names, even "0" and "1")
            index = classes.index(str(label))
        elif isinstance(label, int) and 0 <= label < num_classes:
            index = label
        if index is None:
            names = f" ({', '.join(classes)})" if classes else ""
            raise ConfigError(
                f"{key}: {label!r} is not a class; use class indices 0..{num_classes - 1} or the class names{names}"
            )
        if index in seen:
            raise ConfigError(
                f"{key}: {seen[index]!r} and {label!r} both name class {classes[index] if classes else index!r}; "
                f"name each class once (by its name, or by its index)"
            )
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"{key}: the weight of class {label!r} is {weight!r}; use a finite number >= 0")
        seen[index] = label
        weights[index] = float(weight)
    return weights
