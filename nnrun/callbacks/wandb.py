"""Weights & Biases: the run's config, metrics, test scores and files in a W&B run (optional: pip
install 'nnrun[wandb]'). Offline without an API key: written into the run folder, `wandb sync` later.
The calls run on a thread of their own (callbacks.sender): W&B never holds up training."""

import os
import secrets
import shutil
from pathlib import Path

from nnrun.callbacks.base import CALLBACKS, RUN_FILES, Callback, flat, git_commit, main_process, run_config
from nnrun.callbacks.sender import GRACE, Sender, upload_seconds
from nnrun.errors import ConfigError, Interrupted
from nnrun.safety import relative_name

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

        # inside the run folder, as every file nnrun writes: a preset is data and names no other place
        self.dir = relative_name(dir, "callbacks.wandb.dir") if dir is not None else None
        self.mode, self.log_checkpoints = mode, log_checkpoints
        self.run, self.run_id = None, None
        # offline and disabled write on this machine: the end of a run waits for them as long as it takes
        self.sender = Sender("wandb", bounded=(mode or default_mode()) == "online", server="W&B")

    def on_train_begin(self, logs):
        self.begin(None)

    def state_dict(self) -> dict:
        return {"run_id": self.run_id}  # a resumed run continues this W&B run

    def load_state_dict(self, state: dict) -> None:
        self.begin(state["run_id"])

    def begin(self, run_id) -> None:
        """Start the W&B run (run_id: the one a resumed run continues) off the training thread; its id
        is chosen here, so a checkpoint saved before W&B answers still names it."""
        if not main_process():  # DDP: rank 0 logs for all
            return
        self.run_id = run_id or secrets.token_hex(4)
        group = sweep_group()  # Hydra's state, read on the training thread
        self.sender.send(lambda: self.start(resume=run_id is not None, group=group))

    def start(self, resume: bool, group: dict) -> None:
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
                resume="allow" if resume else None,
                config=flat(run_config(self.run_dir)),
                notes=notes(self.run_dir),
                **group,
                # no console capture, no banner: nnrun's console stays as it is
                settings=self.wandb.Settings(silent=True, console="off", init_timeout=30),
            )
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
        if self.sender.started:
            row = {"epoch": epoch, **logs}  # metrics.csv's row
            self.sender.send(lambda: self.log_epoch(epoch, row), metrics=True)

    def log_epoch(self, epoch: int, row: dict) -> None:
        if self.run is not None:
            self.call(self.run.log, row, step=epoch)

    def on_run_end(self, summary, error) -> None:
        late = f"callbacks.wandb: W&B did not answer in {GRACE:.0f} s; the run ends without waiting for it"
        self.sender.close(late, last=lambda: self.end(summary, error))
        if getattr(self, "run_dir", None) is not None:  # setup() was called
            self.call(self.unlink)  # also when W&B failed, or is left behind

    def end(self, summary, error) -> None:
        if self.run is None:  # W&B failed
            return
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
        files = [name for name in names if (self.run_dir / name).is_file()]
        for name in files:
            if self.run is not None:
                self.call(self.attach, name)
        if self.run is not None:
            self.sender.allow(upload_seconds(*(self.run_dir / name for name in files)))  # finish uploads them
            self.call(self.run.finish, exit_code=code)  # W&B's state: finished (0) or failed
        self.run = None
        self.sender.allow()
        self.call(self.wandb.teardown)  # its service process ends with the run, not at exit

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
        first = (str(exc).strip().splitlines() or [""])[0]
        self.sender.warn(f"callbacks.wandb: W&B failed ({type(exc).__name__}: {first}); training goes on without it")
        self.run = None


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
