"""Write checkpoints under the run folder's checkpoints/ (Keras ModelCheckpoint)."""

from pathlib import Path

from nnrun.callbacks.base import CALLBACKS, Callback
from nnrun.errors import ConfigError
from nnrun.monitor import improved, resolve_mode
from nnrun.stored import digest_path


@CALLBACKS.register("model_checkpoint")
class ModelCheckpoint(Callback):
    def __init__(
        self,
        monitor="val_loss",
        mode="auto",
        save_best_only=True,
        save_last=True,
        filename="best",
        save_top_k=1,
        every_n_epochs=1,
    ):
        self.monitor = monitor
        self.mode = resolve_mode(monitor, mode, "callbacks.model_checkpoint.mode")
        self.save_best_only, self.save_last, self.filename = save_best_only, save_last, filename
        if save_top_k == 0 or save_top_k < -1:
            raise ConfigError(
                f"callbacks.model_checkpoint.save_top_k={save_top_k}: use a count >= 1, "
                f"or -1 to keep every improving checkpoint"
            )
        if save_top_k != 1 and "{epoch" not in filename:
            raise ConfigError(
                f"callbacks.model_checkpoint.save_top_k={save_top_k} keeps several files, so "
                f"filename={filename!r} needs {{epoch}}, e.g. filename='best-ep{{epoch:02d}}'"
            )
        if every_n_epochs < 1:
            raise ConfigError(f"callbacks.model_checkpoint.every_n_epochs={every_n_epochs}: use 1 or more")
        self.save_top_k, self.every_n_epochs = save_top_k, every_n_epochs

    def check_names(self, names) -> None:
        """Fill the filename pattern with every logged name, so a bad one fails at start."""
        self.path_for(1, {name: 0.0 for name in names})

    def on_train_begin(self, logs):
        self.kept = []  # (score, path) of the best checkpoints on disk, best first

    def state_dict(self) -> dict:
        # names, not paths: a copy of the run folder, resumed, only ever touches its own files
        return {"kept": [[score, path.name] for score, path in self.kept]}

    def load_state_dict(self, state: dict) -> None:
        # a name, never a path: a crafted last.pt names no file outside this run's checkpoints/
        self.kept = [
            (score, self.run_dir / "checkpoints" / Path(str(name)).name)
            for score, name in state["kept"]
            if Path(str(name)).name not in ("", ".", "..")
        ]

    def on_epoch_end(self, epoch, logs):
        # last.pt (save_last) is written by the loop after every callback has run: it holds
        # their state too, so that a resumed run continues exactly
        if epoch % self.every_n_epochs == 0:
            self.save_epoch(epoch, logs)

    def save_epoch(self, epoch, logs):
        path = self.run_dir / "checkpoints" / self.path_for(epoch, logs)
        if not self.save_best_only:
            self.save(path, epoch, logs)
            return
        score = logs[self.monitor]
        full = self.save_top_k != -1 and len(self.kept) >= self.save_top_k
        if not improved(score, self.kept[-1][0] if full else None, self.mode):
            return
        self.save(path, epoch, logs)
        self.kept = [k for k in self.kept if k[1] != path] + [(score, path)]
        self.kept.sort(key=lambda k: k[0], reverse=self.mode == "max")
        if self.save_top_k != -1:
            for _, dropped in self.kept[self.save_top_k :]:
                if dropped != path and all(dropped != p for _, p in self.kept[: self.save_top_k]):
                    dropped.unlink(missing_ok=True)
                    digest_path(dropped).unlink(missing_ok=True)  # no orphaned .sha256
            self.kept = self.kept[: self.save_top_k]

    def path_for(self, epoch, logs) -> str:
        try:
            name = self.filename.format(epoch=epoch, **logs)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"callbacks.model_checkpoint.filename={self.filename!r} cannot be filled "
                f"({exc}); use {{epoch}} and logged names: {', '.join(logs)}"
            ) from exc
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise ConfigError(f"callbacks.model_checkpoint.filename={self.filename!r}: use a plain file name")
        return name if name.endswith(".pt") else name + ".pt"
