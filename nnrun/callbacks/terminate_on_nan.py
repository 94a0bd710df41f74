"""Stop at the first epoch whose validation loss is NaN or infinite (Keras TerminateOnNaN). A NaN
training loss never gets here: the loop stops at that step itself (status nan_loss, exit 1)."""

import logging
import math

from nnrun.callbacks.base import CALLBACKS, Callback

log = logging.getLogger(__name__)


@CALLBACKS.register("terminate_on_nan")
class TerminateOnNaN(Callback):
    """Checked once per epoch: a per-batch check would sync the GPU on every step."""

    def on_train_begin(self, logs):
        self.stop_training = False

    def on_epoch_end(self, epoch, logs):
        bad = [name for name in ("val_loss",) if name in logs and not math.isfinite(logs[name])]
        if bad:
            self.stop_training = True
            log.warning(
                "terminate_on_nan: %s is %s at epoch %d; stopping (a lower optimizer.lr or "
                "trainer.grad_clip usually helps)",
                bad[0],
                logs[bad[0]],
                epoch,
            )
