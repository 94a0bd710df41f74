"""Metric names (Keras's) and what "better" means for each."""

import math

from nnrun.errors import ConfigError

# metrics.csv columns, in this order; later metrics are appended after these.
CSV_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "epoch_time"]
HIGHER_IS_BETTER = ("accuracy", "acc", "auc", "f1", "precision", "recall", "r2")


def logged_names(has_val: bool) -> list:
    """Every name in an epoch's logs, in CSV order (without 'epoch')."""
    names = ["loss", "accuracy"] + (["val_loss", "val_accuracy"] if has_val else []) + ["lr", "epoch_time"]
    return names


def resolve_mode(monitor: str, mode: str, key: str) -> str:
    """'min' or 'max'; auto is max for accuracy-like names, as in Keras."""
    if mode == "auto":
        return "max" if any(word in monitor for word in HIGHER_IS_BETTER) else "min"
    if mode not in ("min", "max"):
        raise ConfigError(f"{key}={mode} is not one of auto, min, max")
    return mode


def improved(current: float, best, mode: str, min_delta: float = 0.0) -> bool:
    """Whether current beats best by more than min_delta; NaN never does."""
    if current is None or math.isnan(current):
        return False
    if best is None:
        return True
    return current < best - min_delta if mode == "min" else current > best + min_delta
