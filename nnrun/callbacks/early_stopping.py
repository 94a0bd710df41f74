"""Stop when the monitored metric stops improving (Keras EarlyStopping)."""

import logging

from nnrun.callbacks import CALLBACKS, Callback
from nnrun.train.metrics import improved, resolve_mode

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
        self.baseline = baseline  # a score to beat; stop if patience epochs do not
        self.start_from_epoch = start_from_epoch  # epochs 1..start_from_epoch are warm-up, not judged

    def on_train_begin(self, logs):
        self.best, self.best_epoch, self.wait = self.baseline, None, 0
        self.stop_training = False

    def state_dict(self) -> dict:  # the weights of best_epoch are in the trainer's KeptWeights
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "stop_training": self.stop_training,
        }

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        state.pop("best_weights", None)  # a last.pt from before KeptWeights: the trainer took them
        super().load_state_dict(state)

    def on_epoch_end(self, epoch, logs):
        if epoch <= self.start_from_epoch:
            return
        current = logs[self.monitor]
        if improved(current, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.wait = current, epoch, 0
            if self.restore_best_weights and self.kept is not None:
                self.kept.keep("early_stopping", epoch)
            return
        self.wait += 1
        if self.wait >= self.patience:  # Keras: patience=0 stops at the first miss
            self.stop_training = True
            log.info(
                "early stopping: %s has not improved for %d epochs (best %.4g at epoch %d)",
                self.monitor,
                self.wait,
                self.best if self.best is not None else float("nan"),
                self.best_epoch or 0,
            )

    def on_train_end(self, logs):
        # Restores even when the run used every epoch: the run ends on its best weights.
        if self.restore_best_weights and self.kept is not None and self.kept.restore("early_stopping"):
            if self.wait:  # the last epoch was not the best one
                log.info("early stopping: restored the weights of epoch %d", self.best_epoch)
