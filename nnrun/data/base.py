"""Datasets by name. Each loader returns whole tensors; build_data splits, normalises and places
them, and reports the shapes the model is built from."""

import logging
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from nnrun.checks import data_errors, non_finite_data
from nnrun.data.augment import Augment
from nnrun.data.described import Described, Standardization, vocabulary_size
from nnrun.errors import ConfigError
from nnrun.registry import Registry

DATASETS = Registry("data")
log = logging.getLogger(__name__)


class Split:
    """One split held as two tensors; batches are index slices, no per-sample Python."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y
        self.pin = False  # CPU splits feeding a GPU: each batch in page-locked memory, so .to() is async
        self.min_batch = 1  # a last batch smaller than this is left out (batch norm cannot train on one sample)

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> "Split":
        return Split(self.x.to(device), self.y.to(device))

    def batches(
        self, batch_size: int, generator: Optional[torch.Generator] = None, limit: Optional[int] = None, start: int = 0
    ):
        """Yield (x, y) batches from batch number start; shuffled with generator when given (the
        whole order is drawn first, so a resumed epoch continues the same order), in order otherwise."""
        n = len(self)
        count = self.num_batches(batch_size, limit)
        if generator is None:
            for i in range(start, count):
                yield self.placed(
                    self.x[i * batch_size : (i + 1) * batch_size], self.y[i * batch_size : (i + 1) * batch_size]
                )
            return
        order = torch.randperm(n, generator=generator).to(self.x.device)
        for i in range(start, count):
            idx = order[i * batch_size : (i + 1) * batch_size]
            yield self.placed(self.x[idx], self.y[idx])

    def placed(self, x, y) -> tuple:
        # PyTorch's pinned-memory cache reuses the blocks, and keeps each until its copy is done
        return (x.pin_memory(), y.pin_memory()) if self.pin else (x, y)

    def num_batches(self, batch_size: int, limit: Optional[int] = None) -> int:
        count = len(self) // batch_size + (1 if len(self) % batch_size >= self.min_batch else 0)
        return count if limit is None else min(count, limit)


@dataclass(kw_only=True)
class Loaded:
    """What a loader returns: whole (x, y) tensors per split, before build_data holds out the
    validation split, scales and places them."""

    train: tuple  # (x, y): inputs (N, ...) and targets (N,)
    val: Optional[tuple] = None  # the loader's own validation split; None: see hold_out
    test: tuple
    classes: list = field(default_factory=list)  # class names in label order ([] for regression)
    task: str = "multiclass"  # multiclass | binary | regression
    transform: object = None  # a transform of the loader's own (fit/__call__/describe), else Standardize
    hold_out: bool = True  # with val None: hold out data.val_split of train (False: the loader wants no validation)


@dataclass
class Data:
    train: Split
    val: Optional[Split]
    test: Split
    batch_size: int
    input_shape: tuple  # one sample, e.g. (1, 28, 28)
    num_classes: int  # 0 for regression
    task: str = "multiclass"  # multiclass | binary | regression
    classes: list = field(default_factory=list)
    transform: object = None  # fitted on train; .describe() is what predictions must apply (nnrun.data.described)
    vocab: int = 0  # token data: rows of the embedding table (0: not tokens)
    target_scale: Optional[tuple] = None  # regression: (mean, std) the targets were standardized with
    augment: object = None  # an Augment applied to training batches, or None
    eval_batches: int = 4  # evaluation batches hold this many training batches (1 after one ran out of memory)

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

    def unscaled(self) -> None:
        self.mean, self.std = 0.0, 1.0  # data.normalize=none: values pass as they are

    def minmax(self, x: torch.Tensor) -> None:
        """data.normalize=minmax: the training split's range to [0, 1] (as scikit-learn's MinMaxScaler)."""
        low, high = float(x.min()), float(x.max())
        self.mean, self.std = low, high - low if high > low else 1.0  # constant: only shifted, as scikit-learn

    def to_unit(self, x: torch.Tensor) -> None:
        """Pixels to [0, 1], for a model that normalizes them itself (a pretrained backbone): / 255
        for 8-bit images, else / the training split's largest value (16 for data=digits)."""
        self.mean = 0.0
        self.std = 255.0 if x.dtype == torch.uint8 else max(float(x.abs().max()), 1e-8)

    def adopt(self, description: Standardization) -> "Standardize":
        """Take the fitted values a run stored (preprocessing.json) instead of fitting."""
        self.mean, self.std = float(description.mean), float(description.std)
        return self

    def describe(self) -> Standardization:
        return Standardization(mean=self.mean, std=self.std)


TARGET_DTYPES = {"multiclass": torch.long, "binary": torch.float32, "regression": torch.float32}


NORMALIZE = {True: "standard", False: "none", "standard": "standard", "minmax": "minmax", "none": "none"}


def normalize_mode(value) -> str:
    """data.normalize as one of standard | minmax | none (true and false are standard and none)."""
    if value == "unit" or (isinstance(value, (bool, str)) and value in NORMALIZE):
        return NORMALIZE.get(value, value)
    raise ConfigError(f"data.normalize={value} is not one of standard, minmax, none (or true, false)")


def build_data(  # noqa: PLR0913  (the data config's keys, and a run's fitted values)
    name: str,
    batch_size: int,
    val_split: float,
    seed: int,
    device=None,
    normalize=True,
    scale_target=None,
    augment=None,
    fitted: Described = None,
    fitted_target: dict = None,
    **options,
) -> Data:
    """Load data by name, hold out a seeded validation split (stratified for classes; loaders of
    series split by time themselves), fit the scaling on the training split only, place on device.
    fitted: a run's stored transform (its typed description: nnrun.data.described) to apply instead
    of fitting, and fitted_target its target scaling; normalize: standard (true), minmax, none (false) or "unit"
    (images to [0, 1], for a model that normalizes them itself); scale_target (regression; null is
    true): train on the targets standardized with the training split's mean and std."""
    normalize = normalize_mode(normalize)
    root = options.pop("root", None) or "data"  # the folder the loader reads (data.root)
    val_split_from = options.pop("val_split_from", None) or "random"  # or end: Keras's validation_split
    options = {k: v for k, v in options.items() if v is not None}
    if "val_split" in DATASETS.parameters(name):
        options["val_split"] = val_split
    loaded = DATASETS.build(name, root=root, seed=seed, **options)
    if not isinstance(loaded, Loaded):
        raise ConfigError(
            f"data.name={name}: its loader returned a {type(loaded).__name__}; return "
            f"nnrun.data.Loaded(train=(x, y), test=(x, y), classes=[...]) (docs/extending.md)"
        )
    task = loaded.task
    for part in ("train", "val", "test"):  # before scaling spreads a NaN everywhere
        if getattr(loaded, part) is not None and loaded.transform is None:  # (csv imputes its own)
            non_finite_data(part, Split(*getattr(loaded, part)))
    x_train, y_train = loaded.train
    x_val, y_val = loaded.val or (None, None)
    if val_split_from not in ("random", "end"):
        raise ConfigError(f"data.val_split_from={val_split_from} is not one of random, end")
    if val_split > 0 and loaded.val is None and loaded.hold_out:  # a loader that splits by time gives its own
        hold_out = random_split if task == "regression" else stratified_split
        if val_split_from == "end":
            train_idx, val_idx = end_split(len(y_train), val_split, key="data.val_split")
        else:
            train_idx, val_idx = hold_out(y_train, val_split, seed, key="data.val_split")
        (x_train, x_val), y_train, y_val = split_rows(x_train, train_idx, val_idx), y_train[train_idx], y_train[val_idx]
    files = x_train if getattr(x_train, "streamed", False) else None  # image_folder streamed from disk
    if files is not None and fitted is None:  # its statistics: from a seeded sample (a run's own: none needed)
        x_train = files.sample(seed)
    transform = loaded.transform or Standardize()
    if fitted is not None:
        transform.adopt(fitted)
    else:
        transform.fit(x_train)
        if normalize == "none":
            transform.unscaled()
        elif normalize == "minmax":
            transform.minmax(x_train)
        elif normalize == "unit" and isinstance(transform, Standardize):
            transform.to_unit(x_train)
    target_scale = None  # a run adopted (fitted) brings its own, or none (it trained on raw targets)
    if task == "regression" and (fitted_target is not None or (fitted is None and scale_target is not False)):
        target_scale = target_scaling(y_train, fitted_target)

    def split(x, y):
        y = y.to(TARGET_DTYPES[task])
        if target_scale is not None:
            y = (y.double() - target_scale[0]).div(target_scale[1]).float()
        if getattr(x, "streamed", False):  # files: decoded and scaled per batch
            return x.split(transform, y)
        return Split(scaled(transform, x), y)

    train = split(files if files is not None else x_train, y_train)
    data = Data(
        train=train,
        val=split(x_val, y_val) if x_val is not None else None,
        test=split(*loaded.test),
        batch_size=batch_size,
        input_shape=tuple(train.x.shape[1:]),
        num_classes=len(loaded.classes),
        task=task,
        classes=list(loaded.classes),
        transform=transform,
        vocab=vocabulary_size(transform.describe()),
        augment=image_augment(augment, train, transform),
        target_scale=target_scale,
    )
    data_errors(data)
    if device is not None and fits_on(device, data):
        data.train, data.test = data.train.to(device), data.test.to(device)
        data.val = data.val.to(device) if data.val is not None else None
    elif device is not None and torch.device(device).type == "cuda":  # batches go over from pinned memory
        for s in (data.train, data.val, data.test):
            if s is not None:
                s.pin = True
    return data


BLOCK = 8 * 1024**2  # bytes of rows moved or scaled at a time (float64 temporaries: a few times that)


def rows_per_block(x: torch.Tensor) -> int:
    return max(1, BLOCK // max(1, x[:1].numel() * x.element_size()))


def split_rows(x, kept: torch.Tensor, held: torch.Tensor) -> tuple:
    """(x[kept], x[held]) for sorted index sets that share no row and cover x, without a second
    copy of x: the held rows are copied out, the kept ones moved up in x, a block at a time, and
    the held ones put back after them, so both are views of x's memory (x's row order changes:
    it is the loader's own). Anything but a tensor (image files, streamed) is indexed."""
    if not isinstance(x, torch.Tensor) or len(kept) + len(held) != len(x):
        return x[kept], x[held]
    held_rows = x[held]
    step = rows_per_block(x)
    for start in range(0, len(kept), step):
        block = kept[start : start + step]  # each at or after start: kept is sorted, so no row is read once overwritten
        x[start : start + len(block)] = x[block]
    x[len(kept) :] = held_rows
    return x[: len(kept)], x[len(kept) :]


def scaled(transform, x: torch.Tensor) -> torch.Tensor:
    """transform(x) a block of rows at a time (every transform treats rows alone), written into x
    itself when x holds float32 (the loader's own copy): its temporaries are a block's, not the
    array's. Transforms that change a row's shape (row numbers to a table's features) run whole."""
    first = transform(x[:1]) if isinstance(x, torch.Tensor) and len(x) > 1 else None
    if first is None or first.dtype != torch.float32 or first.shape[1:] != x.shape[1:]:
        return transform(x)
    out = x if x.dtype == torch.float32 else torch.empty(x.shape, dtype=torch.float32)
    step = rows_per_block(out)
    for start in range(0, len(x), step):
        out[start : start + step] = transform(x[start : start + step])
    return out


def target_scaling(y: torch.Tensor, fitted: dict = None) -> tuple:
    """(mean, std) of the training targets, or the values a run stored (preprocessing.json's
    "target"), checked: they are data from whoever made the run folder."""
    import math

    if fitted is not None:
        mean, std = (fitted.get("mean"), fitted.get("std")) if isinstance(fitted, dict) else (None, None)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (mean, std)):
            raise ConfigError(
                "preprocessing.json: the target's scaling needs a finite mean and std; the run folder is damaged"
            )
        if not (abs(mean) < 1e150 and 1e-150 < std < 1e150):  # beyond any real target: a tampered file
            raise ConfigError(
                f"preprocessing.json: the target's scaling (mean {mean:g}, std {std:g}) is out of range; "
                f"the run folder is damaged"
            )
        return float(mean), float(std)
    y = y.double()
    std = float(y.std()) if len(y) > 1 else 0.0
    return float(y.mean()), std if std > 0 and math.isfinite(std) else 1.0


def image_augment(options, train: Split, transform):
    """An Augment for image batches, or None when data.augment asks for nothing."""
    augment = Augment(**(options or {}))
    if not augment:
        return None
    if train.x.dim() != 4 or not train.x.is_floating_point():
        raise ConfigError(
            f"data.augment={augment.describe()} works on images; this data gives samples of "
            f"shape {tuple(train.x.shape[1:])}: set the data.augment options to 0/false"
        )
    augment.fill = float(transform(torch.zeros(1, *train.x.shape[1:]))[0].min())  # where a black pixel lands
    return augment


def fingerprint(data: Data) -> dict:
    """What a resumed run must find again: each split's size and a digest of its labels (targets),
    which change when rows or files are added, removed or relabelled, or the splits drawn otherwise."""
    import hashlib

    out = {}
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        if split is not None:
            y = getattr(split, "split", split).y.detach().cpu().contiguous()  # a DDP shard: its whole split
            out[name] = [len(y), hashlib.blake2b(y.numpy().tobytes(), digest_size=8).hexdigest()]
    return out


def fingerprint_changes(saved: dict, now: dict) -> str:
    """The differences between two fingerprints, in words ('' when none)."""
    changes = []
    for name in ("train", "val", "test"):
        a, b = saved.get(name), now.get(name)
        if a != b:
            before, after = (a or [0])[0], (b or [0])[0]
            changes.append(f"{name}: {before} -> {after} samples" if before != after else f"{name}: other labels")
    return ", ".join(changes)


def unseen_classes(y: torch.Tensor, train_rows: int, files: list, classes: list, task: str) -> None:
    """A class that only a validation or test file holds (files: [(its key=file, row indices)])
    would become an output the model never trains on: an error naming the file and the class."""
    if task == "regression" or not classes:
        return
    seen = set(y[:train_rows].long().tolist())
    for where, rows in files:
        extra = sorted(set(y[rows].long().tolist()) - seen)
        if extra:
            raise ConfigError(
                f"{where} holds class(es) {', '.join(repr(classes[i]) for i in extra[:3])} that the training "
                f"data lacks; remove those rows, or add training examples of them"
            )


def random_split(y, fraction: float, seed: int, key: str):
    """Indices (kept, held_out): round(fraction * n) held out at random, at least one; seeded."""
    n = y if isinstance(y, int) else len(y)
    order = np.random.default_rng(seed).permutation(n)
    n_held = max(1, round(fraction * n))
    if n_held >= n:
        raise ConfigError(
            f"{key}={fraction} leaves nothing to train on: there are only {n} rows; use a smaller {key} or more data"
        )
    return torch.from_numpy(np.sort(order[n_held:])), torch.from_numpy(np.sort(order[:n_held]))


def end_split(n: int, fraction: float, key: str):
    """Indices (kept, held_out): the last rows, as Keras's validation_split takes them (its
    train_validation_split: the first floor(n * (1 - fraction)) rows train)."""
    split_at = math.floor(n * (1.0 - fraction))
    if split_at in (0, n):
        raise ConfigError(
            f"{key}={fraction} of {n} rows leaves {'nothing to train on' if split_at == 0 else 'no validation rows'} "
            f"(Keras's rule, data.val_split_from=end); use another {key} or more data"
        )
    log.info(
        f"data.val_split_from=end: the last {n - split_at} of the {n} training rows (rows {split_at}..{n - 1} "
        f"in their order) held out for validation, as Keras's validation_split"
    )
    return torch.arange(split_at), torch.arange(split_at, n)


def stratified_split(y: torch.Tensor, fraction: float, seed: int, key: str):
    """Indices (kept, held_out): round(fraction * n) of each class held out, at least one; seeded."""
    labels = np.asarray(y)
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_held = max(1, round(fraction * len(idx)))
        if n_held >= len(idx):  # too few samples of this class to keep some on both sides
            label = int(label) if float(label).is_integer() else label
            raise ConfigError(
                f"{key}={fraction} cannot hold out class {label} and keep some for training: "
                f"it has only {len(idx)} sample(s); use a smaller {key} or more data"
            )
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
    return need < free // 2  # leave half the card to the model and activations
