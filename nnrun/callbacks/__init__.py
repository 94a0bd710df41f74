"""Callbacks by name (CALLBACKS), with Keras's hooks: the registry and the Callback base class live
in base.py; importing the package registers every built-in callback."""

from nnrun.callbacks.base import *  # noqa: F403  (the package's names, as before)
from nnrun.callbacks import csv_logger, early_stopping, lr_monitor, model_checkpoint  # noqa: F401
from nnrun.callbacks import reduce_lr_on_plateau, tensorboard, terminate_on_nan  # noqa: F401
from nnrun.callbacks import mlflow, wandb  # noqa: F401  (loggers)
