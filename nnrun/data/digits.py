"""scikit-learn's 8x8 handwritten digits: real data that ships with scikit-learn, no download."""

import importlib.util
from pathlib import Path

import numpy as np
import torch

from nnrun.data.base import DATASETS, Loaded, stratified_split


@DATASETS.register("digits")
def digits(root: str, seed: int, test_split: float = 0.2):
    """1,797 grey 8x8 images (values 0..16) of the digits 0-9; root is unused."""
    table = np.loadtxt(_digits_file(), delimiter=",", dtype=np.float32)  # 64 pixels, then the label
    x = torch.from_numpy(table[:, :-1]).reshape(-1, 1, 8, 8)  # (N, 1, 8, 8)
    y = torch.from_numpy(table[:, -1]).long()
    train_idx, test_idx = stratified_split(y, test_split, seed, key="data.test_split")
    return Loaded(
        train=(x[train_idx], y[train_idx]), test=(x[test_idx], y[test_idx]), classes=[str(c) for c in range(10)]
    )


def _digits_file() -> Path:
    """The file sklearn.datasets.load_digits reads, found without importing scikit-learn (~2 s)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("data=digits needs scikit-learn: pip install scikit-learn")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
