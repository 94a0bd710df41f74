"""TensorBoard event files in the run folder's tensorboard/ (optional: pip install 'nnrun[tensorboard]')."""

from nnrun.callbacks.base import CALLBACKS, Callback
from nnrun.errors import ConfigError
from nnrun.safety import relative_name


@CALLBACKS.register("tensorboard")
class TensorBoard(Callback):
    def __init__(self, log_dir="tensorboard"):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "callbacks.tensorboard needs the tensorboard package: "
                "pip install 'nnrun[tensorboard]' (or remove the callback)"
            ) from None

        self.writer_class, self.log_dir = SummaryWriter, relative_name(log_dir, "callbacks.tensorboard.log_dir")

    def on_train_begin(self, logs):
        self.writer = self.writer_class(str(self.run_dir / self.log_dir))

    def on_epoch_end(self, epoch, logs):
        for name, value in logs.items():  # loss and val_loss on one chart, as Keras's callback does
            if name.startswith("val_"):
                tag = f"{name.removeprefix('val_')}/validation"
            else:
                tag = f"{name}/train" if f"val_{name}" in logs else name
            self.writer.add_scalar(tag, value, epoch)
        self.writer.flush()

    def on_train_end(self, logs):
        self.writer.close()
