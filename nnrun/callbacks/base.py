"""Callbacks by name, with Keras's hooks. A callback sees the model and its own options, never
the config or the loop; it stops a run by setting stop_training."""

import os
from contextlib import contextmanager
from pathlib import Path

from nnrun.errors import ConfigError
from nnrun.registry import Registry
from nnrun.runfolder import open_file

CALLBACKS = Registry("callbacks", keyed_by_name=True)


class Callback:
    name = ""  # its key under callbacks:, for messages
    monitor = None  # a logged metric name, checked at start when set
    stop_training = False
    save_last = False  # True: the trainer writes checkpoints/last.pt after every epoch

    def setup(self, model, run_dir: Path, save, optimizer=None, kept=None):
        """model: the nn.Module; save(path, epoch, logs) writes a checkpoint of the run; optimizer
        for the callbacks that change the rate (Keras: self.model.optimizer); kept: the trainer's
        KeptWeights, for a callback that goes back to an earlier epoch's weights."""
        self.model, self.run_dir, self.save, self.optimizer = model, Path(run_dir), save, optimizer
        self.kept = kept

    def on_train_begin(self, logs): ...
    def on_epoch_begin(self, epoch, logs): ...
    def on_train_batch_end(self, batch, logs): ...  # logs["loss"] is a tensor: no sync
    def on_epoch_end(self, epoch, logs): ...
    def on_train_end(self, logs): ...

    def state_dict(self) -> dict:
        """What a resumed run needs to carry on where this callback was: plain values and tensors."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Called instead of on_train_begin when a run resumes."""
        self.on_train_begin({})
        self.__dict__.update(state)

    def on_run_end(self, summary, error) -> None:
        """After the run, once its folder holds everything (summary.json, plots, weights): summary is
        what summary.json says, or None when error (the exception that ended it) is set. Not a Keras
        hook: it is for loggers that send the finished run elsewhere (MLflow, W&B). Called also for a
        run that failed before training began (setup() not called then)."""

    def on_continue(self) -> None:
        """After load_state_dict, when a completed run is trained for more epochs: a callback
        that stopped it goes on (one that counts epochs without improvement starts again)."""
        self.stop_training = False


def main_process() -> bool:
    """Whether this process speaks for the run to loggers: the only one, or rank 0 of those torchrun
    started (its RANK and WORLD_SIZE, read as train.distributed reads them: callbacks sit below train)."""
    return int(os.environ.get("WORLD_SIZE", "1")) <= 1 or int(os.environ.get("RANK", "0")) == 0


def keep_lines(path: Path, count: int) -> None:
    """Cut a text file to its first count lines (for a resumed run's logs)."""
    if not path.exists() and not path.is_symlink():
        return
    with open_file(path, "r+") as f:
        lines = f.readlines()[:count]
        f.seek(0)
        f.writelines(lines)
        f.truncate()


@contextmanager
def run_end(callbacks):
    """`with run_end(callbacks) as ended: ... return ended(summary)`: each callback's on_run_end
    with the summary, or with the exception that ended the run (re-raised after)."""
    result = {}

    def ended(summary):
        result["summary"] = summary
        return summary

    try:
        yield ended
    except BaseException as exc:
        for callback in callbacks:
            callback.on_run_end(None, exc)
        raise
    for callback in callbacks:
        callback.on_run_end(result.get("summary"), None)


def build_callbacks(conf: dict, extra=()) -> list:
    """conf maps name -> options ({} or null for the defaults); csv_logger is always on, and
    extra callbacks (already built) run last."""
    callbacks = []
    for name, options in conf.items():
        if options is not None and not isinstance(options, dict):
            raise ConfigError(f"callbacks.{name} must be a mapping of options, got {options!r}")
        callback = CALLBACKS.build(name, **(options or {}))
        callback.name = name
        callbacks.append(callback)
    if "csv_logger" not in conf:
        callbacks.append(CALLBACKS.build("csv_logger"))  # metrics.csv is always written
        callbacks[-1].name = "csv_logger"
    return callbacks + list(extra)


# ---- what the experiment trackers (mlflow, wandb) read from the run folder ----

RUN_FILES = ("curves.png", "confusion_matrix.png", "summary.json", "preprocessing.json", "model.safetensors")


def run_config(run_dir: Path) -> dict:
    """The config nnrun saved in the run folder before training, resolved where it can be."""
    from omegaconf import OmegaConf

    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.is_file():  # a run started without Hydra's files
        return {}
    conf = OmegaConf.load(path)
    try:
        return OmegaConf.to_container(conf, resolve=True)
    except Exception:  # noqa: BLE001  (an interpolation only Hydra's runtime knows: kept as written)
        return OmegaConf.to_container(conf, resolve=False)


def flat(tree: dict, prefix: str = "") -> dict:
    """{"model": {"name": "mlp"}} -> {"model.name": "mlp"}, as the CLI overrides name them."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def git_commit():
    """The commit of the working folder's git checkout, or None."""
    import subprocess

    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


# registers the built-in callbacks
