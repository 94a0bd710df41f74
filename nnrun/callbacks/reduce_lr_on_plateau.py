"""Cut the learning rate when the monitored metric stalls (Keras ReduceLROnPlateau)."""

import logging

from nnrun.callbacks import CALLBACKS, Callback
from nnrun.train.metrics import improved, resolve_mode

log = logging.getLogger(__name__)


@CALLBACKS.register("reduce_lr_on_plateau")
class ReduceLROnPlateau(Callback):
    def __init__(self, monitor="val_loss", mode="auto", factor=0.1, patience=3, min_delta=0.0, cooldown=0, min_lr=0.0):
        self.monitor = monitor
        self.mode = resolve_mode(monitor, mode, "callbacks.reduce_lr_on_plateau.mode")
        self.factor, self.patience, self.min_delta = factor, patience, abs(min_delta)
        self.cooldown, self.min_lr = cooldown, min_lr

    def on_train_begin(self, logs):
        self.best, self.wait, self.cooling = None, 0, 0

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait, "cooling": self.cooling}

    def on_epoch_end(self, epoch, logs):
        if improved(logs[self.monitor], self.best, self.mode, self.min_delta):
            self.best, self.wait = logs[self.monitor], 0
            return
        if self.cooling:
            self.cooling -= 1
            return
        self.wait += 1
        if self.wait > self.patience:
            for group in self.optimizer.param_groups:
                group["lr"] = max(group["lr"] * self.factor, self.min_lr)
            log.info(
                "reduce_lr_on_plateau: %s has not improved for %d epochs; lr is now %.2e",
                self.monitor,
                self.wait,
                self.optimizer.param_groups[0]["lr"],
            )
            self.wait, self.cooling = 0, self.cooldown
