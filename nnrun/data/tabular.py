"""Tabular data from a CSV file: one target column, numeric and categorical features. The file
is read and checked here; scaling and one-hot encoding are fitted on the training split only
(TabularTransform), so nothing about validation or test rows leaks into training."""

import logging
from pathlib import Path

import numpy as np
import torch

from nnrun.data import DATASETS, random_split, stratified_split
from nnrun.errors import ConfigError

log = logging.getLogger(__name__)
TASKS = ("auto", "binary", "multiclass", "regression")
IMPUTE = ("mean", "median")
MAX_CLASSES = 20      # an integer target with more distinct values than this is taken as regression


@DATASETS.register("csv")
def csv(root: str, seed: int, path: str = None, target: str = None, features=None, task: str = "auto",  # noqa: PLR0913
        test_path: str = None, test_split: float = 0.2, impute: str = None, na_values=None,
        max_categories: int = 50):
    """Rows of a CSV file; data.target names the column to predict, the others are features."""
    if not path:
        raise ConfigError("data.path is not set: give the CSV file, e.g. data.path=patients.csv")
    if not target:
        raise ConfigError("data.target is not set: name the column to predict, e.g. data.target=outcome")
    if task not in TASKS:
        raise ConfigError(f"data.task={task} is not one of {', '.join(TASKS)}")
    if impute is not None and impute not in IMPUTE:
        raise ConfigError(f"data.impute={impute} is not one of {', '.join(IMPUTE)} "
                          f"(or null: missing values are an error)")
    na_values = [na_values] if isinstance(na_values, str) else list(na_values or [])
    frame = read_csv(path, "data.path", na_values)
    features = pick_features(frame, target, features, path)
    if test_path:
        test_frame = read_csv(test_path, "data.test_path", na_values)
        absent = [c for c in [target, *features] if c not in test_frame.columns]
        if absent:
            raise ConfigError(f"data.test_path={test_path} lacks the column(s) {', '.join(absent)} that "
                              f"data.path={path} has; give both files the same columns")
        frame_rows, test_rows = len(frame), len(test_frame)
        import pandas as pd
        frame = pd.concat([frame, test_frame], ignore_index=True)
    categorical = [c for c in features if not is_numeric(frame[c])]
    check_categories(frame, categorical, max_categories, path)
    check_values(frame, features, categorical, target, impute, path, test_path,
                 len(frame) if not test_path else frame_rows)
    y, task, classes = encode_target(frame[target], task, target)
    x = np.stack([frame[c].to_numpy(dtype=np.float64, na_value=np.nan) if c not in categorical
                  else category_codes(frame[c]) for c in features], axis=1)
    levels = {c: list(frame[c].astype("string").astype("category").cat.categories) for c in categorical}
    x = torch.from_numpy(x).float()
    y = torch.from_numpy(y)
    if test_path:
        train_idx, test_idx = torch.arange(frame_rows), torch.arange(frame_rows, frame_rows + test_rows)
    elif task == "regression":
        train_idx, test_idx = random_split(len(y), test_split, seed, key="data.test_split")
    else:
        train_idx, test_idx = stratified_split(y, test_split, seed, key="data.test_split")
    log.info(f"data.path={path}: {len(frame)} rows, target {target!r} ({task}"
             + (f", classes {', '.join(classes)}" if classes else "") + f"), {len(features)} features"
             + (f" ({len(categorical)} categorical: {', '.join(categorical)})" if categorical else ""))
    return {"train": (x[train_idx], y[train_idx]), "test": (x[test_idx], y[test_idx]),
            "classes": classes, "task": task,
            "transform": TabularTransform(features, levels, impute, target)}


def read_csv(path: str, key: str, na_values=()):
    import pandas as pd

    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{key}={path}: no such file (relative paths start from the folder you run nnrun in)")
    try:
        frame = pd.read_csv(file, skipinitialspace=True, na_values=list(na_values or []) or None)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{key}={path} is not a readable CSV file: {str(exc).strip().splitlines()[0]}") from None
    if len(frame) == 0:
        raise ConfigError(f"{key}={path} has a header but no rows")
    return frame


def pick_features(frame, target: str, features, path: str) -> list:
    columns = list(frame.columns)
    if target not in columns:
        raise ConfigError(f"data.target={target} is not a column of {path}; "
                          f"its columns: {', '.join(map(str, columns))}")
    if features is None:
        return [c for c in columns if c != target]
    features = [features] if isinstance(features, str) else list(features)
    unknown = [f for f in features if f not in columns]
    if unknown:
        raise ConfigError(f"data.features names {', '.join(map(str, unknown))}, not column(s) of {path}; "
                          f"its columns: {', '.join(map(str, columns))}")
    if target in features:
        raise ConfigError(f"data.features includes the target column {target}: a model would just copy it")
    if not features:
        raise ConfigError("data.features is empty: name at least one column, or leave it unset for all others")
    return features


def is_numeric(column) -> bool:
    return column.dtype.kind in "iuf"


def check_categories(frame, categorical, max_categories: int, path: str) -> None:
    """A text column is one-hot encoded: refuse one that is numbers but for a few cells (a '?'
    would turn it into thousands of one-hot columns), and one with too many distinct values."""
    import pandas as pd

    for column in categorical:
        values = frame[column]
        present = values.notna()
        numbers = pd.to_numeric(values, errors="coerce")
        bad = present & numbers.isna()
        if int(bad.sum()) and int((present & numbers.notna()).sum()) >= int(bad.sum()):
            rows = [int(i) for i in bad.to_numpy().nonzero()[0][:3]]
            cells = ", ".join(f"{values.iloc[i]!r} at row {i + 2}" for i in rows)
            texts = sorted({str(values.iloc[i]) for i in bad.to_numpy().nonzero()[0][:20]})
            raise ConfigError(f"column {column!r} of {path} holds numbers but for {int(bad.sum())} cell(s) "
                              f"({cells}); fix them, or read them as missing with "
                              f"data.na_values=[{','.join(repr(t) for t in texts)}] "
                              f"and fill them with data.impute=mean")
        distinct = values[present].astype("string").nunique()
        if max_categories is not None and distinct > max_categories:
            raise ConfigError(f"column {column!r} of {path} has {distinct} distinct text values, more than "
                              f"data.max_categories={max_categories}: one-hot encoding would make {distinct} "
                              f"inputs; drop it (data.features), or raise data.max_categories")


def check_values(frame, features, categorical, target, impute, path, test_path, rows_in_path) -> None:
    """Missing or infinite values: an error naming the column and first row (as a spreadsheet
    numbers them: the header is row 1), unless data.impute fills missing features."""
    def where(index: int) -> str:
        if index < rows_in_path:
            return f"{path} row {index + 2}"
        return f"{test_path} row {index - rows_in_path + 2}"

    for column in [target, *features]:
        values = frame[column]
        missing = values.isna().to_numpy()
        if missing.any() and (column == target or impute is None):
            fix = "drop or fill those rows" if column == target else \
                "fill them in, or set data.impute=mean (or median; categorical columns get their most frequent value)"
            raise ConfigError(f"column {column!r} has {int(missing.sum())} missing value(s), the first at "
                              f"{where(int(missing.argmax()))}; {fix}")
        if column not in categorical and is_numeric(values):
            infinite = np.isinf(values.to_numpy(dtype=np.float64, na_value=0.0))
            if infinite.any():
                raise ConfigError(f"column {column!r} has {int(infinite.sum())} infinite value(s), the first at "
                                  f"{where(int(infinite.argmax()))}; replace them with finite numbers")


def category_codes(column) -> np.ndarray:
    """Index of each value among the column's sorted categories, as floats; missing is NaN."""
    codes = column.astype("string").astype("category").cat.codes.to_numpy().astype(np.float64)
    codes[codes < 0] = np.nan
    return codes


def encode_target(column, task: str, name: str):
    """(y, task, classes): class indices (int64) for multiclass, 0/1 floats for binary, floats for
    regression. task=auto: text or an integer column with few values is classification."""
    values = column.to_numpy()
    numeric = is_numeric(column)
    integral = numeric and np.all(np.mod(values.astype(np.float64), 1) == 0)
    distinct = np.unique(values.astype(str) if not numeric else values)
    if task == "auto":
        if numeric and not (integral and len(distinct) <= MAX_CLASSES):
            task = "regression"
        else:
            task = "binary" if len(distinct) == 2 else "multiclass"
        log.info(f"data.task=auto: column {name!r} looks like a {task} target (set data.task to override)")
    if task == "regression":
        if not numeric:
            raise ConfigError(f"data.task=regression, but column {name!r} holds text (e.g. {values[0]!r}); "
                              f"use data.task=multiclass or binary")
        return values.astype(np.float32), task, []
    if len(distinct) < 2:
        raise ConfigError(f"column {name!r} has a single value ({distinct[0]}): nothing to classify")
    if task == "binary" and len(distinct) != 2:
        raise ConfigError(f"data.task=binary, but column {name!r} has {len(distinct)} distinct values; "
                          f"use data.task=multiclass")
    keys = values if numeric else values.astype(str)
    index = np.searchsorted(distinct, keys)
    classes = [str(v.item() if hasattr(v, "item") else v) for v in distinct]
    if task == "binary":
        return index.astype(np.float32), task, classes       # the second class in sorted order is 1
    return index.astype(np.int64), task, classes


class TabularTransform:
    """Fitted on the training rows: fill values, mean/std of numeric columns, the categories seen.
    Applied to every split: numeric columns standardised, categorical ones one-hot (a category
    not seen in training is all zeros)."""

    def __init__(self, features, levels: dict, impute, target: str):
        self.features, self.levels, self.impute, self.target = features, levels, impute, target
        self.position = {name: j for j, name in enumerate(features)}     # column of x holding each

    def fit(self, x: torch.Tensor) -> "TabularTransform":
        x = x.double()
        self.fill, self.mean, self.std, self.seen = {}, {}, {}, {}
        for j, name in enumerate(self.features):
            column = x[:, j]
            known = column[~column.isnan()]
            if name in self.levels:
                codes, counts = known.long().unique(return_counts=True)
                self.seen[name] = codes.tolist()
                self.fill[name] = float(codes[counts.argmax()]) if len(codes) else 0.0
                continue
            if len(known) == 0:
                raise ConfigError(f"column {name!r} has no values in the training rows")
            self.fill[name] = float(known.mean() if self.impute == "mean" else known.median())
            column = torch.where(column.isnan(), self.fill[name], column)
            self.mean[name] = float(column.mean())
            self.std[name] = float(column.std()) if len(column) > 1 else 1.0
            if not self.std[name] > 1e-12:
                self.std[name] = 1.0       # a constant column stays constant (0) instead of NaN
        return self

    def adopt(self, description: dict) -> "TabularTransform":
        """The run's fitted values; categories are matched by name, so their codes may differ
        between the run's file and this one (a category this file lacks is an all-zero column)."""
        columns = {c["name"]: c for c in description["columns"]}
        missing = [f for f in columns if f not in self.features]
        if missing:
            raise ConfigError(f"this data lacks the column(s) {', '.join(missing)} the model was trained on")
        self.features, self.fill, self.mean, self.std, self.seen = list(columns), {}, {}, {}, {}
        for name, c in columns.items():
            if c["kind"] == "numeric":
                self.mean[name], self.std[name] = c["mean"], c["std"]
                self.fill[name] = c["fill"] if c["fill"] is not None else float("nan")
            else:
                names = self.levels.get(name, [])
                self.seen[name] = [names.index(v) if v in names else -1 for v in c["categories"]]
                fill = c.get("fill")
                self.fill[name] = float(names.index(fill)) if fill in names else float("nan")
        self.impute = description.get("impute")
        return self

    def unscaled(self) -> None:
        """data.normalize=false: numeric columns pass as they are (categories are still one-hot)."""
        self.mean = dict.fromkeys(self.mean, 0.0)
        self.std = dict.fromkeys(self.std, 1.0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        parts = []
        for name in self.features:
            j = self.position[name]
            column = torch.where(x[:, j].isnan(), self.fill[name], x[:, j])
            if name in self.levels:
                codes = torch.tensor(self.seen[name], dtype=torch.float64)
                parts.append((column[:, None] == codes[None, :]).double())
            else:
                parts.append(((column - self.mean[name]) / self.std[name])[:, None])
        return torch.cat(parts, dim=1).float().contiguous()

    def describe(self) -> dict:
        """JSON-ready: what predictions must apply to new rows, in the order of the model's inputs."""
        columns = []
        for name in self.features:
            if name in self.levels:
                names = self.levels[name]
                columns.append({"name": name, "kind": "categorical",
                                "categories": [names[c] for c in self.seen[name]],
                                "fill": names[int(self.fill[name])] if self.impute else None})
            else:
                columns.append({"name": name, "kind": "numeric", "mean": self.mean[name],
                                "std": self.std[name], "fill": self.fill[name] if self.impute else None})
        return {"kind": "tabular", "target": self.target, "impute": self.impute, "columns": columns}
