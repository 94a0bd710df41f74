"""Weights & Biases: the run's config, metrics, test scores and files in a W&B run (optional: pip
install 'nnrun[wandb]'). Offline without an API key: written into the run folder, `wandb sync` later."""

import logging
import os
import shutil
from pathlib import Path

from nnrun.callbacks import CALLBACKS, RUN_FILES, Callback, flat, git_commit, run_config
from nnrun.errors import ConfigError

log = logging.getLogger("nnrun")
MODES = (None, "online", "offline", "disabled")


@CALLBACKS.register("wandb")
class WandB(Callback):
    def __init__(self, project="nnrun", entity=None, run_name=None, mode=None, dir=None, log_checkpoints=False):
        try:
            import wandb
        except ImportError:
            raise ConfigError(
                "callbacks.wandb needs the wandb package: pip install 'nnrun[wandb]' (or remove the callback)"
            ) from None
        if mode not in MODES:
            raise ConfigError(f"callbacks.wandb.mode={mode} is not one of null, online, offline, disabled")
        self.wandb, self.project, self.entity, self.run_name = wandb, project, entity, run_name
        from nnrun.safety import relative_name

        # inside the run folder, as every file nnrun writes: a preset is data and names no other place
        self.dir = relative_name(dir, "callbacks.wandb.dir") if dir is not None else None
        self.mode, self.log_checkpoints = mode, log_checkpoints
        self.run, self.run_id = None, None

    def on_train_begin(self, logs):
        self.run_id = None
        self.start()

    def state_dict(self) -> dict:
        return {"run_id": self.run_id}  # a resumed run continues this W&B run

    def load_state_dict(self, state: dict) -> None:
        self.run_id = state.get("run_id")
        self.start()

    def start(self) -> None:
        from nnrun.train import distributed

        self.run = None
        if distributed.launched() and distributed.rank() != 0:  # DDP: rank 0 logs for all
            return
        folder = self.run_dir / self.dir if self.dir else self.run_dir
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.wandb.setup(settings=self.wandb.Settings(silent=True))  # its login line too
            self.run = self.wandb.init(
                project=self.project,
                entity=self.entity,
                name=self.run_name or self.run_dir.name,
                mode=self.mode or default_mode(),
                dir=str(folder),
                id=self.run_id,
                resume="allow" if self.run_id else None,
                config=flat(run_config(self.run_dir)),
                notes=notes(self.run_dir),
                **sweep_group(),
                # no console capture, no banner: nnrun's console stays as it is
                settings=self.wandb.Settings(silent=True, console="off", init_timeout=30),
            )
            self.run_id = self.run.id
        except Exception as exc:
            self.failed(exc)
        finally:  # a failed init leaves its links too: a run folder with links cannot be resumed
            self.call(self.unlink)

    def unlink(self) -> None:
        """W&B's convenience links (wandb/latest-run, debug logs): nnrun refuses to resume a run
        folder that holds links, so they go; the offline-run-* folders hold everything."""
        folder = (self.run_dir / self.dir if self.dir else self.run_dir) / "wandb"
        if folder.resolve().is_relative_to(self.run_dir.resolve()):
            for parent, folders, files in os.walk(folder):  # links are not followed
                for name in folders + files:
                    if os.path.islink(os.path.join(parent, name)):
                        os.unlink(os.path.join(parent, name))

    def on_epoch_end(self, epoch, logs):
        if self.run is not None:
            self.call(self.run.log, {"epoch": epoch, **logs}, step=epoch)  # metrics.csv's row

    def on_run_end(self, summary, error) -> None:
        if self.run is None:  # never started (failed before training, a DDP helper) or W&B failed
            if self.run_id is not None or getattr(self, "run_dir", None) is not None:
                self.call(self.unlink)
            return
        from nnrun.train.loop import Interrupted

        summary = summary or {}
        if error is None:  # the states MLflow names too: finished, failed, killed (a stop signal)
            state, code = "finished", 0
        elif isinstance(error, Interrupted):
            state, code = "killed", 128 + error.signum
        else:
            state, code = "failed", 1
        status = summary.get("status", "interrupted" if state == "killed" else state)
        self.call(self.run.summary.update, {k: v for k, v in summary.items() if k.startswith("test_")})
        self.call(self.run.summary.update, {"status": status})
        self.call(setattr, self.run, "tags", (state,))
        if summary.get("command"):
            self.call(setattr, self.run, "notes", f"{notes(self.run_dir)}\ncommand: {summary['command']}")
        names = list(RUN_FILES)
        if self.log_checkpoints:
            names += [f"checkpoints/{p.name}" for p in sorted((self.run_dir / "checkpoints").glob("*.pt"))]
        for name in names:
            if self.run is not None and (self.run_dir / name).is_file():
                self.call(self.attach, name)
        if self.run is not None:
            self.call(self.run.finish, exit_code=code)  # W&B's state: finished (0) or failed
        self.run = None
        self.call(self.wandb.teardown)
        self.call(self.unlink)  # its service process ends with the run, not at exit

    def attach(self, name: str) -> None:
        """A run file into the W&B run's files/ (a hard link, else a copy: an offline run stays whole
        when its folder moves); wandb's own save would symlink it, and say so on the console. Only
        into a W&B folder inside the run folder (mode=disabled puts run.dir in the system's tmp)."""
        if not Path(self.run.dir).resolve().is_relative_to(self.run_dir.resolve()):
            return
        target = Path(self.run.dir) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        try:
            os.link(self.run_dir / name, target)
        except OSError:
            shutil.copyfile(self.run_dir / name, target)
        self.run.save(str(target), base_path=self.run.dir, policy="now")

    def call(self, method, *args, **kwargs):
        """A W&B call that fails warns once; training goes on, without W&B from then on."""
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            self.failed(exc)

    def failed(self, exc) -> None:
        if not getattr(self, "warned", False):
            first = (str(exc).strip().splitlines() or [""])[0]
            log.warning(f"callbacks.wandb: W&B failed ({type(exc).__name__}: {first}); training goes on without it")
        self.warned, self.run = True, None


def default_mode() -> str:
    """WANDB_MODE when set; else online with an API key (WANDB_API_KEY or a `wandb login` in
    ~/.netrc), offline without one."""
    import netrc
    from urllib.parse import urlparse

    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return "online" if netrc.netrc(os.environ.get("NETRC")).authenticators(host) else "offline"
    except (OSError, netrc.NetrcParseError):
        return "offline"


def notes(run_dir: Path) -> str:
    """The run folder and the git commit of the working folder, when it is a git checkout."""
    commit = git_commit()
    return f"run folder: {run_dir.resolve()}" + (f"\ngit commit: {commit}" if commit else "")


def sweep_group() -> dict:
    """A sweep's jobs in one W&B group (the sweep folder's name), each job's number as its job_type."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return {}
    hydra_conf = HydraConfig.get()
    return {"group": Path(hydra_conf.sweep.dir).name, "job_type": str(hydra_conf.job.num)}
