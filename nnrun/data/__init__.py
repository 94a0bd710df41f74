"""Datasets by name. Each loader returns whole tensors; build_data splits, normalises and places
them, and reports the shapes the model is built from."""

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from nnrun.errors import ConfigError
from nnrun.registry import Registry

DATASETS = Registry("data")


class Split:
    """One split held as two tensors; batches are index slices, no per-sample Python."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> "Split":
        return Split(self.x.to(device), self.y.to(device))

    def batches(self, batch_size: int, generator: Optional[torch.Generator] = None,
                limit: Optional[int] = None, start: int = 0):
        """Yield (x, y) batches from batch number start; shuffled with generator when given (the
        whole order is drawn first, so a resumed epoch continues the same order), in order otherwise."""
        n = len(self)
        count = -(-n // batch_size)
        if limit is not None:
            count = min(count, limit)
        if generator is None:
            for i in range(start, count):
                yield self.x[i * batch_size:(i + 1) * batch_size], self.y[i * batch_size:(i + 1) * batch_size]
            return
        order = torch.randperm(n, generator=generator).to(self.x.device)
        for i in range(start, count):
            idx = order[i * batch_size:(i + 1) * batch_size]
            yield self.x[idx], self.y[idx]

    def num_batches(self, batch_size: int, limit: Optional[int] = None) -> int:
        count = -(-len(self) // batch_size)
        return count if limit is None else min(count, limit)


@dataclass
class Data:
    train: Split
    val: Optional[Split]
    test: Split
    batch_size: int
    input_shape: tuple          # one sample, e.g. (1, 28, 28)
    num_classes: int            # 0 for regression
    task: str = "multiclass"    # multiclass | binary | regression
    classes: list = field(default_factory=list)
    transform: object = None    # fitted on train; .describe() is what predictions must apply

    @property
    def outputs(self) -> int:
        """Width of the model's last layer: one logit per class, or one for binary and regression."""
        return self.num_classes if self.task == "multiclass" else 1


class Standardize:
    """One mean and std over all training values (images: every pixel alike)."""

    def fit(self, x: torch.Tensor) -> "Standardize":
        x = x.float()
        self.mean, self.std = float(x.mean()), float(x.std().clamp_min(1e-8))
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.float() - self.mean) / self.std).contiguous()

    def describe(self) -> dict:
        return {"kind": "standardize", "mean": self.mean, "std": self.std}


TARGET_DTYPES = {"multiclass": torch.long, "binary": torch.float32, "regression": torch.float32}


def build_data(name: str, batch_size: int, val_split: float, seed: int, device=None,
               root: str = "data", **options) -> Data:
    """Load data by name, hold out a seeded validation split (stratified for classes), fit the
    scaling on the training split only, place on device."""
    options = {k: v for k, v in options.items() if v is not None}
    loaded = DATASETS.build(name, root=root, seed=seed, **options)
    task = loaded.get("task", "multiclass")
    x_train, y_train = loaded["train"]
    x_val = y_val = None
    if val_split > 0:
        hold_out = random_split if task == "regression" else stratified_split
        train_idx, val_idx = hold_out(y_train, val_split, seed, key="data.val_split")
        x_train, y_train, x_val, y_val = x_train[train_idx], y_train[train_idx], x_train[val_idx], y_train[val_idx]
    transform = loaded.get("transform") or Standardize()
    transform.fit(x_train)

    def split(x, y):
        return Split(transform(x), y.to(TARGET_DTYPES[task]))

    train = split(x_train, y_train)
    data = Data(train=train, val=split(x_val, y_val) if x_val is not None else None,
                test=split(*loaded["test"]), batch_size=batch_size,
                input_shape=tuple(train.x.shape[1:]), num_classes=len(loaded["classes"]),
                task=task, classes=list(loaded["classes"]), transform=transform)
    check_splits(data)
    if device is not None and fits_on(device, data):
        data.train, data.test = data.train.to(device), data.test.to(device)
        data.val = data.val.to(device) if data.val is not None else None
    return data


def check_splits(data: Data) -> None:
    """Before the first step: finite inputs and targets, class labels in range, and a validation
    split with more than one class (else its accuracy and AUC say nothing)."""
    for name, split in (("train", data.train), ("validation", data.val), ("test", data.test)):
        if split is None:
            continue
        for what, values in (("inputs", split.x), ("targets", split.y)):
            if values.is_floating_point() and not torch.isfinite(values).all():
                bad = (~torch.isfinite(values.reshape(len(values), -1))).any(1).nonzero().flatten()
                raise ConfigError(f"data: the {name} split has NaN or infinite {what} in sample {int(bad[0])} "
                                  f"({len(bad)} samples); clean the data first")
        if data.task == "multiclass" and len(split.y) and (split.y.min() < 0 or split.y.max() >= data.num_classes):
            raise ConfigError(f"data: the {name} split has class labels outside 0..{data.num_classes - 1}")
    if data.val is not None and data.task != "regression" and len(data.val.y.unique()) < 2:
        raise ConfigError(f"data.val_split: the validation split holds a single class ({data.classes[int(data.val.y[0])]}); "
                          f"use more data or a larger data.val_split")


def random_split(y, fraction: float, seed: int, key: str):
    """Indices (kept, held_out): round(fraction * n) held out at random, at least one; seeded."""
    n = y if isinstance(y, int) else len(y)
    order = np.random.default_rng(seed).permutation(n)
    n_held = max(1, round(fraction * n))
    if n_held >= n:
        raise ConfigError(f"{key}={fraction} leaves nothing to train on: there are only {n} rows; "
                          f"use a smaller {key} or more data")
    return torch.from_numpy(np.sort(order[n_held:])), torch.from_numpy(np.sort(order[:n_held]))


def stratified_split(y: torch.Tensor, fraction: float, seed: int, key: str):
    """Indices (kept, held_out): round(fraction * n) of each class held out, at least one; seeded."""
    labels = np.asarray(y)
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_held = max(1, round(fraction * len(idx)))
        if n_held >= len(idx):   # too few samples of this class to keep some on both sides
            label = int(label) if float(label).is_integer() else label
            raise ConfigError(f"{key}={fraction} cannot hold out class {label} and keep some for training: "
                              f"it has only {len(idx)} sample(s); use a smaller {key} or more data")
        held.append(idx[:n_held])
        kept.append(idx[n_held:])
    return torch.from_numpy(np.sort(np.concatenate(kept))), torch.from_numpy(np.sort(np.concatenate(held)))


def fits_on(device, data: Data) -> bool:
    """Whether all splits fit comfortably on device; CPU always does (they are there already)."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type == "cpu" or device.type == "mps"
    splits = [s for s in (data.train, data.val, data.test) if s is not None]
    need = sum(s.x.numel() * s.x.element_size() + s.y.numel() * 8 for s in splits)
    free, _ = torch.cuda.mem_get_info(device)
    return need < free // 2     # leave half the card to the model and activations


from nnrun.data import digits, tabular, vision  # noqa: E402,F401  (registers the datasets)
