"""Stop when the monitored metric stops improving: Keras 3's EarlyStopping, rule for rule
(keras/src/callbacks/early_stopping.py); epochs here are 1-based, as in metrics.csv."""

import logging

from nnrun.callbacks.base import CALLBACKS, Callback
from nnrun.monitor import keras_improvement, resolve_mode

log = logging.getLogger(__name__)


@CALLBACKS.register("early_stopping")
class EarlyStopping(Callback):
    def __init__(
        self,
        monitor="val_loss",
        mode="auto",
        patience=5,
        min_delta=0.0,
        restore_best_weights=True,
        baseline=None,
        start_from_epoch=0,
    ):
        self.monitor = monitor
        self.mode = resolve_mode(monitor, mode, "callbacks.early_stopping.mode")
        self.patience, self.min_delta = patience, abs(min_delta)
        self.restore_best_weights = restore_best_weights
        self.baseline = baseline  # a score to beat: until then, improving epochs still count as waiting
        self.start_from_epoch = start_from_epoch  # epochs 1..start_from_epoch are warm-up, not judged

    def on_train_begin(self, logs):
        self.best, self.best_epoch, self.wait, self.stopped_epoch = None, None, 0, 0
        self.last_epoch = None  # the newest epoch seen, to say when the weights go back
        self.stop_training = False

    def state_dict(self) -> dict:  # the weights of best_epoch are in the trainer's KeptWeights
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "stop_training": self.stop_training,
        }

    def on_continue(self) -> None:
        super().on_continue()
        self.wait = 0  # patience starts again

    def on_epoch_end(self, epoch, logs):
        self.last_epoch = epoch
        current = logs.get(self.monitor)
        if current is None or epoch <= self.start_from_epoch:
            return
        self.wait += 1
        if keras_improvement(current, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights and self.kept is not None:
                self.kept.keep("early_stopping", epoch)
            if self.baseline is None or keras_improvement(current, self.baseline, self.mode, self.min_delta):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 1:  # Keras: patience=0 stops at the first miss
            self.stopped_epoch, self.stop_training = epoch, True
            beaten = "" if self.baseline is None else f", baseline {self.baseline:.4g}"
            log.info(
                "early stopping: %s has not improved for %d epochs (best %.4g at epoch %d%s)",
                self.monitor,
                self.wait,
                float(self.best),
                self.best_epoch,
                beaten,
            )

    def on_train_end(self, logs):
        # Restores even when the run used every epoch: the run ends on its best weights.
        if self.restore_best_weights and self.kept is not None:
            epoch = self.kept.restore("early_stopping")
            if epoch is not None and epoch != self.last_epoch:  # the last epoch was not the best one
                log.info("early stopping: restored the weights of epoch %d", epoch)
