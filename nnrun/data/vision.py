"""MNIST and Fashion-MNIST from their four IDX files, .gz or not, in data.root or torchvision's
<root>/<Name>/raw/ layout. Checksums are not enforced: Debian's recompressed .gz files differ
from torchvision's, and the IDX header and sizes are checked instead."""

import contextlib
import gzip
import io
import logging
import os
from pathlib import Path

import numpy as np
import torch

from nnrun.data.base import DATASETS, Loaded
from nnrun.errors import ConfigError

log = logging.getLogger(__name__)

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


@DATASETS.register("mnist")
def mnist(root: str, seed: int, download: bool = True):
    """70,000 grey 28x28 handwritten digits: 60,000 train, 10,000 test."""
    return load_idx_dataset(root, "MNIST", download, [str(i) for i in range(10)])


@DATASETS.register("fashion_mnist")
def fashion_mnist(root: str, seed: int, download: bool = True):
    """70,000 grey 28x28 clothing images in 10 classes: 60,000 train, 10,000 test."""
    return load_idx_dataset(root, "FashionMNIST", download, FASHION_CLASSES)


def load_idx_dataset(root: str, name: str, download: bool, classes):
    root = Path(root).expanduser()
    paths = find_files(root, name)
    if None in paths.values() and download:
        reason = try_download(root, name)
        paths = find_files(root, name)
    else:
        reason = "download off" if download is False else ""
    missing = [base for base, path in paths.items() if path is None]
    if missing:
        which = "" if len(missing) == 4 else f" ({', '.join(missing)} missing)"
        raise ConfigError(
            f"data.root={root}: {name} files not found{which}{'; ' + reason if reason else ''}. "
            f"Put the four IDX files {', '.join(paths)} (.gz or not) in {root} or {root / name / 'raw'}, "
            f"or run once online with data.download=true"
            + (
                "; on Debian: apt-get install dataset-fashion-mnist, then data.root=/usr/share/datasets/fashion-mnist"
                if name == "FashionMNIST"
                else ""
            )
        )
    out = {}
    for split, (images, labels) in FILES.items():
        x = torch.from_numpy(read_idx(paths[images])).unsqueeze(1)  # (N, 1, 28, 28) uint8
        y = torch.from_numpy(read_idx(paths[labels]).astype(np.int64))  # (N,)
        if len(x) != len(y):
            raise ConfigError(f"{paths[images]} has {len(x)} images but {paths[labels]} has {len(y)} labels")
        outside = ((y < 0) | (y >= len(classes))).nonzero().flatten()
        if len(outside):  # caught here, not later as a CUDA device-side assert
            first = int(outside[0])
            raise ConfigError(
                f"{paths[labels]}: label {int(y[first])} at index {first} is outside "
                f"0..{len(classes) - 1} "
                f"({len(outside)} such labels); the file is damaged or not {name}"
            )
        out[split] = (x, y)
    return Loaded(train=out["train"], test=out["test"], classes=classes)


def find_files(root: Path, name: str) -> dict:
    """base file name -> path found (plain or .gz, root first), or None."""
    folders = [root, root / name / "raw"]
    found = {}
    for base in (b for pair in FILES.values() for b in pair):
        candidates = (folder / (base + ext) for folder in folders for ext in ("", ".gz"))
        found[base] = next((p for p in candidates if p.is_file()), None)
    return found


def read_idx(path: Path) -> np.ndarray:
    """Decode one IDX file of unsigned bytes (the only type MNIST uses)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise ConfigError(f"{path} cannot be read ({exc}); replace the file") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ConfigError(f"{path} is not an IDX file of unsigned bytes; replace the file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise ConfigError(
            f"{path} holds {len(raw) - offset} bytes of data, its header says "
            f"{int(np.prod(dims))}: the file is truncated; replace it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims).copy()  # writable for torch


def try_download(root: Path, name: str) -> str:
    """Let torchvision fetch the files into root; returns why not, or '' on success."""
    if not _writable(root):
        return f"{root} is read-only, so no download was tried"
    import torchvision.datasets as tvd

    created = [p for p in (root, root / name, root / name / "raw") if not p.exists()]
    log.info("downloading %s into %s", name, root)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # torchvision prints each mirror tried
            for train in (True, False):
                getattr(tvd, name)(str(root), train=train, download=True)
        return ""
    except Exception as exc:  # offline, mirror down, disk full: all mean "files not there"
        for folder in reversed(created):  # leave no empty folders behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        return "download failed: " + " ".join(dict.fromkeys([lines[0], lines[-1]]))


def _writable(path: Path) -> bool:
    while not path.exists():
        path = path.parent
    return os.access(path, os.W_OK)
