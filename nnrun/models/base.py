"""Models by name. Each class takes input_shape and num_classes from the data, the rest from YAML;
ModelHooks lists what else nnrun calls on a model that has it."""

import inspect
import math
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

import torch
from torch import nn

from nnrun.errors import ConfigError
from nnrun.machine import physical_memory
from nnrun.registry import Registry, check_options
from nnrun.safety import resolve

MODELS = Registry("model")

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "swish": nn.SiLU,
    "silu": nn.SiLU,
}
# Keras output activations: nnrun's models end in logits, and the loss applies these
OUTPUT_ACTIVATIONS = ("softmax", "log_softmax")


def activation(name: str) -> nn.Module:
    if name in OUTPUT_ACTIVATIONS:
        raise ConfigError(
            f"model.activation={name}: {name} belongs to a classifier's output, which nnrun adds itself: the "
            f"model ends in logits, the cross-entropy loss applies {name}, and predictions come out as "
            f"probabilities. model.activation is for the hidden layers: one of {', '.join(ACTIVATIONS)}"
        )
    if name not in ACTIVATIONS:
        raise ConfigError(f"model.activation={name} is not known; choose one of: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def check_dropout(rate) -> float:
    if not 0 <= rate < 1:
        raise ConfigError(f"model.dropout={rate} is out of range: use 0 <= dropout < 1")
    return float(rate)


def dense_stack(in_features: int, hidden, act: str, dropout: float, batchnorm: bool) -> list:
    """Keras-style Dense blocks: Linear, [BatchNorm], activation, [Dropout] for each width."""
    layers = []
    for width in hidden:
        layers.append(nn.Linear(in_features, int(width)))
        if batchnorm:
            layers.append(nn.BatchNorm1d(int(width)))
        layers.append(activation(act))
        if dropout:
            layers.append(nn.Dropout(dropout))
        in_features = int(width)
    return layers


class ModelHooks(Protocol):
    """A model's optional hooks: an nn.Module may define any of these, and nnrun calls those it
    finds (through hooks(model), the one place that looks). None is needed for a plain model."""

    notes: list  # lines logged under the model's table (model=sequential: what it added or chose)
    layer_penalties: list  # (weight, l1, l2) per layer with its own kernel_regularizer, added to the loss
    unfreeze_at_epoch: Optional[int]  # a frozen backbone's epoch of unfreezing: a warning when past trainer.epochs

    def load_pretrained(self) -> None:
        """Load pretrained weights (model.weights); called by a new run only, never on resume or reload."""

    def param_groups(self, lr: float, scale: Optional[float]) -> list:
        """The optimizer's parameter groups (e.g. a head at lr, a backbone at lr x scale)."""

    def train_stage(self, epoch: int) -> bool:
        """Freeze or unfreeze parts for this epoch (from 1); True when the trainable parameters changed."""


@dataclass(frozen=True)
class Hooks:
    """The hooks of one model, each its default when the model lacks it (None: not called)."""

    notes: tuple = ()
    layer_penalties: tuple = ()
    unfreeze_at_epoch: Optional[int] = None
    load_pretrained: Optional[Callable[[], None]] = None
    param_groups: Optional[Callable[[float, Optional[float]], list]] = None
    train_stage: Optional[Callable[[int], bool]] = None


HOOKS = ("notes", "layer_penalties", "unfreeze_at_epoch", "load_pretrained", "param_groups", "train_stage")


def hooks(model: nn.Module) -> Hooks:
    """What of ModelHooks model has (a hook set to None counts as absent)."""
    found = {name: getattr(model, name, None) for name in HOOKS}
    found["notes"] = tuple(found["notes"] or ())
    found["layer_penalties"] = tuple(found["layer_penalties"] or ())
    return Hooks(**found)


TRAINING_BYTES = 8  # per parameter trained in float32, at the least: its weight and its gradient


def check_size(model_conf: dict) -> None:
    """The model conf describes, built first on the meta device (no memory): one line when training
    it could not fit in this machine's memory (a 4096x4096 image into a CNN's dense head), instead
    of an allocator's traceback. A model the meta device cannot build is not checked here."""
    if model_conf.get("name") == "custom" or "_target_" in model_conf:  # your constructor: not run twice
        return
    try:
        with torch.device("meta"):
            count = sum(p.numel() for p in build_model(**model_conf).parameters())
    except Exception:  # noqa: BLE001  (the real build reports it)
        return
    need, have = count * TRAINING_BYTES, physical_memory()
    if need > have:
        shape = "x".join(map(str, model_conf["input_shape"]))
        raise ConfigError(
            f"model={model_conf.get('name')} on samples of shape {shape} has {count:,} parameters: training "
            f"it needs at least {need / 1e9:,.0f} GB (weights and gradients), more than this machine's "
            f"{have / 1e9:,.0f} GB; use a smaller model (model.*) or smaller inputs (for images data.image_size)"
        )


def build_model(
    name: str,
    input_shape,
    num_classes: int,
    l1: float = 0.0,
    l2: float = 0.0,
    vocab_size: int = 0,
    task: str = None,
    **options,
) -> nn.Module:
    """The registered model; l1/l2 (Keras kernel_regularizer) become model.penalty(); vocab_size
    (token data) goes to models with an Embedding layer, task to models that take it."""
    target = options.pop("_target_", None)
    if target is None and task is not None and "task" in inspect.signature(MODELS.get(name)).parameters:
        options["task"] = task
    if vocab_size:
        cls = MODELS.get(name) if target is None else None
        if cls is not None and "vocab_size" not in inspect.signature(cls).parameters:
            raise ConfigError(
                f"model={name} cannot read text (token ids); use model=lstm or model=mlp, "
                f"which start with an Embedding layer (model.embedding_dim)"
            )
        options["vocab_size"] = vocab_size
    if target is None:
        model = MODELS.build(name, tuple(input_shape), num_classes, **options)
    else:  # a class by import path (vetted by nnrun.safety)
        model = build_target(target, tuple(input_shape), num_classes, options)
    model.penalty = weight_penalty(model, l1, l2)
    return model


def build_target(target: str, input_shape, num_classes: int, options: dict) -> nn.Module:
    """model._target_=package.Class: called with the YAML keys, plus input_shape and num_classes
    when it takes them (as registered models do)."""
    cls = resolve(target, nn.Module, "model._target_")
    params = inspect.signature(cls).parameters
    extra = {k: v for k, v in (("input_shape", input_shape), ("num_classes", num_classes)) if k in params}
    check_options(cls, options, f"model._target_ {target}", prefix="model", types=False)
    try:
        return cls(**extra, **options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model._target_={target}: {exc}") from None


def weight_penalty(model: nn.Module, l1: float, l2: float):
    """None, or a function giving l1 * sum|w| + l2 * sum(w^2) over weight matrices and kernels
    (tensors of 2+ dims: not biases or norm scales), as Keras's regularizers do; plus the
    penalties a model's own layers set (model.layer_penalties: (weight, l1, l2), per Keras layer)."""
    terms = [(p, l1, l2) for p in model.parameters() if p.dim() > 1] if (l1 or l2) else []
    terms += hooks(model).layer_penalties
    if not terms:
        return None

    def penalty():
        total = 0.0
        for w, a, b in terms:
            if a:
                total = total + a * w.abs().sum()
            if b:
                total = total + b * w.square().sum()
        return total

    return penalty


def flat_size(shape) -> int:
    return math.prod(shape)
