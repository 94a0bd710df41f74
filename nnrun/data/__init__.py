"""Datasets by name (DATASETS): the registry, Split, Data, Loaded and build_data live in base.py;
importing the package registers every built-in loader."""

from nnrun.data.base import *  # noqa: F403  (the package's names, as before)
from nnrun.data import arrays, cifar, digits, images, sequence, tabular, text, vision  # noqa: F401  (registers the datasets)
