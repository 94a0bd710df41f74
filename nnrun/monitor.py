"""What "better" means for a monitored metric (trainer.monitor, a callback's monitor): Keras's
mode rules, without torch, for the trainer, the callbacks, the schedulers and the sweepers alike."""

import math

from nnrun.errors import ConfigError

HIGHER_IS_BETTER = ("accuracy", "acc", "auc", "f1", "precision", "recall", "r2")


def resolve_mode(monitor: str, mode: str, key: str) -> str:
    """'min' or 'max'; auto is max for accuracy-like names, as in Keras."""
    if mode == "auto":
        return "max" if any(word in monitor for word in HIGHER_IS_BETTER) else "min"
    if mode not in ("min", "max"):
        raise ConfigError(f"{key}={mode} is not one of auto, min, max")
    return mode


def keras_improvement(current: float, best, mode: str, min_delta: float = 0.0) -> bool:
    """Keras 3's MonitorCallback._is_improvement, for the callbacks named after Keras's: anything
    beats no best yet (NaN included); otherwise current, moved by min_delta against the direction,
    must still beat best (a NaN on either side never does)."""
    if best is None:
        return True
    return current + abs(min_delta) < best if mode == "min" else current - abs(min_delta) > best


def improved(current: float, best, mode: str, min_delta: float = 0.0) -> bool:
    """Whether current beats best by more than min_delta; NaN never does."""
    if current is None or math.isnan(current):
        return False
    if best is None:
        return True
    return current < best - min_delta if mode == "min" else current > best + min_delta
