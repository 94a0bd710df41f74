"""Tabular data from a CSV file: one target column, numeric and categorical features. The file
is read and checked here; scaling and one-hot encoding are fitted on the training split only
(TabularTransform), so nothing about validation or test rows leaks into training."""

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from nnrun.data.base import DATASETS, Loaded, random_split, stratified_split, unseen_classes
from nnrun.data.described import TabularEncoding
from nnrun.errors import ConfigError

log = logging.getLogger(__name__)
TASKS = ("auto", "binary", "multiclass", "regression")
IMPUTE = ("mean", "median")
MAX_CLASSES = 20  # an integer target with more distinct values than this is taken as regression


@DATASETS.register("csv")
def csv(  # noqa: PLR0913  (its parameters are the YAML schema)
    root: str,
    seed: int,
    path: str = None,
    target: str = None,
    features=None,
    task: str = "auto",
    test_path: str = None,
    test_split: float = 0.2,
    impute: str = None,
    na_values=None,
    max_categories: int = 50,
    val_path: str = None,
):
    """Rows of a CSV file; data.target names the column to predict, the others are features."""
    if not path:
        raise ConfigError("data.path is not set: give the CSV file, e.g. data.path=patients.csv")
    if not target:
        raise ConfigError("data.target is not set: name the column to predict, e.g. data.target=outcome")
    if task not in TASKS:
        raise ConfigError(f"data.task={task} is not one of {', '.join(TASKS)}")
    if impute is not None and impute not in IMPUTE:
        raise ConfigError(
            f"data.impute={impute} is not one of {', '.join(IMPUTE)} (or null: missing values are an error)"
        )
    na_values = [na_values] if isinstance(na_values, str) else list(na_values or [])
    frame = read_csv(path, "data.path", na_values)
    features = pick_features(frame, target, features, path)
    frame_rows, test_rows, val_rows = len(frame), 0, 0
    extra = []  # the test file's rows, then the validation file's, after data.path's
    for key, file in (("data.test_path", test_path), ("data.val_path", val_path)):
        if not file:
            continue
        other = read_csv(file, key, na_values)
        absent = [c for c in [target, *features] if c not in other.columns]
        if absent:
            raise ConfigError(
                f"{key}={file} lacks the column(s) {', '.join(absent)} that "
                f"data.path={path} has; give both files the same columns"
            )
        if key == "data.val_path":
            check_values(other, features, [], target, impute, file, None, len(other))
            val_rows = len(other)
        else:
            test_rows = len(other)
        extra.append(other)
    if extra:
        import pandas as pd

        frame = pd.concat([frame, *extra], ignore_index=True)
    categorical = [c for c in features if not is_numeric(frame[c])]
    start = 0  # each file's cells are checked, and named, by their own rows
    for file, rows in ((path, frame_rows), (test_path, test_rows), (val_path, val_rows)):
        if rows:
            check_categories(frame.iloc[start : start + rows], categorical, None, file)
            start += rows
    check_categories(frame, categorical, max_categories, path, cells=False)  # distinct values over all files
    check_values(
        frame.iloc[: frame_rows + test_rows], features, categorical, target, impute, path, test_path, frame_rows
    )
    y, task, classes = encode_target(frame[target], task, target)
    x = torch.arange(len(frame))  # row numbers: TabularTransform reads the rows
    y = torch.from_numpy(y)
    files = (
        [("data.test_path=" + str(test_path), torch.arange(frame_rows, frame_rows + test_rows))] if test_rows else []
    )
    if val_rows:
        files.append(("data.val_path=" + str(val_path), torch.arange(frame_rows + test_rows, len(frame))))
    unseen_classes(y, frame_rows, files, classes, task)
    if test_path:
        train_idx, test_idx = torch.arange(frame_rows), torch.arange(frame_rows, frame_rows + test_rows)
    elif task == "regression":
        train_idx, test_idx = random_split(frame_rows, test_split, seed, key="data.test_split")
    else:
        train_idx, test_idx = stratified_split(y[:frame_rows], test_split, seed, key="data.test_split")
    val = None
    if val_path:
        val_idx = torch.arange(frame_rows + test_rows, len(frame))
        val = (x[val_idx], y[val_idx])
        log.info(f"data.val_path={val_path}: {val_rows} validation rows (data.val_split does not apply)")
    log.info(
        f"data.path={path}: {len(frame)} rows, target {target!r} ({task}"
        + (f", classes {', '.join(classes)}" if classes else "")
        + f"), {len(features)} features"
        + (f" ({len(categorical)} categorical: {', '.join(categorical)})" if categorical else "")
    )
    return Loaded(
        train=(x[train_idx], y[train_idx]),
        val=val,
        test=(x[test_idx], y[test_idx]),
        classes=classes,
        task=task,
        transform=TabularTransform(frame[features], categorical, impute, target),
    )


def read_csv(path: str, key: str, na_values=()):
    import pandas as pd

    if not isinstance(path, str):
        raise ConfigError(f"{key}={path}: give one CSV file")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{key}={path}: no such file (relative paths start from the folder you run nnrun in)")
    try:
        with warnings.catch_warnings(record=True) as caught:  # pandas's warnings are said below, nnrun's way
            warnings.simplefilter("always")
            # low_memory=False: each column typed from all its rows at once, not per chunk of ~260,000 rows
            # (a DtypeWarning, and a column of numbers and strings mixed, when the chunks disagree)
            frame = pd.read_csv(file, skipinitialspace=True, na_values=list(na_values or []) or None, low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{key}={path} is not a readable CSV file: {str(exc).strip().splitlines()[0]}") from None
    for said in dict.fromkeys(str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()):
        log.warning(f"{key}={path}: {said}")
    if len(frame) == 0:
        raise ConfigError(f"{key}={path} has a header but no rows")
    return frame


def pick_features(frame, target: str, features, path: str) -> list:
    columns = list(frame.columns)
    if target not in columns:
        raise ConfigError(
            f"data.target={target} is not a column of {path}; its columns: {', '.join(map(str, columns))}"
        )
    if features is None:
        return [c for c in columns if c != target]
    features = [features] if isinstance(features, str) else list(features)
    unknown = [f for f in features if f not in columns]
    if unknown:
        raise ConfigError(
            f"data.features names {', '.join(map(str, unknown))}, not column(s) of {path}; "
            f"its columns: {', '.join(map(str, columns))}"
        )
    if target in features:
        raise ConfigError(f"data.features includes the target column {target}: a model would just copy it")
    if not features:
        raise ConfigError("data.features is empty: name at least one column, or leave it unset for all others")
    return features


def is_numeric(column) -> bool:
    return column.dtype.kind in "iuf"


def check_categories(frame, categorical, max_categories: int, path: str, cells: bool = True) -> None:
    """A text column is one-hot encoded: refuse one that is numbers but for a few cells (a '?'
    would turn it into thousands of one-hot columns), and one with too many distinct values."""
    import pandas as pd

    for column in categorical:
        values = frame[column]
        present = values.notna()
        numbers = pd.to_numeric(values, errors="coerce")
        bad = present & numbers.isna()
        if cells and int(bad.sum()) and int((present & numbers.notna()).sum()) >= int(bad.sum()):
            rows = [int(i) for i in bad.to_numpy().nonzero()[0][:3]]
            cells = ", ".join(f"{values.iloc[i]!r} at row {i + 2}" for i in rows)
            texts = sorted({str(values.iloc[i]) for i in bad.to_numpy().nonzero()[0][:20]})
            raise ConfigError(
                f"column {column!r} of {path} holds numbers but for {int(bad.sum())} cell(s) "
                f"({cells}); fix them, or read them as missing with "
                f"data.na_values=[{','.join(repr(t) for t in texts)}] "
                f"and fill them with data.impute=mean"
            )
        distinct = values[present].astype("string").nunique()
        if max_categories is not None and distinct > max_categories:
            raise ConfigError(
                f"column {column!r} of {path} has {distinct} distinct text values, more than "
                f"data.max_categories={max_categories}: one-hot encoding would make {distinct} "
                f"inputs; drop it (data.features), or raise data.max_categories"
            )


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
            fix = (
                "drop or fill those rows"
                if column == target
                else "fill them in, or set data.impute=mean (or median; categorical columns get their most "
                "frequent value)"
            )
            raise ConfigError(
                f"column {column!r} has {int(missing.sum())} missing value(s), the first at "
                f"{where(int(missing.argmax()))}; {fix}"
            )
        if column not in categorical and is_numeric(values):
            infinite = np.isinf(values.to_numpy(dtype=np.float64, na_value=0.0))
            if infinite.any():
                raise ConfigError(
                    f"column {column!r} has {int(infinite.sum())} infinite value(s), the first at "
                    f"{where(int(infinite.argmax()))}; replace them with finite numbers"
                )


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
            raise ConfigError(
                f"data.task=regression, but column {name!r} holds text (e.g. {values[0]!r}); "
                f"use data.task=multiclass or binary"
            )
        big = np.abs(values.astype(np.float64)).max() if len(values) else 0.0
        if big > np.finfo(np.float32).max:  # float32 would make them infinite
            raise ConfigError(
                f"column {name!r} holds values up to {big:.3g}, beyond float32's range (3.4e38); "
                f"rescale the target (e.g. its logarithm) first"
            )
        return values.astype(np.float32), task, []
    if len(distinct) < 2:
        raise ConfigError(f"column {name!r} has a single value ({distinct[0]}): nothing to classify")
    if task == "binary" and len(distinct) != 2:
        raise ConfigError(
            f"data.task=binary, but column {name!r} has {len(distinct)} distinct values; use data.task=multiclass"
        )
    keys = values if numeric else values.astype(str)
    index = np.searchsorted(distinct, keys)
    classes = [str(v.item() if hasattr(v, "item") else v) for v in distinct]
    if task == "binary":
        return index.astype(np.float32), task, classes  # the second class in sorted order is 1
    return index.astype(np.int64), task, classes


class TabularTransform:
    """A table's preprocessing, the one object that training, nnrun-eval, nnrun-predict and
    load_run all use: a scikit-learn ColumnTransformer, fitted on the training rows (or set from a
    run's preprocessing.json), with per column (in the features' order) the missing values filled
    (data.impute), numeric values standardised, categories one-hot (a category not seen in
    training is all zeros). Its inputs x are row numbers of frame, the feature columns as read."""

    def __init__(self, frame, categorical, impute, target: str):
        self.frame, self.features, self.impute, self.target = frame, list(frame.columns), impute, target
        self.categorical = set(categorical)
        self.columns = None  # the fitted ColumnTransformer

    def fit(self, x: torch.Tensor) -> "TabularTransform":
        rows = self.rows(x)
        for name in self.features:
            if rows[name].isna().all():  # an imputer would drop it, and the inputs would shrink
                raise ConfigError(
                    f"column {name!r} has no values in the training rows; drop it (data.features) or fill it in"
                )
        self.columns = self.transformer({}).fit(rows)
        return self

    def adopt(self, description: TabularEncoding) -> "TabularTransform":
        """The run's fitted values (preprocessing.json) instead of fitting; columns are matched by
        name, categories by their text."""
        check_description(description.as_json())
        stored = {c["name"]: c for c in description.columns}
        missing = [name for name in stored if name not in self.frame.columns]
        if missing:
            raise ConfigError(
                f"the input lacks the column(s) {', '.join(map(repr, missing))} the model was "
                f"trained on: {', '.join(map(repr, stored))}"
            )
        self.features, self.impute = list(stored), description.impute
        self.categorical = {name for name, c in stored.items() if c["kind"] == "categorical"}
        sample = {name: [c["categories"][0]] if name in self.categorical else [0.0] for name, c in stored.items()}
        import pandas as pd

        self.columns = self.transformer(stored).fit(pd.DataFrame(sample, columns=self.features))
        for name, c in stored.items():  # the stored scaling in place of the sample's
            if c["kind"] == "numeric":
                scaler = self.columns.named_transformers_[name][-1]
                scaler.mean_, scaler.scale_ = np.array([c["mean"]], float), np.array([c["std"]], float)
                scaler.var_ = scaler.scale_**2
        return self

    def transformer(self, stored: dict):
        """The ColumnTransformer: a pipeline per feature. stored: a run's columns by name, whose fill
        values and categories are fixed (fitting then learns only the scaling)."""
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        def fill(name, strategy):
            if name in stored:
                value = stored[name].get("fill")
                return [SimpleImputer(strategy="constant", fill_value=value)] if value is not None else []
            return [SimpleImputer(strategy=strategy)] if self.impute else []

        steps = []
        for name in self.features:
            if name in self.categorical:
                categories = [stored[name]["categories"]] if name in stored else "auto"
                encoder = OneHotEncoder(categories=categories, handle_unknown="ignore", sparse_output=False)
                steps.append((name, make_pipeline(*fill(name, "most_frequent"), encoder), [name]))
            else:
                steps.append((name, make_pipeline(*fill(name, self.impute), StandardScaler()), [name]))
        return ColumnTransformer(steps, verbose_feature_names_out=False)

    def rows(self, x: torch.Tensor):
        """The rows x names: numeric columns as floats (text that is not a number: missing),
        categorical ones as text (missing: NaN)."""
        import pandas as pd

        rows = self.frame.iloc[np.asarray(x, dtype=np.int64)]
        out = {}
        for name in self.features:
            if name in self.categorical:
                out[name] = rows[name].astype("string").to_numpy(dtype=object, na_value=np.nan)
            else:
                out[name] = pd.to_numeric(rows[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        return pd.DataFrame(out, columns=self.features)

    def imputer(self, name: str):
        """The column's fitted SimpleImputer, or None (missing values are an error there)."""
        from sklearn.impute import SimpleImputer

        first = self.columns.named_transformers_[name][0]
        return first if isinstance(first, SimpleImputer) else None

    def unscaled(self) -> None:
        """data.normalize=false: numeric columns pass as they are (categories are still one-hot)."""
        for name in self.features:
            if name not in self.categorical:
                scaler = self.columns.named_transformers_[name][-1]
                scaler.mean_, scaler.scale_, scaler.var_ = np.zeros(1), np.ones(1), np.ones(1)

    def minmax(self, x: torch.Tensor) -> None:
        """data.normalize=minmax: numeric columns from their training range to [0, 1] (scikit-learn's
        MinMaxScaler), stored as the same mean/std pair (mean = the minimum, std = the range)."""
        rows = self.rows(x)
        for name in self.features:
            if name in self.categorical:
                continue
            values = rows[[name]]
            imputer = self.imputer(name)
            values = imputer.transform(values) if imputer is not None else values.to_numpy()
            low, high = float(np.nanmin(values)), float(np.nanmax(values))
            scaler = self.columns.named_transformers_[name][-1]
            # a column constant in training is only shifted (range 1), as MinMaxScaler does
            scaler.mean_, scaler.scale_ = np.array([low]), np.array([high - low if high > low else 1.0])
            scaler.var_ = scaler.scale_**2

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.rows(x)
        for name in self.features:
            if name in self.categorical or self.imputer(name) is not None:
                continue
            bad = np.isnan(rows[name].to_numpy())
            if bad.any():
                raise ConfigError(
                    f"column {name!r}: row {int(np.asarray(x)[bad.argmax()]) + 2} is missing or not a number"
                )
        return torch.from_numpy(np.asarray(self.columns.transform(rows), dtype=np.float32)).contiguous()

    def describe(self) -> TabularEncoding:
        """What predictions must apply to new rows, in the order of the model's inputs."""
        columns = []
        for name in self.features:
            pipeline, imputer = self.columns.named_transformers_[name], self.imputer(name)
            fill = imputer.statistics_[0] if imputer is not None else None
            if name in self.categorical:
                columns.append(
                    {
                        "name": name,
                        "kind": "categorical",
                        "categories": [str(c) for c in pipeline[-1].categories_[0]],
                        "fill": str(fill) if fill is not None else None,
                    }
                )
            else:
                scaler = pipeline[-1]
                columns.append(
                    {
                        "name": name,
                        "kind": "numeric",
                        "mean": float(scaler.mean_[0]),
                        "std": float(scaler.scale_[0]),
                        "fill": float(fill) if fill is not None else None,
                    }
                )
        return TabularEncoding(columns=columns, target=self.target, impute=self.impute)


def check_description(description: dict, width: int = None) -> None:
    """A table's transform as preprocessing.json stores it is data from whoever made the run
    folder: plain values of the right kinds, a finite scale above 0, unique names and categories,
    and (width: the model's input size) as many inputs as the model takes; else a ConfigError."""
    import math

    def bad(what: str):
        raise ConfigError(f"preprocessing.json: {what}; the run folder is damaged")

    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    columns = description.get("columns") if isinstance(description, dict) else None
    if not isinstance(columns, list) or not columns:
        bad("the table's transform lists no columns")
    names, total = set(), 0
    for c in columns:
        name = c.get("name") if isinstance(c, dict) else None
        if not isinstance(name, str) or name in names:
            bad(f"a column has no name, or a repeated one ({name!r})")
        names.add(name)
        if c.get("kind") == "numeric":
            if not (number(c.get("mean")) and number(c.get("std")) and c["std"] > 0):
                bad(f"column {name!r} needs a finite mean and a std above 0")
            if c.get("fill") is not None and not number(c["fill"]):
                bad(f"column {name!r} has a fill value that is not a finite number")
            total += 1
        elif c.get("kind") == "categorical":
            categories = c.get("categories")
            if not isinstance(categories, list) or not categories or not all(isinstance(v, str) for v in categories):
                bad(f"column {name!r} needs a list of its categories as text")
            if len(set(categories)) != len(categories):
                bad(f"column {name!r} repeats a category")
            if c.get("fill") is not None and c["fill"] not in categories:
                bad(f"column {name!r} has a fill value that is not one of its categories")
            total += len(categories)
        else:
            bad(f"column {name!r} has kind {c.get('kind')!r}, not numeric or categorical")
    if width is not None and total != width:
        bad(f"its columns make {total} inputs, but the model takes {width}")
