"""Time series from a CSV or .npy file, in one of two layouts:
- data.window set: rows are time steps; each sample is data.window steps of the feature columns,
  its target the data.target column data.horizon steps after the window (forecasting). The
  series is split by time (train, then validation, then test) before it is cut into windows,
  so no window shares a step with another split.
- data.window null: each row is one whole series (the columns after the label are its steps) with
  one label, for sequence classification (or regression), like ECG beats."""

import logging
import math
from pathlib import Path

import numpy as np
import torch

from nnrun.data.base import DATASETS, Loaded, random_split, rows_per_block, stratified_split
from nnrun.data.described import FeatureStandardization
from nnrun.data.tabular import encode_target, read_csv
from nnrun.errors import ConfigError

log = logging.getLogger(__name__)


@DATASETS.register("timeseries")
def timeseries(  # noqa: PLR0913  (its parameters are the YAML schema)
    root: str,
    seed: int,
    path: str = None,
    target: str = None,
    features=None,
    window: int = None,
    horizon: int = 1,
    stride: int = 1,
    task: str = "auto",
    test_split: float = 0.2,
    val_split: float = 0.1,
):
    """Windows of a long series (forecasting), or one labelled series per row."""
    if not path:
        raise ConfigError("data.path is not set: give the CSV (or .npy) file, e.g. data.path=sensor.csv")
    if target is None:
        raise ConfigError("data.target is not set: name the column to forecast (or the label column)")
    columns, values = read_series(path)
    target = str(target)
    if target not in columns:
        raise ConfigError(f"data.target={target} is not a column of {path}; its columns: {', '.join(columns)}")
    features = [str(f) for f in features] if features is not None else list(columns)
    unknown = [f for f in features if f not in columns]
    if unknown:
        raise ConfigError(
            f"data.features names {', '.join(unknown)}, not column(s) of {path}; its columns: {', '.join(columns)}"
        )
    if window is None:
        return labelled_series(path, columns, values, target, features, task, test_split, seed)
    return forecast_windows(path, values, target, features, window, horizon, stride, (test_split, val_split))


def read_series(path: str):
    """(column names, columns as float arrays or text) from a CSV, or a 1-D/2-D .npy file whose
    columns are named 0, 1, ..."""
    file = Path(path).expanduser()
    if file.suffix == ".npy":
        if not file.is_file():
            raise ConfigError(f"data.path={path}: no such file (relative paths start from the folder you run nnrun in)")
        try:
            array = np.load(file, allow_pickle=False)  # never unpickle a data file
        except ValueError as exc:
            raise ConfigError(f"data.path={path} is not a plain numeric .npy array ({exc})") from None
        if array.ndim not in (1, 2) or array.dtype.kind not in "iuf":
            raise ConfigError(
                f"data.path={path} holds a {array.ndim}-D {array.dtype} array; "
                f"use numbers, one row per time step (T,) or (T, features)"
            )
        array = array.reshape(len(array), -1).astype(np.float64)
        return [str(j) for j in range(array.shape[1])], {str(j): array[:, j] for j in range(array.shape[1])}
    frame = read_csv(path, "data.path")
    return [str(c) for c in frame.columns], {str(c): frame[c] for c in frame.columns}


def numeric(path: str, name: str, column) -> np.ndarray:
    values = np.asarray(column)
    if values.dtype.kind not in "iuf":
        raise ConfigError(f"column {name!r} of {path} holds text (e.g. {values[0]!r}); a series needs numbers")
    values = values.astype(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        raise ConfigError(
            f"column {name!r} of {path} has {int(bad.sum())} missing or infinite value(s), the first "
            f"at row {int(bad.argmax()) + 2}; fill them in (e.g. carry the last value forward)"
        )
    return values


def forecast_windows(path, values, target, features, window, horizon, stride, splits):
    """Windows of window steps forecasting target horizon steps later, every stride steps; the
    series split by time into train, val and test (splits: the test and val fractions)."""
    test_split, val_split = splits
    if window < 1 or horizon < 1 or stride < 1:
        raise ConfigError(f"data.window={window}, data.horizon={horizon}, data.stride={stride}: use 1 or more")
    series = np.stack([numeric(path, c, values[c]) for c in features], axis=1)  # (T, F)
    goal = numeric(path, target, values[target])
    steps = len(series)
    n_test, n_val = round(test_split * steps), round(val_split * steps)
    bounds = {
        "train": (0, steps - n_test - n_val),
        "val": (steps - n_test - n_val, steps - n_test),
        "test": (steps - n_test, steps),
    }
    out = {"val": None}
    for split, (start, end) in bounds.items():
        if split == "val" and n_val == 0:
            continue  # none wanted
        count = (end - start - window - horizon) // stride + 1
        if count < 1:
            key = "data.test_split" if split == "test" else "data.val_split" if split == "val" else "data.window"
            raise ConfigError(
                f"{key}: the {split} part of {path} has {end - start} steps, too few for one window of "
                f"data.window={window} plus data.horizon={horizon}; use a smaller window or a "
                f"larger split"
            )
        first = start + np.arange(count) * stride  # window starts
        x = series[first[:, None] + np.arange(window)[None, :]]  # (N, window, F)
        y = goal[first + window + horizon - 1]
        out[split] = (torch.from_numpy(x).float(), torch.from_numpy(y).float())
    log.info(
        f"data.path={path}: {steps} steps, {len(features)} feature(s); windows of {window} steps forecast "
        f"{target!r} {horizon} step(s) ahead; split by time {bounds['train'][1]}/{n_val}/{n_test} steps"
    )
    return Loaded(
        **out,
        task="regression",
        transform=FeatureScale(features, window=window, horizon=horizon, target=target),
        hold_out=False,  # split by time above
    )


def labelled_series(path, columns, values, target, features, task, test_split, seed):
    steps = [c for c in features if c != target]
    if not steps:
        raise ConfigError(
            f"data.path={path}: one row per series needs the series' values in the columns besides data.target={target}"
        )
    import pandas as pd

    x = np.stack([numeric(path, c, values[c]) for c in steps], axis=1)[:, :, None]  # (N, T, 1)
    y, task, classes = encode_target(pd.Series(values[target]), task, target)
    x, y = torch.from_numpy(x).float(), torch.from_numpy(y)
    split = random_split if task == "regression" else stratified_split
    train_idx, test_idx = split(y if task != "regression" else len(y), test_split, seed, key="data.test_split")
    log.info(f"data.path={path}: {len(y)} series of {len(steps)} steps, target {target!r} ({task})")
    return Loaded(train=(x[train_idx], y[train_idx]), test=(x[test_idx], y[test_idx]), classes=classes, task=task)


def blocks(flat: torch.Tensor):
    """flat's rows a block at a time: statistics in float64 without a float64 copy of the whole."""
    step = rows_per_block(flat)
    return (flat[i : i + step] for i in range(0, len(flat), step))


def column_range(x: torch.Tensor) -> tuple:
    """(mean, min, max) of each feature (x's last axis), in float64."""
    flat = x.reshape(-1, x.shape[-1])
    total, low, high = torch.zeros(flat.shape[1], dtype=torch.float64), None, None
    for block in blocks(flat):
        block = block.double()
        total += block.sum(0)
        low = block.min(0).values if low is None else torch.minimum(low, block.min(0).values)
        high = block.max(0).values if high is None else torch.maximum(high, block.max(0).values)
    return total / len(flat), low, high


class FeatureScale:
    """Each feature standardised with its mean and std over the training windows; a feature constant
    there is only centred, as scikit-learn's StandardScaler does (a std of 0 would blow up any other
    value it takes later)."""

    def __init__(self, features, **windows):
        self.features, self.windows = features, windows

    def fit(self, x: torch.Tensor) -> "FeatureScale":
        mean, low, high = column_range(x)
        flat = x.reshape(-1, x.shape[-1])
        squares = sum((block.double() - mean).square().sum(0) for block in blocks(flat))  # the second pass of two
        std = (squares / (len(flat) - 1)).sqrt() if len(flat) > 1 else torch.full_like(mean, math.nan)
        self.mean, self.std = mean, torch.where(high == low, 1.0, std.nan_to_num(1.0).clamp_min(1e-12))
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - self.mean) / self.std).float().contiguous()

    def adopt(self, description: FeatureStandardization) -> "FeatureScale":
        self.mean = torch.tensor(description.mean, dtype=torch.float64)
        self.std = torch.tensor(description.std, dtype=torch.float64)
        return self

    def unscaled(self) -> None:
        self.mean, self.std = torch.zeros_like(self.mean), torch.ones_like(self.std)

    def minmax(self, x: torch.Tensor) -> None:
        """data.normalize=minmax: each feature's training range to [0, 1]."""
        _, self.mean, high = column_range(x)
        spread = high - self.mean
        self.std = torch.where(spread > 0, spread, torch.ones_like(spread))  # constant: only shifted, as scikit-learn

    def describe(self) -> FeatureStandardization:
        return FeatureStandardization(
            features=self.features, mean=self.mean.tolist(), std=self.std.tolist(), **self.windows
        )
