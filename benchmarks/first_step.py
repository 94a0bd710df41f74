"""A callback for benchmarks/startup.py: at the end of the first training step, write the wall
clock time to the file in $NNRUN_FIRST_STEP and end the process (the rest is not start-up)."""

import os
import time

from nnrun.callbacks import CALLBACKS, Callback


@CALLBACKS.register("first_step")
class FirstStep(Callback):
    def on_train_batch_end(self, batch, logs):
        with open(os.environ["NNRUN_FIRST_STEP"], "w") as f:
            f.write(repr(time.time()))
        os._exit(0)
