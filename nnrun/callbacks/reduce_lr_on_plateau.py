"""Cut the learning rate when the monitored metric stalls: Keras 3's ReduceLROnPlateau, rule for
rule (keras/src/callbacks/reduce_lr_on_plateau.py), on every parameter group's rate."""

import logging

from nnrun.callbacks.base import CALLBACKS, Callback
from nnrun.errors import ConfigError
from nnrun.monitor import keras_improvement, resolve_mode

log = logging.getLogger(__name__)


@CALLBACKS.register("reduce_lr_on_plateau")
class ReduceLROnPlateau(Callback):
    def __init__(self, monitor="val_loss", mode="auto", factor=0.1, patience=3, min_delta=1e-4, cooldown=0, min_lr=0.0):
        if not 0 <= factor < 1:
            raise ConfigError(
                f"callbacks.reduce_lr_on_plateau.factor={factor}: use 0 <= factor < 1 (the rate is multiplied by "
                f"it; Keras refuses a factor >= 1)"
            )
        self.monitor = monitor
        self.mode = resolve_mode(monitor, mode, "callbacks.reduce_lr_on_plateau.mode")
        self.factor, self.patience, self.min_delta = factor, patience, abs(min_delta)
        self.cooldown, self.min_lr = cooldown, min_lr

    def on_train_begin(self, logs):
        self.best, self.wait, self.cooling = None, 0, 0

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait, "cooling": self.cooling}

    def on_continue(self) -> None:
        super().on_continue()
        self.wait = 0  # patience starts again

    def on_epoch_end(self, epoch, logs):
        current = logs.get(self.monitor)
        if current is None:
            return
        if self.cooling > 0:  # Keras: a cooldown epoch counts down and clears the wait
            self.cooling -= 1
            self.wait = 0
        if keras_improvement(current, self.best, self.mode, self.min_delta):
            self.best, self.wait = current, 0
        elif self.cooling == 0:
            self.wait += 1
            if self.wait >= self.patience and self.reduce():
                log.info(
                    "reduce_lr_on_plateau: %s has not improved for %d epochs; lr is now %.2e",
                    self.monitor,
                    self.wait,
                    self.optimizer.param_groups[0]["lr"],
                )
                self.cooling, self.wait = self.cooldown, 0

    def reduce(self) -> bool:
        """Multiply each group's rate by factor, not below min_lr; whether any changed."""
        reduced = False
        for group in self.optimizer.param_groups:
            if group["lr"] > self.min_lr:
                group["lr"] = max(group["lr"] * self.factor, self.min_lr)
                reduced = True
        return reduced
