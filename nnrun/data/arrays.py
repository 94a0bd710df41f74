"""NumPy arrays, as a notebook has them: an .npz holding x and y, or two .npy files. The shape
of x says what a sample is: (N, features) a table, (N, H, W) / (N, H, W, C) / (N, C, H, W)
images, (N, T, F) sequences. Files are read without unpickling: an array file is data."""

import logging
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from nnrun.data.base import DATASETS, Loaded, Standardize, random_split, split_rows, stratified_split, unseen_classes
from nnrun.data.described import FeatureStandardization, Standardization
from nnrun.data.sequence import FeatureScale
from nnrun.data.tabular import TASKS, encode_target
from nnrun.errors import ConfigError
from nnrun.machine import physical_memory

log = logging.getLogger(__name__)
LAYOUTS = ("auto", "table", "images", "sequence")
DATA_FORMATS = ("auto", "channels_last", "channels_first")
MAX_CHANNELS = 4  # a 4-D axis this small is the channel axis (grey, RGB, RGBA)


@DATASETS.register("arrays")
def arrays(  # noqa: PLR0913  (its parameters are the YAML schema)
    root: str,
    seed: int,
    path: str = None,
    x: str = None,
    y: str = None,
    x_key: str = "x",
    y_key: str = "y",
    val_path=None,
    test_path=None,
    test_split: float = 0.2,
    task: str = "auto",
    layout: str = "auto",
    data_format: str = "auto",
):
    """x and y from data.path (an .npz) or data.x and data.y (.npy files); validation and test
    from data.val_path and data.test_path (an .npz, or [x.npy, y.npy]) or split off the training rows."""
    if task not in TASKS:
        raise ConfigError(f"data.task={task} is not one of {', '.join(TASKS)}")
    if layout not in LAYOUTS:
        raise ConfigError(f"data.layout={layout} is not one of {', '.join(LAYOUTS)}")
    if data_format not in DATA_FORMATS:
        raise ConfigError(f"data.data_format={data_format} is not one of {', '.join(DATA_FORMATS)}")
    if path and (x or y):
        raise ConfigError("data.path and data.x/data.y are both set: give an .npz as data.path, or two .npy files")
    if not path and not (x and y):
        raise ConfigError(
            "data.path is not set: give an .npz holding x and y (np.savez('train.npz', x=x, y=y)), "
            "or two .npy files as data.x=x.npy data.y=y.npy"
        )
    keys = (x_key, y_key)
    parts = {"train": read_pair(path if path else [x, y], "data.path" if path else "data.x/data.y", keys)}
    for part, key, source in (("val", "data.val_path", val_path), ("test", "data.test_path", test_path)):
        if source:
            parts[part] = read_pair(source, key, keys)
            if parts[part][0].shape[1:] != parts["train"][0].shape[1:]:
                raise ConfigError(
                    f"{key}={source} has samples of shape {parts[part][0].shape[1:]}, the training "
                    f"arrays {parts['train'][0].shape[1:]}: give both the same shape"
                )
    widths = {p: y_.shape[1] for p, (_, y_) in parts.items() if y_.ndim == 2}
    if len(set(widths.values())) > 1:
        raise ConfigError(
            f"the one-hot labels differ in width between files: {widths}; give every file the same classes"
        )
    first = parts["train"][0]
    layout, data_format = pick_layout(first, layout, data_format)
    import pandas as pd

    names = {"train": "data.path" if path else "data.y", "val": "data.val_path", "test": "data.test_path"}
    labels = np.concatenate([as_labels(y_, names[p]) for p, (_, y_) in parts.items()])
    codes, task, classes = encode_target(pd.Series(labels), task, "y")
    counts = {p: len(y_) for p, (_, y_) in parts.items()}
    bounds = np.cumsum([0, *counts.values()])
    out = {
        p: (shaped(x_, layout, data_format), torch.from_numpy(codes[bounds[i] : bounds[i + 1]]))
        for i, (p, (x_, _)) in enumerate(parts.items())
    }
    sources = {"val": ("data.val_path", val_path), "test": ("data.test_path", test_path)}
    files = [
        (f"{sources[p][0]}={sources[p][1]}", torch.arange(bounds[i], bounds[i + 1]))
        for i, p in enumerate(parts)
        if p != "train"
    ]
    unseen_classes(torch.from_numpy(codes), counts["train"], files, classes, task)
    if "test" not in out:
        x_all, y_all = out["train"]
        split = random_split if task == "regression" else stratified_split
        train_idx, test_idx = split(y_all if task != "regression" else len(y_all), test_split, seed, "data.test_split")
        (x_train, x_test) = split_rows(x_all, train_idx, test_idx)
        out["train"], out["test"] = (x_train, y_all[train_idx]), (x_test, y_all[test_idx])
        del x_all, x_train, x_test  # the views in out hold the memory
    if "val" in out:
        log.info(f"data.val_path={val_path}: {counts['val']} validation samples (data.val_split does not apply)")
    sample = tuple(out["train"][0].shape[1:])
    log.info(
        f"data arrays: x {first.shape} {first.dtype} -> {layout} of shape (N, {', '.join(map(str, sample))}), "
        f"target {task}"
        + (f" (classes {', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''})" if classes else "")
    )
    if layout == "images":
        transform = ImageScale(data_format)
    else:
        transform = ColumnScale([str(j) for j in range(sample[-1])], layout)
    return Loaded(**out, classes=classes, task=task, transform=transform)


def read_pair(source, key: str, keys: tuple):
    """(x, y) as NumPy arrays from an .npz (keys: the names of x and y in it) or [x.npy, y.npy],
    checked: plain numbers (strings for y), the same length, finite values."""
    if isinstance(source, str) and source.endswith(".npz"):
        x, y = load(source, key, keys)
        where = f"{key}={source}"
    elif isinstance(source, (list, tuple)) and len(source) == 2 and all(isinstance(s, str) for s in source):
        x, y = load(source[0], key, None), load(source[1], key, None)
        where = f"{key}=[{source[0]}, {source[1]}]"
    else:
        fix = "data.x=x.npy data.y=y.npy" if key == "data.path" else f"{key}=[x.npy,y.npy]"
        raise ConfigError(f"{key}={source}: give an .npz holding x and y, or two .npy files ({fix})")
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise ConfigError(
            f"{where}: x holds {len(x) if x.ndim else 0} samples but y {len(y) if y.ndim else 0} labels; "
            f"give one label per sample"
        )
    if len(x) == 0:
        raise ConfigError(f"{where}: the arrays are empty")
    if x.dtype.kind not in "biuf":
        raise ConfigError(f"{where}: x holds {x.dtype} values; inputs must be numbers")
    if y.dtype.kind not in "biufUS" or y.ndim > 2:
        raise ConfigError(
            f"{where}: y is a {y.ndim}-D {y.dtype} array; give class ids, class names (strings), "
            f"one-hot rows (N, classes) or numbers (regression), one per sample"
        )
    for name, values in (("x", x), ("y", y)):
        if values.dtype.kind == "f":
            rows = values.reshape(len(values), -1)
            step = max(1, 2**23 // max(1, rows.shape[1]))  # a block of rows at a time: no mask the size of x
            bad = np.concatenate([~np.isfinite(rows[i : i + step]).all(1) for i in range(0, len(rows), step)])
            if bad.any():
                raise ConfigError(
                    f"{where}: {name} has NaN or infinite values in {int(bad.sum())} sample(s), the first "
                    f"at index {int(bad.argmax())}; clean the data first"
                )
    return x, y


def load(file: str, key: str, keys):
    """One .npy array (keys None), or the arrays keys names from an .npz; never unpickled."""
    found = Path(file).expanduser()
    if not found.is_file():
        raise ConfigError(f"{key}: {file}: no such file (relative paths start from the folder you run nnrun in)")
    try:
        check_sizes(found, key, keys)  # before np.load allocates what a header claims
        loaded = np.load(found, allow_pickle=False)  # an array file from someone else is data, not code
        if keys is None:
            if not isinstance(loaded, np.ndarray):
                raise ConfigError(f"{key}: {file} is an .npz archive; give .npy files here, or the .npz as data.path")
            return loaded
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ConfigError(f"{key}={file} is a single array, not an .npz holding x and y")
        with loaded:
            missing = [k for k in keys if k not in loaded.files]
            if missing:
                raise ConfigError(
                    f"{key}={file} holds no array named {missing[0]!r}; it holds {', '.join(loaded.files) or 'none'} "
                    f"(set data.x_key / data.y_key to pick them)"
                )
            arrays = tuple(loaded[k] for k in keys)
            if not all(isinstance(a, np.ndarray) for a in arrays):  # a member that is not .npy: NumPy gives bytes
                raise ConfigError(f"{key}={file}: the member {keys[0]!r} or {keys[1]!r} is not a NumPy array (.npy)")
            return arrays
    except ConfigError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "pickled" in str(exc):
            raise ConfigError(
                f"{key}: {file} holds Python objects (a pickled object array); nnrun never unpickles a data "
                f"file: save numbers, or strings as a NumPy string array (np.asarray(labels, dtype=str))"
            ) from None
        raise ConfigError(f"{key}: {file} is not a readable NumPy file ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"{key}: {file} is not a readable NumPy file ({exc})") from None


def check_sizes(file: Path, key: str, keys) -> None:
    """Each array's header (shape and dtype) against the bytes that hold it and this machine's
    memory: a crafted header (or a zip bomb's member) must not make np.load allocate terabytes."""
    from numpy.lib import format as npformat

    def check(stream, stored: int, name: str) -> None:
        version = npformat.read_magic(stream)
        header = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
        shape, _, dtype = header(stream, max_header_size=10_000)
        if dtype.hasobject:
            return  # refused by np.load as pickled objects, with its own message
        need = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if need > stored - stream.tell():
            raise ConfigError(
                f"{key}: {file}{name}: its header says {need:,} bytes of data, the file holds "
                f"{max(stored - stream.tell(), 0):,}: it is truncated or damaged"
            )
        if need > physical_memory():
            raise ConfigError(
                f"{key}: {file}{name} holds {need / 1e9:,.1f} GB of values, more than this machine's memory"
            )

    def member(archive, info) -> None:
        """One .npz member: its unpacked size first (nothing is read yet), then its header."""
        if info.file_size > physical_memory():
            raise ConfigError(
                f"{key}: {file} ({info.filename}) unpacks to {info.file_size / 1e9:,.1f} GB, more than this "
                f"machine's memory"
            )
        with archive.open(info) as stream:
            if stream.read(6) != npformat.MAGIC_PREFIX:  # NumPy would read it whole, as bytes
                raise ConfigError(f"{key}={file}: the member {info.filename} is not a NumPy array (.npy)")
            stream.seek(0)
            try:
                check(stream, info.file_size, f" ({info.filename})")
            except ValueError as exc:
                if isinstance(exc, ConfigError):
                    raise
                raise ConfigError(f"{key}: {file} ({info.filename}) is not a readable NumPy array ({exc})") from None

    if zipfile.is_zipfile(file):
        with zipfile.ZipFile(file) as archive:
            for info in archive.infolist():  # the members np.load will read: the keys asked for
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                if keys is None or name in keys:
                    member(archive, info)
        return
    try:
        with open(file, "rb") as stream:
            check(stream, file.stat().st_size, "")
    except ConfigError:
        raise
    except ValueError:
        return  # not an .npy header: np.load says so in its own words


def pick_layout(x: np.ndarray, layout: str, data_format: str):
    """(layout, data_format) of the samples of x; auto decides by the number of axes, and for
    3-D arrays by the dtype: integers (uint8 pixels) are images, floats sequences."""
    dims = x.ndim
    if layout == "auto" and dims == 3:
        layout = "images" if x.dtype.kind in "biu" else "sequence"
        other = "sequence" if layout == "images" else "images"
        log.info(
            f"data.layout=auto: x of shape {x.shape} holds {x.dtype} values, read as {layout} "
            f"(integers: images, floats: sequences; data.layout={other} to override)"
        )
    elif layout == "auto" and dims in (1, 2, 4):
        layout = "table" if dims <= 2 else "images"
    elif layout == "auto":
        raise ConfigError(
            f"x has shape {x.shape}: give (N, features), (N, steps, features), (N, H, W), (N, H, W, C) or (N, C, H, W)"
        )
    shapes = {
        "table": "(N, features)",
        "sequence": "(N, steps, features)",
        "images": "(N, H, W), (N, H, W, C) or (N, C, H, W)",
    }
    if dims not in {"table": (1, 2), "images": (3, 4), "sequence": (3,)}[layout]:
        raise ConfigError(f"data.layout={layout} takes x of shape {shapes[layout]}; this x has shape {x.shape}")
    if layout != "images" or dims == 3:
        return layout, "channels_first"
    if data_format == "auto":
        first, last = x.shape[1] <= MAX_CHANNELS, x.shape[3] <= MAX_CHANNELS
        if first == last:
            raise ConfigError(
                f"x of shape {x.shape}: cannot tell the channel axis; set data.data_format=channels_last "
                f"(N, H, W, C) or channels_first (N, C, H, W)"
            )
        data_format = "channels_last" if last else "channels_first"
    return layout, data_format


def shaped(x: np.ndarray, layout: str, data_format: str) -> torch.Tensor:
    """x as the model takes it: (N, F) floats, (N, C, H, W) images (uint8 kept: scaled later), (N, T, F)."""
    if layout == "images":
        images = torch.from_numpy(x if x.dtype == np.uint8 else x.astype(np.float32, copy=False))  # no copy of float32
        if x.ndim == 3:
            return images.unsqueeze(1)  # grey: (N, 1, H, W)
        if data_format == "channels_last":
            return images.permute(0, 3, 1, 2).contiguous()
        return images
    return torch.from_numpy(x.reshape(len(x), -1) if layout == "table" else x).float()


def as_labels(y: np.ndarray, key: str) -> np.ndarray:
    """One label per sample: one-hot rows to their class index, (N, 1) flattened, whole floats
    and booleans to integers (classes '0', '1' rather than '0.0', '1.0')."""
    if y.dtype.kind == "S":
        try:
            y = np.char.decode(y, "utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{key}: y holds bytes that are not UTF-8 text; save the labels as str") from None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2:
        if y.dtype.kind not in "biuf" or not np.all((y == 0) | (y == 1)) or not np.all(y.sum(1) == 1):
            raise ConfigError(
                f"{key}: y of shape {y.shape} is not one-hot rows (a single 1 per row); give one label per sample"
            )
        log.info(f"{key}: y holds one-hot rows of {y.shape[1]} classes; the class is each row's 1 (argmax)")
        return y.argmax(1)
    if y.dtype.kind == "b":
        return y.astype(np.int64)
    if y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0) and np.abs(y).max() < 2**53:
        return y.astype(np.int64)
    return y


class ImageScale(Standardize):
    """Standardize (one mean and std over every pixel), recording the layout of the raw arrays so
    that predictions transpose channels-last inputs as training did."""

    def __init__(self, data_format: str = "channels_first"):
        self.data_format = data_format
        if data_format == "channels_last":
            log.info("data.data_format: x is channels-last (N, H, W, C); transposed to (N, C, H, W) for PyTorch")

    def describe(self) -> Standardization:
        return replace(super().describe(), data_format=self.data_format)


class ColumnScale(FeatureScale):
    """FeatureScale over each feature (a table's column, a sequence's last axis), recording the
    layout so that predictions read new arrays as training did."""

    def __init__(self, features, layout: str):
        super().__init__(features)
        self.layout = layout

    def describe(self) -> FeatureStandardization:
        return replace(super().describe(), layout=self.layout)
