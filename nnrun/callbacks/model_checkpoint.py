"""Write checkpoints under the run folder's checkpoints/ (Keras ModelCheckpoint)."""

from nnrun.callbacks import CALLBACKS, Callback
from nnrun.errors import ConfigError
from nnrun.train.metrics import improved, resolve_mode


@CALLBACKS.register("model_checkpoint")
class ModelCheckpoint(Callback):
    def __init__(self, monitor="val_loss", mode="auto", save_best_only=True, save_last=True,
                 filename="best"):
        self.monitor = monitor
        self.mode = resolve_mode(monitor, mode, "callbacks.model_checkpoint.mode")
        self.save_best_only, self.save_last, self.filename = save_best_only, save_last, filename

    def check_names(self, names) -> None:
        """Fill the filename pattern with every logged name, so a bad one fails at start."""
        self.path_for(1, {name: 0.0 for name in names})

    def on_train_begin(self, logs):
        self.best = None

    def on_epoch_end(self, epoch, logs):
        is_best = improved(logs[self.monitor], self.best, self.mode)
        if is_best:
            self.best = logs[self.monitor]
        if is_best or not self.save_best_only:
            self.save(self.run_dir / "checkpoints" / self.path_for(epoch, logs), epoch, logs)
        if self.save_last:
            self.save(self.run_dir / "checkpoints" / "last.pt", epoch, logs)

    def path_for(self, epoch, logs) -> str:
        try:
            name = self.filename.format(epoch=epoch, **logs)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"callbacks.model_checkpoint.filename={self.filename!r} cannot be filled "
                              f"({exc}); use {{epoch}} and logged names: {', '.join(logs)}") from exc
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise ConfigError(f"callbacks.model_checkpoint.filename={self.filename!r}: use a plain file name")
        return name if name.endswith(".pt") else name + ".pt"
