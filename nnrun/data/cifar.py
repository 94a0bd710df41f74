"""CIFAR-10 from its python version: cifar-10-python.tar.gz, or the extracted
cifar-10-batches-py/ folder, in data.root. The batches are pickles; they are read with an
unpickler that builds only dicts, lists, strings and numpy arrays, so a crafted file cannot run
code."""

import contextlib
import io
import logging
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from nnrun.data.base import DATASETS, Loaded
from nnrun.data.vision import _writable
from nnrun.errors import ConfigError

log = logging.getLogger(__name__)
ARCHIVE, FOLDER = "cifar-10-python.tar.gz", "cifar-10-batches-py"
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# What a CIFAR batch pickle may name: numpy's array rebuilders (and the string-to-bytes helper a
# protocol-2 pickle written by Python 3 uses), nothing else.
ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


@DATASETS.register("cifar10")
def cifar10(root: str, seed: int, download: bool = True):
    """60,000 colour 32x32 images in 10 classes: 50,000 train, 10,000 test."""
    root = Path(root).expanduser()
    batches = find_batches(root)
    reason = "download off" if download is False else ""
    if batches is None and download:
        reason = try_download(root)
        batches = find_batches(root)
    if batches is None:
        raise ConfigError(
            f"data.root={root}: CIFAR-10 not found{'; ' + reason if reason else ''}. Put "
            f"{ARCHIVE} (the python version) or its extracted {FOLDER}/ folder in {root}, "
            f"or run once online with data.download=true"
        )
    log.info(f"data.root={root}: CIFAR-10 read from {batches.source}")
    out = {}
    for split, names in (("train", TRAIN), ("test", ["test_batch"])):
        parts = [batches(name) for name in names]
        x = torch.from_numpy(np.concatenate([p[0] for p in parts]))  # (N, 3, 32, 32) uint8
        y = torch.from_numpy(np.concatenate([p[1] for p in parts]))  # (N,)
        out[split] = (x, y)
    return Loaded(train=out["train"], test=out["test"], classes=CLASSES)


def find_batches(root: Path):
    """A function name -> (images, labels) reading from the folder or the archive; None if neither."""
    folder = next((f for f in (root / FOLDER, root) if (f / "test_batch").is_file()), None)
    if folder is not None:

        def read(name):
            return read_batch(
                (folder / name).read_bytes() if (folder / name).is_file() else missing(folder / name), folder / name
            )

        read.source = str(folder)
        return read
    archive = root / ARCHIVE
    if not archive.is_file():
        return None
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {
                Path(m.name).name: tar.extractfile(m).read()
                for m in tar.getmembers()
                if m.isfile() and Path(m.name).name in (*TRAIN, "test_batch")
            }
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ConfigError(f"{archive} cannot be read ({exc}); replace the file") from None

    def unpack(name):
        where = f"{archive}:{FOLDER}/{name}"
        return read_batch(members[name] if name in members else missing(where), where)

    unpack.source = str(archive)
    return unpack


def missing(where):
    raise ConfigError(f"{where} is missing; CIFAR-10 needs {', '.join(TRAIN)} and test_batch")


class BatchUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR batch never does")


def read_batch(raw: bytes, where) -> tuple:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) from one batch pickle."""
    try:
        batch = BatchUnpickler(io.BytesIO(raw), encoding="latin1").load()  # as torchvision reads it
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        data, labels = np.asarray(batch["data"], dtype=np.uint8), np.asarray(batch["labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{where} is not a CIFAR-10 batch ({exc}); replace the file") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ConfigError(f"{where} holds data of shape {data.shape} and {len(labels)} labels, not N x 3072 and N")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise ConfigError(f"{where}: labels outside 0..9; the file is damaged or not CIFAR-10")
    return data.reshape(-1, 3, 32, 32), labels


def try_download(root: Path) -> str:
    """Let torchvision fetch the archive into root; returns why not, or '' on success."""
    if not _writable(root):
        return f"{root} is read-only, so no download was tried"
    import torchvision.datasets as tvd

    log.info("downloading CIFAR-10 into %s", root)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            tvd.CIFAR10(str(root), train=True, download=True)
        return ""
    except Exception as exc:  # offline, mirror down, disk full: all mean "files not there"
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        return "download failed: " + lines[-1]
